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
replaces ``t`` by ``t = kappa d_in / N_live`` per layer (:func:`~swudi_lab.spectral.kappa_time`) (``N_live`` = experts with a nonzero task
vector on the layer, ``trace(C) = N_live``), and both are reported.

Degenerate layers: experts whose task vector is all zero are left out of C and D (never divided
by); a layer where all are zero returns ``delta = 0``. With one expert (N = 1) every WUDI-family
method returns ``theta = tau_1`` (the expert itself at scale 1): ``tau_1`` is the exact minimizer
of its own loss (``D = tau_1 C``), the spectral estimate keeps it in every direction, and the
gradient at the sum init is zero so Adam does not move.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated

import torch

from ..registry import Doc, nonnegative, positive, unit_interval
from ..spectral import (
    FILTERS,
    eigh,
    interference_operator,
    kappa_time,
    live_count,
    loss_constant,
    make_filter,
    pseudoinverse,
    quadratic_loss,
    spectral_estimate,
    swudi,
    time_kappa,
    top_k,
)
from ..spectral import exponential as exponential_filter
from ..spectral.filters import Count, Ratio, Time
from ..spectral.iterative import adam_wudi, wudi_reference
from ..spectral.rank_rules import RANK_RULES, choose_rank
from .registry import register

__all__ = ["spectral_layer", "proxy_loss", "layer_summary"]

# ----------------------------------------------------------------------------- shared parameters

Init = Annotated[str, Doc("start theta0: sum of task vectors, or zero", choices=("sum", "zero"))]
Scale = Annotated[float, Doc("merged = base + scale * theta")]
Kappa = Annotated[float | None, Doc("scale-free time: t = kappa * d_in / N per layer (replaces --t)", check=positive)]


def _known_rank_rule(v):
    RANK_RULES.lookup(v)  # raises ValueError naming the known rules


def _known_filter(v):
    FILTERS.lookup(v)  # raises ValueError naming the known filters


# ----------------------------------------------------------------------------- shared helpers


def proxy_loss(theta: torch.Tensor, C: torch.Tensor, D: torch.Tensor, const: float) -> float:
    """WUDI proxy loss ``L(theta) = tr(theta C theta^T) - 2 tr(theta D^T) + const``, ``const = L(0)``."""
    return quadratic_loss(theta, C, D) + const


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
        t = kappa_time(kappa, d_in, n_live)
    return float(t), time_kappa(float(t), d_in, n_live)


def _zero_layer(taus: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return torch.zeros_like(taus[0]), {"n_live": 0, "note": "all task vectors are zero"}


def spectral_layer(taus: torch.Tensor, build_filter, *, init: str = "sum", scale: float = 1.0):
    """Shared path of the spectral methods: C, D, one ``eigh``, a filter, ``spectral_estimate``.

    ``theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T`` (docs/design.md).

    Args:
        taus: (N, d_out, d_in) task vectors of one layer.
        build_filter: ``(eig, D, n_live) -> (Filter, extra_info)``, called once per layer.
        init: ``"sum"`` (theta0 = sum_i tau_i) or ``"zero"``.
        scale: ``delta = scale * theta_f``.

    Returns ``(delta (d_out, d_in), info)`` with the eigenvalue summary, filter label, number of
    kept directions ``k`` (f != 0), proxy loss before (at theta0) and after (at theta_f).
    """
    n_live = live_count(taus)
    if n_live == 0:
        return _zero_layer(taus)
    C, D = interference_operator(taus)
    eig = eigh(C)
    theta0 = taus.sum(0) if init == "sum" else None
    filt, extra = build_filter(eig, D, n_live)
    theta = spectral_estimate(C, D, theta0, filt, eig=eig)
    const = loss_constant(taus)
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


@register("task_arithmetic", "base + s * sum_i tau_i", spectral=False)
def task_arithmetic(taus: torch.Tensor, *, name: str = "", scale: Scale = 0.3):
    """``delta = s sum_i tau_i``; taus (N, *shape)."""
    return scale * taus.sum(0), {}


@register(
    "ties",
    "TIES: trim each task vector to its top-density magnitudes, elect sign, disjoint mean, scale s",
    spectral=False,
)
def ties(taus: torch.Tensor, *, name: str = "",
         density: Annotated[float, Doc("fraction of entries kept per task vector (TIES top-k%)", check=unit_interval)] = 0.2,
         scale: Scale = 0.3):
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
    exclusive=[("lr", "lr_rel")],
)
def wudi(taus: torch.Tensor, *, name: str = "",
         lr: Annotated[float | None, Doc("Adam learning rate", check=positive)] = 1e-5,
         lr_rel: Annotated[float | None, Doc("scale-matched lr: lr = lr_rel * RMS of the layer's task-vector entries "
                                             "(replaces --lr)", check=positive)] = None,
         steps: Annotated[int, Doc("Adam steps", check=nonnegative)] = 300,
         eps: Annotated[float, Doc("Adam epsilon", check=nonnegative)] = 1e-8,
         reference: Annotated[bool, Doc("run the explicit per-expert loss with autograd (slow; same iterates)")] = False,
         init: Init = "sum", scale: Scale = 1.0):
    """WUDI on one layer: Adam (betas 0.9, 0.999) on ``L(theta)`` for ``steps`` steps.

    Fast path: ``adam_wudi(C, D, theta0)`` with ``grad = 2 (theta C - D)``, O(d_out d_in^2) per
    step. ``reference=True``: ``wudi_reference(taus, theta0)``, the explicit
    ``sum_i ||(theta - tau_i) tau_i^T||^2 / n_i`` with autograd, O(N d_out^2 d_in) per step.
    """
    n_live = live_count(taus)
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
    const = loss_constant(taus)
    info = {"n_live": n_live, "lr": lr, "steps": steps, "solver": "reference" if reference else "fast",
            "loss_before": proxy_loss(theta0, C, D, const), "loss_after": proxy_loss(theta, C, D, const)}
    return scale * theta, info


@register("closed_form", "closed form theta = D C^+ (filter f = 1; ill-posed)", spectral=True)
def closed_form(taus: torch.Tensor, *, name: str = "", init: Init = "sum", scale: Scale = 1.0):
    """``theta = D C^+`` (numerical pseudoinverse: eigenvalues at or below ``max(1e-8, d eps
    lambda_max)`` count as null); ``init`` has no effect with f = 1."""
    return spectral_layer(taus, lambda eig, D, n_live: (pseudoinverse(), {}), init=init, scale=scale)


@register(
    "iwudi",
    "exponential filter f = 1 - exp(-lambda t), full rank (gradient flow for time t)",
    spectral=True,
    exclusive=[("t", "kappa")],
)
def iwudi(taus: torch.Tensor, *, name: str = "", t: Time = 300.0, kappa: Kappa = None,
          init: Init = "sum", scale: Scale = 1.0):
    """``f(lambda) = 1 - exp(-lambda t)``, ``t = kappa d_in / N_live`` when ``kappa`` is given."""

    def build(eig, D, n_live):
        tt, kk = _time(t, kappa, eig.values.numel(), n_live)
        return exponential_filter(tt), {"t": tt, "kappa": kk}

    return spectral_layer(taus, build, init=init, scale=scale)


def _filter_params():
    """Every registered filter's parameters, each name once (the ``filtered`` method's flags).

    Unset by default: the chosen filter applies its own defaults to the ones not given.
    """
    seen = {}
    for kind in FILTERS.values():
        for p in kind.params:
            seen.setdefault(p.name, replace(p, default=None))
    return tuple(seen.values())


def _filter_args(p: dict, d_in: int | None = None, n_live: int | None = None) -> dict:
    """The chosen filter's own arguments from the resolved parameters; ``kappa`` becomes ``t``."""
    accepted = {q.name for q in FILTERS.lookup(p["filter"]).params}
    args = {k: v for k, v in p.items() if k in accepted and v is not None}
    given = sorted(k for k, v in p.items() if v is not None and k not in accepted | {"filter", "kappa"})
    if given:
        raise ValueError(f"filter {p['filter']!r} got unknown parameter(s) {given}; "
                         f"accepted: {[q.name for q in FILTERS.lookup(p['filter']).params] or 'none'}")
    if p.get("kappa") is not None:
        if "t" not in accepted:
            raise ValueError(f"kappa applies to filters with a time t, not {p['filter']!r}")
        args["t"] = kappa_time(p["kappa"], d_in, n_live) if d_in else p["kappa"]
    return args


def _check_filtered(p: dict) -> None:
    if p["filter"] is None:
        raise ValueError(f"give the filter name (--filter), one of: {FILTERS.names()}")
    fparams = {k: v for k, v in p.items() if k not in ("init", "scale")}
    make_filter(p["filter"], **_filter_args(fparams))


@register(
    "filtered",
    "any spectral filter with its parameters (e.g. --filter tikhonov --alpha 1e-3; --filter landweber --eta --n)",
    spectral=True,
    exclusive=[("t", "kappa"), ("k", "ratio")],
    check=_check_filtered,
    extra_params=_filter_params,
)
def filtered(taus: torch.Tensor, *, name: str = "",
             filter: Annotated[str | None, Doc("filter name (swudi_lab.spectral.FILTERS)", check=_known_filter)] = None,
             kappa: Kappa = None, init: Init = "sum", scale: Scale = 1.0, **fparams):
    """``theta_f`` for ``make_filter(filter, **params)``; ``kappa`` gives ``t = kappa d_in / N_live``."""
    p = {"filter": filter, "kappa": kappa, **fparams}

    def build(eig, D, n_live):
        d_in = eig.values.numel()
        filt = make_filter(filter, **_filter_args(p, d_in, n_live))
        extra = {}
        if "t" in filt.params:
            extra = {"t": filt.params["t"], "kappa": time_kappa(filt.params["t"], d_in, n_live)}
        return filt, extra

    return spectral_layer(taus, build, init=init, scale=scale)


@register(
    "swudi",
    "SWUDI: exponential filter x top-K, t = 1300, K = ceil(ratio * d_in), ratio = 0.65",
    spectral=True,
    exclusive=[("t", "kappa"), ("k", "ratio")],
)
def swudi_method(taus: torch.Tensor, *, name: str = "", t: Time = 1300.0, kappa: Kappa = None,
                 ratio: Ratio = 0.65, k: Count = None, init: Init = "sum", scale: Scale = 1.0):
    """``f(lambda) = (1 - exp(-lambda t)) 1[lambda among the K largest]``."""

    def build(eig, D, n_live):
        tt, kk = _time(t, kappa, eig.values.numel(), n_live)
        return swudi(tt, k=k, ratio=None if k is not None else ratio), {"t": tt, "kappa": kk}

    return spectral_layer(taus, build, init=init, scale=scale)


@register(
    "swudi_a",
    "SWUDI-A: top-K with K from a rank rule per layer (default participation_sqrt), f = 1 on kept directions",
    spectral=True,
)
def swudi_a(taus: torch.Tensor, *, name: str = "",
            rank_rule: Annotated[str, Doc("rank rule (swudi_lab.spectral.RANK_RULES, or cumvar_<frac>)",
                                          check=_known_rank_rule)] = "participation_sqrt",
            min_rank: Annotated[int, Doc("lower clamp on K", check=positive)] = 1,
            max_rank_ratio: Annotated[float, Doc("upper clamp K <= ceil(max_rank_ratio * d_in)",
                                                 check=unit_interval)] = 1.0,
            init: Init = "sum", scale: Scale = 1.0):
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
