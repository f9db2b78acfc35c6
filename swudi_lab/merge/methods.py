"""Per-layer merge rules, registered in :data:`swudi_lab.merge.registry.METHODS`.

Every rule receives one layer's task vectors ``taus`` = (N, d_out, d_in) (``tau_i = W_i - W0``,
already in the compute dtype and device) and returns ``(delta, info)``: the merged task vector,
so that ``merged = W0 + delta``, and a dict for the per-layer report.

Baselines (applied to every floating tensor; ``taus`` may then be (N, *shape)):

- ``average``:          ``delta = mean_i tau_i``                       (the mean of the experts)
- ``task_arithmetic``:  ``delta = s sum_i tau_i``                       (s = 0.3)
- ``ties``:             trim each ``tau_i`` to its top ``density`` fraction of magnitudes, elect
  ``sign = sign(sum_i trimmed_i)``, take the mean over the experts that agree with it
  (disjoint mean), ``delta = s * disjoint_mean`` (density 0.2, s = 0.3). The trim is per tensor:
  a streaming merge never holds a whole model.

The WUDI family (applied to 2-D weights; other floating tensors get ``mean_i tau_i``), with
``C = sum_i tau_i^T tau_i / n_i``, ``D = sum_i tau_i tau_i^T tau_i / n_i``, ``C = V diag(lambda) V^T``,
start ``theta0 = sum_i tau_i`` (``init="sum"``) or 0, and ``delta = scale * theta``:

- ``wudi``:        Adam on ``L(theta) = tr(theta C theta^T) - 2 tr(theta D^T) + c`` (lr 1e-5, 300 steps)
  through the exact gradient ``2 (theta C - D)``; ``reference=True`` runs the explicit
  per-expert loss with autograd instead (same iterates, far slower).
- ``closed_form``: ``theta = D C^+`` (filter f = 1).
- ``iwudi``:       exponential filter ``f = 1 - exp(-lambda t)``, t = 300 (gradient flow).
- ``filtered``:    any filter of :mod:`swudi_lab.spectral.filters` with its parameters.
- ``swudi``:       ``f = (1 - exp(-lambda t)) 1[k <= K]``, t = 1300, K = ceil(0.65 d_in).
- ``swudi_a``:     ``f = 1[k <= K]`` with K from a rank rule per layer (participation_sqrt).

Spectral methods share one code path (:func:`spectral_layer`): ``interference_operator``, one
``eigh``, a filter, ``spectral_estimate``. The exponential time is not scale-free; ``kappa``
replaces ``t`` by ``t = kappa d_in / N_live`` per layer (``N_live`` = experts with a nonzero task
vector on the layer, ``trace(C) = N_live``), and both are reported.

Degenerate layers: experts whose task vector is all zero are left out of C and D (never divided
by); a layer where all are zero returns ``delta = 0``. With one expert (N = 1) every WUDI-family
method returns ``theta = tau_1`` (the expert itself at scale 1): ``tau_1`` is the exact minimizer
of its own loss (``D = tau_1 C``), the spectral estimate keeps it in every direction, and the
gradient at the sum init is zero so Adam does not move.
"""

from __future__ import annotations

import math

import torch

from ..spectral import (
    FILTERS,
    eigh,
    interference_operator,
    make_filter,
    pseudoinverse,
    spectral_estimate,
    swudi,
    top_k,
)
from ..spectral import exponential as exponential_filter
from ..spectral.iterative import adam_wudi, wudi_reference
from ..spectral.rank_rules import choose_rank
from .registry import Param, register

__all__ = ["spectral_layer", "proxy_loss", "layer_summary"]

# ----------------------------------------------------------------------------- shared parameters

INIT = Param("init", str, "sum", "start theta0: sum of task vectors, or zero", choices=("sum", "zero"))


def _scale(default: float) -> Param:
    return Param("scale", float, default, "merged = base + scale * theta")


def _check_positive(v):
    if v <= 0:
        raise ValueError(f"must be > 0, got {v!r}")


def _check_nonneg(v):
    if v < 0:
        raise ValueError(f"must be >= 0, got {v!r}")


def _check_unit(v):
    if not 0 < v <= 1:
        raise ValueError(f"must be in (0, 1], got {v!r}")


def _check_rule(v):
    choose_rank([1.0, 0.5], v)  # raises ValueError for an unknown rule


def T_PARAM(default: float | None, help_: str) -> Param:
    return Param("t", float, default, help_, check=_check_nonneg)


KAPPA = Param("kappa", float, None, "scale-free time: t = kappa * d_in / N per layer (replaces --t)",
              check=_check_positive)

# ----------------------------------------------------------------------------- shared helpers


def _norms(taus: torch.Tensor) -> torch.Tensor:
    return taus.pow(2).flatten(1).sum(1)  # n_i = ||tau_i||_F^2


def proxy_loss(theta: torch.Tensor, C: torch.Tensor, D: torch.Tensor, const: float) -> float:
    """WUDI proxy loss ``L(theta) = tr(theta C theta^T) - 2 tr(theta D^T) + const``.

    ``const = sum_i ||tau_i tau_i^T||_F^2 / n_i = L(0)``; theta (d_out, d_in), C (d_in, d_in), D (d_out, d_in).
    """
    return float(((theta @ C) * theta).sum() - 2 * (theta * D).sum()) + const


def _loss_const(taus: torch.Tensor, n: torch.Tensor) -> float:
    """``L(0) = sum_i ||tau_i^T tau_i||_F^2 / n_i`` over live experts, via the smaller Gram matrix."""
    live = n > 0
    t, n = (taus, n) if bool(live.all()) else (taus[live], n[live])  # no copy in the usual case
    G = t @ t.transpose(1, 2) if t.shape[1] <= t.shape[2] else t.transpose(1, 2) @ t
    return float((G.pow(2).sum(dim=(1, 2)) / n).sum())


def layer_summary(lam: torch.Tensor, n_live: int) -> dict:
    """Eigenvalue summary for the report: max, min, mean (= N_live / d_in), participation ratio."""
    lam = lam.double().clamp_min(0)
    s1, s2 = float(lam.sum()), float(lam.pow(2).sum())
    return {
        "n_live": n_live,
        "lam_max": float(lam.max()),
        "lam_min": float(lam.min()),
        "lam_mean": float(lam.mean()),
        "participation": s1 * s1 / s2 if s2 > 0 else 0.0,
    }


def _time(t: float | None, kappa: float | None, d_in: int, n_live: int) -> tuple[float, float]:
    """Per-layer ``(t, kappa)`` with ``kappa = t N_live / d_in``; ``kappa`` wins when given."""
    if kappa is not None:
        t = kappa * d_in / n_live
    return float(t), float(t) * n_live / d_in


def _zero_layer(taus: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return torch.zeros_like(taus[0]), {"n_live": 0, "note": "all task vectors are zero"}


def spectral_layer(taus: torch.Tensor, build_filter, *, init: str = "sum", scale: float = 1.0):
    """Shared path of the spectral methods: C, D, one ``eigh``, a filter, ``spectral_estimate``.

    ``theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T`` (DESIGN.md §1).

    Args:
        taus: (N, d_out, d_in) task vectors of one layer.
        build_filter: ``(eig, D, n_live) -> (Filter, extra_info)``, called once per layer.
        init: ``"sum"`` (theta0 = sum_i tau_i) or ``"zero"``.
        scale: ``delta = scale * theta_f``.

    Returns ``(delta (d_out, d_in), info)`` with the eigenvalue summary, filter label, number of
    kept directions ``k`` (f != 0), proxy loss before (at theta0) and after (at theta_f).
    """
    n = _norms(taus)
    n_live = int((n > 0).sum())
    if n_live == 0:
        return _zero_layer(taus)
    C, D = interference_operator(taus)
    eig = eigh(C)
    theta0 = taus.sum(0) if init == "sum" else None
    filt, extra = build_filter(eig, D, n_live)
    theta = spectral_estimate(C, D, theta0, filt, eig=eig)
    const = _loss_const(taus, n)
    info = layer_summary(eig.values, n_live)
    info.update(extra)
    info.update(
        filter=filt.label,
        k=int((filt(eig.values) != 0).sum()),
        loss_before=proxy_loss(theta0, C, D, const) if theta0 is not None else const,
        loss_after=proxy_loss(theta, C, D, const),
    )
    return scale * theta, info


# ----------------------------------------------------------------------------- baselines


@register("average", "mean of the experts: merged = base + mean_i tau_i", spectral=False)
def average(taus: torch.Tensor, *, name: str = "") -> tuple[torch.Tensor, dict]:
    """``delta = mean_i tau_i``; taus (N, *shape)."""
    return taus.mean(0), {}


@register("task_arithmetic", "base + s * sum_i tau_i", spectral=False, params=[_scale(0.3)])
def task_arithmetic(taus: torch.Tensor, *, name: str = "", scale: float = 0.3):
    """``delta = s sum_i tau_i``; taus (N, *shape)."""
    return scale * taus.sum(0), {}


@register(
    "ties",
    "TIES: trim each task vector to its top-density magnitudes, elect sign, disjoint mean, scale s",
    spectral=False,
    params=[Param("density", float, 0.2, "fraction of entries kept per task vector (TIES top-k%)", check=_check_unit),
            _scale(0.3)],
)
def ties(taus: torch.Tensor, *, name: str = "", density: float = 0.2, scale: float = 0.3):
    """TIES-merging of one tensor; taus (N, *shape).

    ``trimmed_i = tau_i 1[|tau_i| >= k-th largest |tau_i|]`` with ``k = ceil(density numel)``,
    ``gamma = sign(sum_i trimmed_i)``, ``delta = s * sum_i trimmed_i 1[sign(trimmed_i) = gamma]
    / max(1, #{i : sign(trimmed_i) = gamma})``.
    """
    N = taus.shape[0]
    flat = taus.reshape(N, -1)
    numel = flat.shape[1]
    k = max(1, math.ceil(density * numel)) if numel else 0
    if 0 < k < numel:
        thresh = flat.abs().kthvalue(numel - k + 1, dim=1, keepdim=True).values  # k-th largest
        flat = flat * (flat.abs() >= thresh)
    elected = torch.sign(flat.sum(0))
    agree = (torch.sign(flat) == elected) & (flat != 0)
    count = agree.sum(0)
    mean = (flat * agree).sum(0) / count.clamp_min(1)
    return scale * mean.reshape(taus.shape[1:]), {"density": density}


# ----------------------------------------------------------------------------- WUDI family


@register(
    "wudi",
    "WUDI: Adam on the proxy loss from the sum init (fast path on the exact gradient 2 (theta C - D))",
    spectral=True,
    params=[
        Param("lr", float, 1e-5, "Adam learning rate", check=_check_positive),
        Param("lr_rel", float, None, "scale-matched lr: lr = lr_rel * RMS of the layer's task-vector entries "
              "(replaces --lr)", check=_check_positive),
        Param("steps", int, 300, "Adam steps", check=_check_nonneg),
        Param("eps", float, 1e-8, "Adam epsilon", check=_check_nonneg),
        Param("reference", bool, False, "run the explicit per-expert loss with autograd (slow; same iterates)"),
        INIT,
        _scale(1.0),
    ],
    exclusive=[("lr", "lr_rel")],
)
def wudi(taus: torch.Tensor, *, name: str = "", lr: float | None = 1e-5, lr_rel: float | None = None,
         steps: int = 300, eps: float = 1e-8, reference: bool = False, init: str = "sum", scale: float = 1.0):
    """WUDI on one layer: Adam (betas 0.9, 0.999) on ``L(theta)`` for ``steps`` steps.

    Fast path: ``adam_wudi(C, D, theta0)`` with ``grad = 2 (theta C - D)``, O(d_out d_in^2) per
    step. ``reference=True``: ``wudi_reference(taus, theta0)``, the explicit
    ``sum_i ||(theta - tau_i) tau_i^T||^2 / n_i`` with autograd, O(N d_out^2 d_in) per step.
    """
    n = _norms(taus)
    n_live = int((n > 0).sum())
    if n_live == 0:
        return _zero_layer(taus)
    if lr_rel is not None:
        lr = lr_rel * float(torch.linalg.vector_norm(taus)) / math.sqrt(taus.numel())  # RMS of the entries
    C, D = interference_operator(taus)
    theta0 = taus.sum(0) if init == "sum" else torch.zeros_like(taus[0])
    with torch.enable_grad():  # the engine runs under no_grad; the optimizers need autograd
        if reference:
            theta = wudi_reference(taus, theta0, lr=lr, steps=steps, eps=eps).final
        else:
            theta = adam_wudi(C, D, theta0, lr=lr, steps=steps, eps=eps).final
    const = _loss_const(taus, n)
    info = {"n_live": n_live, "lr": lr, "steps": steps, "solver": "reference" if reference else "fast",
            "loss_before": proxy_loss(theta0, C, D, const), "loss_after": proxy_loss(theta, C, D, const)}
    return scale * theta, info


@register("closed_form", "closed form theta = D C^+ (filter f = 1; ill-posed)", spectral=True,
          params=[INIT, _scale(1.0)])
def closed_form(taus: torch.Tensor, *, name: str = "", init: str = "sum", scale: float = 1.0):
    """``theta = D C^+`` (numerical pseudoinverse: eigenvalues at or below ``max(1e-8, d eps
    lambda_max)`` count as null); ``init`` has no effect with f = 1."""
    return spectral_layer(taus, lambda eig, D, n_live: (pseudoinverse(), {}), init=init, scale=scale)


@register(
    "iwudi",
    "exponential filter f = 1 - exp(-lambda t), full rank (gradient flow for time t)",
    spectral=True,
    params=[T_PARAM(300.0, "exponential filter time"), KAPPA, INIT, _scale(1.0)],
    exclusive=[("t", "kappa")],
)
def iwudi(taus: torch.Tensor, *, name: str = "", t: float | None = 300.0, kappa: float | None = None,
          init: str = "sum", scale: float = 1.0):
    """``f(lambda) = 1 - exp(-lambda t)``, ``t = kappa d_in / N_live`` when ``kappa`` is given."""

    def build(eig, D, n_live):
        tt, kk = _time(t, kappa, eig.values.numel(), n_live)
        return exponential_filter(tt), {"t": tt, "kappa": kk}

    return spectral_layer(taus, build, init=init, scale=scale)


_FILTER_PARAMS = [
    T_PARAM(None, "exponential / swudi time"),
    KAPPA,
    Param("eta", float, None, "landweber step size", check=_check_positive),
    Param("n", int, None, "landweber number of steps", check=_check_nonneg),
    Param("alpha", float, None, "tikhonov regularization", check=_check_positive),
    Param("k", int, None, "top_k / swudi: number of kept directions (replaces --ratio)", check=_check_positive),
    Param("ratio", float, None, "top_k / swudi: K = ceil(ratio * d_in)", check=_check_unit),
    Param("p", float, None, "wiener exponent", check=_check_positive),
    Param("nu2", float, None, "wiener noise power", check=_check_positive),
]


def _filter_args(p: dict, d_in: int | None = None, n_live: int | None = None) -> dict:
    args = {q.name: p[q.name] for q in _FILTER_PARAMS if q.name not in ("kappa",) and p[q.name] is not None}
    if p["kappa"] is not None:
        if p["filter"] not in ("exponential", "swudi"):
            raise ValueError(f"kappa applies to the exponential and swudi filters, not {p['filter']!r}")
        args["t"] = p["kappa"] * d_in / n_live if d_in else p["kappa"]
    return args


def _check_filtered(p: dict) -> None:
    if p["filter"] is None:
        raise ValueError(f"give the filter name (--filter), one of: {', '.join(FILTERS)}")
    try:
        make_filter(p["filter"], **_filter_args(p))
    except TypeError as e:  # a required filter parameter is missing
        raise ValueError(f"filter {p['filter']!r}: {e}") from None


@register(
    "filtered",
    "any spectral filter with its parameters (e.g. --filter tikhonov --alpha 1e-3; --filter landweber --eta --n)",
    spectral=True,
    params=[Param("filter", str, None, "filter name", choices=tuple(FILTERS)), *_FILTER_PARAMS, INIT, _scale(1.0)],
    exclusive=[("t", "kappa"), ("k", "ratio")],
    check=_check_filtered,
)
def filtered(taus: torch.Tensor, *, name: str = "", filter: str, init: str = "sum", scale: float = 1.0, **fparams):
    """``theta_f`` for ``make_filter(filter, **params)``; ``kappa`` gives ``t = kappa d_in / N_live``."""
    p = {"filter": filter, **fparams}

    def build(eig, D, n_live):
        d_in = eig.values.numel()
        filt = make_filter(filter, **_filter_args(p, d_in, n_live))
        extra = {}
        if "t" in filt.params:
            extra = {"t": filt.params["t"], "kappa": filt.params["t"] * n_live / d_in}
        return filt, extra

    return spectral_layer(taus, build, init=init, scale=scale)


@register(
    "swudi",
    "SWUDI: exponential filter x top-K, t = 1300, K = ceil(ratio * d_in), ratio = 0.65",
    spectral=True,
    params=[
        T_PARAM(1300.0, "exponential filter time"),
        KAPPA,
        Param("ratio", float, 0.65, "K = ceil(ratio * d_in)", check=_check_unit),
        Param("k", int, None, "fixed number of kept directions K (replaces --ratio)", check=_check_positive),
        INIT,
        _scale(1.0),
    ],
    exclusive=[("t", "kappa"), ("k", "ratio")],
)
def swudi_method(taus: torch.Tensor, *, name: str = "", t: float | None = 1300.0, kappa: float | None = None,
                 ratio: float | None = 0.65, k: int | None = None, init: str = "sum", scale: float = 1.0):
    """``f(lambda) = (1 - exp(-lambda t)) 1[lambda among the K largest]``."""

    def build(eig, D, n_live):
        tt, kk = _time(t, kappa, eig.values.numel(), n_live)
        return swudi(tt, k=k, ratio=None if k is not None else ratio), {"t": tt, "kappa": kk}

    return spectral_layer(taus, build, init=init, scale=scale)


@register(
    "swudi_a",
    "SWUDI-A: top-K with K from a rank rule per layer (default participation_sqrt), f = 1 on kept directions",
    spectral=True,
    params=[
        Param("rank_rule", str, "participation_sqrt", "rank rule (swudi_lab.spectral.RANK_RULES, or cumvar_<frac>)",
              check=_check_rule),
        Param("min_rank", int, 1, "lower clamp on K", check=_check_positive),
        Param("max_rank_ratio", float, 1.0, "upper clamp K <= ceil(max_rank_ratio * d_in)", check=_check_unit),
        INIT,
        _scale(1.0),
    ],
)
def swudi_a(taus: torch.Tensor, *, name: str = "", rank_rule: str = "participation_sqrt", min_rank: int = 1,
            max_rank_ratio: float = 1.0, init: str = "sum", scale: float = 1.0):
    """``f = 1[k <= K]``, ``K = choose_rank(lambda, rank_rule, rhs_energy = ||D q_k||^2, aspect = beta)``.

    ``beta = min(d_in, N_live d_out) / max(d_in, N_live d_out)``, the aspect ratio of the stacked task matrix.
    """
    d_out, d_in = taus.shape[1:]

    def build(eig, D, n_live):
        rhs = (D @ eig.vectors).pow(2).sum(0)
        rows = n_live * d_out
        K = choose_rank(eig.values, rank_rule, rhs_energy=rhs, aspect=min(d_in, rows) / max(d_in, rows),
                        min_rank=min_rank, max_rank_ratio=max_rank_ratio)
        return top_k(k=K), {"rank_rule": rank_rule}

    return spectral_layer(taus, build, init=init, scale=scale)
