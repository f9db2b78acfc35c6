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
- ``swudi``:       ``f = (1 - exp(-lambda t)) 1[k <= K]``, t = 1300, K = max(1, floor(0.65 d_in + 0.999)),
  with the authors' knobs (all neutral at their defaults): ``alignment_rho``, ``filter_gamma``,
  ``tikhonov_alpha``, ``filter_type``, ``consensus_power`` / ``consensus_floor``, ``output_exp_time``.
- ``swudi_a``:     ``f = 1[k <= K]`` with K from a rank rule per layer (participation_sqrt), clamped and
  scaled (``min_rank``, ``max_rank_ratio``, ``rank_scale``); ``filter_type`` exponential or wiener on
  the kept directions.
- ``optmerge``:    OptMerge (the authors' WUDI v2 baseline): Adam on
  ``sum_i ||(theta - target_i) P_i^T||^2 / n_i`` with per-expert low-rank targets and projectors.

Spectral methods share one code path (:func:`spectral_layer`): ``layer_operator``, one
``eigh``, a filter, ``eigenbasis_estimate``. The exponential time is not scale-free; ``kappa``
replaces ``t`` by ``t = kappa d_in / N_live`` per layer (:func:`~swudi_lab.spectral.kappa_time`) (``N_live`` = experts with a nonzero task
vector on the layer, ``trace(C) = N_live``), and both are reported.

Low-rank experts (LoRA adapters): every method also takes a :class:`~swudi_lab.spectral.LowRankTasks`
(``tau_i = s_i B_i A_i``) in place of ``taus``. The one-eigh methods (``closed_form``, ``iwudi``,
``filtered``, ``swudi``, ``swudi_a`` with every rank rule) solve in the span of the ``A_i`` rows
(:func:`~swudi_lab.spectral.lowrank_operator`), the dense result to round-off, without forming any
``tau_i``. The rules that read the task vectors themselves densify them first (``tasks.dense()``):
``wudi`` (Adam), ``optmerge``, SWUDI's ``consensus_power`` and ``output_exp_time``, :func:`lam_max`
(the ``alignment_rho`` pre-pass), and the baselines ``average``, ``task_arithmetic``, ``ties``.

Degenerate layers: experts whose task vector is all zero are left out of C and D (never divided
by); a layer where all are zero returns ``delta = 0``. With one expert (N = 1) every WUDI-family
method returns ``theta = tau_1`` (the expert itself at scale 1): ``tau_1`` is the exact minimizer
of its own loss (``D = tau_1 C``), the spectral estimate keeps it in every direction, and the
gradient at the sum init is zero so Adam does not move.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from dataclasses import replace
from typing import Annotated, Iterable

import numpy as np
import torch

from ..registry import Doc, at_least_one, nonnegative, positive, unit_interval
from ..spectral import (
    EIGEN_FLOOR,
    FILTERS,
    Eig,
    Filter,
    eigenbasis_estimate,
    eigenpairs,
    eigh,
    filter_factors,
    layer_operator,
    LowRankTasks,
    lowrank_operator,
    numerical_rank_tolerance,
    subspace_operator,
    kappa_time,
    live_count,
    live_experts,
    make_filter,
    pseudoinverse,
    quadratic_loss,
    swudi,
    tikhonov,
    time_kappa,
    top_k,
    wiener,
)
from ..spectral import exponential as exponential_filter
from ..spectral.filters import Count, Ratio, Time, swudi_count
from ..spectral.iterative import adam_wudi, wudi_reference
from ..spectral.rank_rules import RANK_RULES, choose_rank
from .registry import register

__all__ = ["spectral_layer", "LayerContext", "proxy_loss", "layer_summary", "lam_max", "consensus_factors", "output_exp_filter",
           "optmerge_problem", "optmerge_loss"]

# ----------------------------------------------------------------------------- shared parameters

Init = Annotated[str, Doc("start theta0: sum of task vectors, or zero", choices=("sum", "zero"))]
Scale = Annotated[float, Doc("merged = base + scale * theta")]
SkipLosses = Annotated[bool, Doc("leave the proxy losses before and after out of the report (on a top-K layer of the "
                                 "tridiagonal route they cost one d_out x d_in x d_in product)")]
SwudiRatio = Annotated[float, Doc("kept share of directions: K = max(1, floor(ratio * d_in + 0.999))",
                                  check=unit_interval)]
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
    zero = torch.zeros(taus.shape[1:], dtype=taus.dtype, device=taus.device)  # a tensor or LowRankTasks
    return zero, {"n_live": 0, "note": "all task vectors are zero"}


def _dense(taus):
    """``taus`` as the (N, d_out, d_in) tensor: a :class:`~swudi_lab.spectral.LowRankTasks` is densified
    (``tau_i = s_i B_i A_i``) for the rules that read the task vectors themselves."""
    return taus.dense() if isinstance(taus, LowRankTasks) else taus


class LayerContext:
    """What a spectral method's filter builder sees of one layer (:func:`spectral_layer`).

    ``eig`` (``C = V diag(lambda) V^T``), ``D``, ``theta0`` (``None`` for the zero init), ``n_live``,
    ``d_in``, ``d_out``, ``taus``; :meth:`projections` gives ``[D; theta0] V`` over every column,
    computed once on first use and then reused by the estimate (a rank rule that needs
    ``||D q_k||^2`` costs no extra product). For a :class:`~swudi_lab.spectral.LowRankTasks` everything is
    in the coordinates of ``span(Q)`` (:class:`~swudi_lab.spectral.LowRankOperator`): ``eig.vectors`` is W
    (m x m, ``q_k = Q w_k``), ``D`` and ``theta0`` are ``D Q`` and ``theta0 Q``; the projections
    ``[D Q; theta0 Q] W`` are the same numbers ``[D; theta0] q_k``.
    """

    def __init__(self, taus: torch.Tensor, op, eig):
        self.taus, self.op, self.eig = taus, op, eig
        self.D, self.theta0, self.n_live = op.D, op.theta0, op.n_live
        self.d_out, self.d_in = taus.shape[1], taus.shape[2]
        self._projections = None

    def projections(self) -> torch.Tensor:
        """``[D; theta0] V`` (2 d_out or d_out rows, one column per computed eigenvector), computed once."""
        if self._projections is None:
            self._projections = self.op.rhs @ self.eig.vectors
        return self._projections

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """Per-direction values of the computed eigenvectors, 0 on the rest of the spectrum (the
        subspace path: D and theta0 have no component outside the span)."""
        return torch.cat([x, x.new_zeros(self.d_in - x.numel())]) if x.numel() < self.d_in else x

    def rhs_energy(self) -> torch.Tensor:
        """``||D q_k||^2`` per eigen-direction (d_in,)."""
        return self._padded(self.projections()[: self.d_out].pow(2).sum(0))

    def start_energy(self) -> torch.Tensor:
        """``||theta0 q_k||^2`` per eigen-direction (zeros for the zero init)."""
        if self.theta0 is None:
            return torch.zeros_like(self.eig.values)
        return self._padded(self.projections()[self.d_out:].pow(2).sum(0))


def _use_subspace(N: int, d_out: int, d_in: int) -> bool:
    """The small solve applies: C has rank <= N d_out < d_in (every eigenpair outside the span is 0)."""
    return N * d_out < d_in


def _kept_vectors(eig, f: torch.Tensor, f_over_lam: torch.Tensor, op, losses: bool = True
                  ) -> tuple[torch.Tensor, float | None]:
    """``(V, start_energy)`` for :func:`~swudi_lab.spectral.eigenbasis_estimate`: only the kept columns
    of V when they are a prefix (top-K) not formed yet and forming fewer pays.

    The report's ``q(theta0)`` then needs ``tr(theta0 C theta0^T)``, one (d_out x d_in) x (d_in x d_in)
    product, in place of back-transforming the ``d - K`` dropped columns and projecting ``theta0`` on
    them: fewer flops when ``(d - K)(d + d_out) > d_out d``, e.g. fc2 (768 x 3072) at SWUDI's
    K = 0.65 d (1075 dropped > 614). With the zero init, or without the losses, nothing is needed
    for the dropped columns.
    """
    keep = (f != 0) | (f_over_lam != 0)
    count, d = int(keep.sum()), f.numel()
    if count == d or eig.formed >= count or not bool(keep[:count].all()):
        return eig.vectors, None
    theta0 = op.theta0
    if theta0 is None or not losses:
        return eig.leading(count), None
    if (d - count) * (d + op.d_out) <= op.d_out * d:
        return eig.vectors, None
    return eig.leading(count), float(((theta0 @ op.C) * theta0).sum())


def spectral_layer(taus: torch.Tensor, build_filter, *, init: str = "sum", scale: float = 1.0, post=None,
                   losses: bool = True):
    """Shared path of the spectral methods: C and D once, one ``eigh``, a filter, ``theta_f``.

    ``theta_f = theta0 + [(D V) diag(f / lambda) - (theta0 V) diag(f)] V^T`` over the columns with
    ``f != 0`` (docs/design.md), at the per-layer cost model's floor:
    :func:`~swudi_lab.spectral.layer_operator` (one Gram matrix at a time, D in the cheaper
    association, the norms once, ``L(0)`` from the same Gram matrices),
    :func:`~swudi_lab.spectral.eigh`, the filter evaluated once
    (:func:`~swudi_lab.spectral.filter_factors`), ``[D; theta0] V_k`` as one product and the
    proxy losses from the eigenbasis (:func:`~swudi_lab.spectral.eigenbasis_estimate`). Memory
    O(d_in^2 + d_out d_in) beyond the task vectors.

    When ``N d_out < d_in`` C has rank ``m <= N d_out``: :func:`~swudi_lab.spectral.subspace_operator`
    takes its eigenpairs from an m x m matrix in the span of the task vectors' rows (the small solve,
    O(d_in m^2 + m^3)); the filter sees the full spectrum (those m eigenvalues, then zeros), and the
    directions outside the span contribute nothing, since D and the sum init have no component there
    (equal to the dense computation; with the zero init too).

    A :class:`~swudi_lab.spectral.LowRankTasks` (``tau_i = s_i B_i A_i``, LoRA) always takes the small solve
    in ``span(Q)`` of the ``A_i`` rows (:func:`~swudi_lab.spectral.lowrank_operator`, m <= sum_i r_i):
    the estimate is formed in coordinates, ``theta_f Q``, and mapped back once, ``theta_f = (theta_f Q) Q^T``
    (``info["lowrank"]``); the spectrum the filter sees is again the m eigenvalues, then d_in - m zeros.

    Args:
        taus: (N, d_out, d_in) task vectors of one layer, or their factors (:class:`~swudi_lab.spectral.LowRankTasks`).
        build_filter: ``(layer: LayerContext) -> (Filter, extra_info)``, called once per layer.
        init: ``"sum"`` (theta0 = sum_i tau_i) or ``"zero"``.
        scale: ``delta = scale * theta_f``.
        post: optional ``theta -> theta`` applied after the estimate (SWUDI's ``output_exp_time``;
            the loss after is then computed directly, ``tr(theta C theta^T) - 2 tr(theta D^T) + L(0)``).
        losses: report the proxy losses ``loss_before`` / ``loss_after`` (``False``: left out, and
            nothing computed for them).

    Returns ``(delta (d_out, d_in), info)`` with the eigenvalue summary, filter label, number of
    kept directions ``k`` (f != 0), proxy loss before (at theta0) and after (at theta_f).
    """
    N, d_out, d_in = taus.shape
    lowrank = isinstance(taus, LowRankTasks)  # LoRA: the small solve in the span of the A_i rows, in coordinates
    subspace = lowrank or _use_subspace(N, d_out, d_in)
    op = (lowrank_operator if lowrank else subspace_operator if subspace else layer_operator)(taus, start=init == "sum")
    if op.n_live == 0:
        return _zero_layer(taus)
    if subspace:  # the spectrum of C: the m computed eigenvalues, then d_in - m exact zeros
        eig = Eig(torch.cat([op.lam, op.lam.new_zeros(d_in - op.lam.numel())]), op.W if lowrank else op.V)
    else:
        eig = eigenpairs(op.C)  # V formed on demand: a top-K filter's columns only
    layer = LayerContext(taus, op, eig)
    filt, extra = build_filter(layer)
    lam = eig.values
    f, f_over_lam = filter_factors(filt, lam, numerical_rank_tolerance(lam, EIGEN_FLOOR))
    V, energy = (eig.vectors, None) if subspace else _kept_vectors(eig, f, f_over_lam, op, losses)
    m = V.shape[1] if subspace else d_in
    est = eigenbasis_estimate(lam[:m], V, op.rhs, op.d_out, f[:m], f_over_lam[:m], projections=layer._projections,
                              losses=losses, start_energy=energy)
    theta = est.theta if not lowrank else est.theta @ op.Q.T  # theta_f = (theta_f Q) Q^T
    loss_after = est.quad_after + op.const if losses else None
    if post is not None:
        theta = post(theta)
    if post is not None and losses:
        if lowrank:  # C's range and D's rows lie in span(Q): only theta Q counts
            tq = theta @ op.Q
            loss_after = float((lam[:m] * (tq @ op.W).pow(2).sum(0)).sum() - 2 * (tq * op.D).sum()) + op.const
        elif subspace:  # tr(theta C theta^T) = sum_k lam_k ||theta q_k||^2 over the span
            loss_after = float((lam[:m] * (theta @ V).pow(2).sum(0)).sum() - 2 * (theta * op.D).sum()) + op.const
        else:
            loss_after = proxy_loss(theta, op.C, op.D, op.const)
    info = layer_summary(lam, op.n_live)
    info.update(extra)
    info.update(filter=filt.label, k=int((f != 0).sum()))
    if losses:
        info.update(loss_before=est.quad_before + op.const, loss_after=loss_after)
    if subspace:
        info["subspace"] = m
    if lowrank:
        info["lowrank"] = True
    if scale != 1:
        theta.mul_(scale)
    return theta, info


# ----------------------------------------------------------------------------- baselines


@register("average", "mean of the experts: merged = base + mean_i tau_i", spectral=False)
def average(taus: torch.Tensor, *, name: str = "") -> tuple[torch.Tensor, dict]:
    """``delta = mean_i tau_i``; taus (N, *shape)."""
    return _dense(taus).mean(0), {}


@register("task_arithmetic", "base + s * sum_i tau_i", spectral=False)
def task_arithmetic(taus: torch.Tensor, *, name: str = "", scale: Scale = 0.3):
    """``delta = s sum_i tau_i``; taus (N, *shape)."""
    return scale * _dense(taus).sum(0), {}


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
    taus = _dense(taus)
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
    taus = _dense(taus)  # Adam on the explicit problem: dense C and D
    n_live = live_count(taus)
    if n_live == 0:
        return _zero_layer(taus)
    if lr_rel is not None:
        lr = lr_rel * float(torch.linalg.vector_norm(taus)) / math.sqrt(taus.numel())  # RMS of the entries
    op = layer_operator(taus)  # C, D and L(0) from the same Gram matrices
    C, D, const = op.C, op.D, op.const
    theta0 = taus.sum(0) if init == "sum" else torch.zeros_like(taus[0])
    with torch.enable_grad():  # the engine runs under no_grad; the optimizers need autograd
        if reference:
            theta = wudi_reference(taus, theta0, lr=lr, steps=steps, eps=eps).final
        else:
            theta = adam_wudi(C, D, theta0, lr=lr, steps=steps, eps=eps).final
    info = {"n_live": n_live, "lr": lr, "steps": steps, "solver": "reference" if reference else "fast",
            "loss_before": proxy_loss(theta0, C, D, const), "loss_after": proxy_loss(theta, C, D, const)}
    return scale * theta, info


@register("closed_form", "closed form theta = D C^+ (filter f = 1; ill-posed)", spectral=True)
def closed_form(taus: torch.Tensor, *, name: str = "", init: Init = "sum", scale: Scale = 1.0,
                skip_losses: SkipLosses = False):
    """``theta = D C^+`` (numerical pseudoinverse: eigenvalues at or below ``max(1e-8, d eps
    lambda_max)`` count as null); ``init`` has no effect with f = 1."""
    return spectral_layer(taus, lambda layer: (pseudoinverse(), {}), init=init, scale=scale, losses=not skip_losses)


@register(
    "iwudi",
    "exponential filter f = 1 - exp(-lambda t), full rank (gradient flow for time t)",
    spectral=True,
    exclusive=[("t", "kappa")],
)
def iwudi(taus: torch.Tensor, *, name: str = "", t: Time = 300.0, kappa: Kappa = None,
          init: Init = "sum", scale: Scale = 1.0, skip_losses: SkipLosses = False):
    """``f(lambda) = 1 - exp(-lambda t)``, ``t = kappa d_in / N_live`` when ``kappa`` is given."""

    def build(layer):
        tt, kk = _time(t, kappa, layer.d_in, layer.n_live)
        return exponential_filter(tt), {"t": tt, "kappa": kk}

    return spectral_layer(taus, build, init=init, scale=scale, losses=not skip_losses)


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
    fparams = {k: v for k, v in p.items() if k not in ("init", "scale", "skip_losses")}
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
             kappa: Kappa = None, init: Init = "sum", scale: Scale = 1.0, skip_losses: SkipLosses = False,
             **fparams):
    """``theta_f`` for ``make_filter(filter, **params)``; ``kappa`` gives ``t = kappa d_in / N_live``."""
    p = {"filter": filter, "kappa": kappa, **fparams}

    def build(layer):
        d_in, n_live = layer.d_in, layer.n_live
        filt = make_filter(filter, **_filter_args(p, d_in, n_live))
        extra = {}
        if "t" in filt.params:
            extra = {"t": filt.params["t"], "kappa": time_kappa(filt.params["t"], d_in, n_live)}
        return filt, extra

    return spectral_layer(taus, build, init=init, scale=scale, losses=not skip_losses)


# ----------------------------------------------------------------------------- SWUDI and its knobs


def lam_max(taus: torch.Tensor) -> float:
    """``lambda_max(C)`` of one layer, exactly: the largest eigenvalue (``torch.linalg.eigvalsh``) of
    the smaller Gram matrix of the stacked normalized task matrix ``T`` (``C = T^T T``; ``T T^T``
    has the same nonzero spectrum), so it costs ``O(min(d_in, N d_out)^2 max(...))`` without ``D``
    or eigenvectors. Zero experts are skipped; 0 for an all-zero layer."""
    t, n = live_experts(_dense(taus))
    if not n.numel():
        return 0.0
    T = (t / n.sqrt().view(-1, 1, 1)).reshape(-1, taus.shape[-1])
    G = T @ T.T if T.shape[0] < T.shape[1] else T.T @ T
    return float(torch.linalg.eigvalsh(0.5 * (G + G.T))[-1])


def _swudi_prepass(params: dict, layers: Iterable) -> dict:
    """SWUDI's pre-pass: ``alignment_ref = lam_bar``, the geometric mean of ``lambda_max(C)`` over every
    merged 2-D layer (``layers`` yields ``(name, taus)``), when ``alignment_rho > 0`` needs it.

    Reads nothing when it is not needed (rho = 0, filter_type none, or alignment_ref given)."""
    if params.get("filter_type") != "exponential" or not params.get("alignment_rho") \
            or params.get("alignment_ref") is not None:
        return {}
    logs = [math.log(max(v, EIGEN_FLOOR)) for v in (lam_max(taus) for _, taus in layers) if v > 0]
    return {"alignment_ref": math.exp(sum(logs) / len(logs))} if logs else {}


def _powered_exponential(t: float, gamma: float) -> Filter:
    """``clamp(1 - exp(-lambda t), 0, 1)^gamma``; ``f / lambda`` is 0 on the numerical null space."""
    return Filter("exponential", {"t": t, "gamma": gamma}, lambda lam: (-torch.expm1(-lam * t)).clamp(0, 1) ** gamma)


def consensus_factors(taus: torch.Tensor, V: torch.Tensor, power: float, floor: float) -> torch.Tensor:
    """SWUDI's consensus factor per eigen-direction q_k (columns of V): ``phi + (1 - phi) c_k^p``.

    ``w_ik = ||tau_i q_k||^2 / n_i``, normalised over the live experts i for each k;
    ``count_k = 1 / sum_i w_ik^2`` (their effective number along q_k); ``c_k = clamp(count_k / N_live,
    0, 1)``. A direction no expert touches gets ``c_k = 1``. Returns a (d_in,) tensor.
    """
    t, n = live_experts(taus)
    w = torch.stack([(ti @ V).pow(2).sum(0) for ti in t]) / n.view(-1, 1)  # (N_live, d_in), one expert at a time
    total = w.sum(0)
    touched = total > 0
    w = w / torch.where(touched, total, torch.ones_like(total))
    count = 1 / torch.where(touched, w.pow(2).sum(0), torch.ones_like(total))
    c = torch.where(touched, (count / t.shape[0]).clamp(0, 1), torch.ones_like(total))
    return floor + (1 - floor) * c.pow(power)


def _direction_filter(name: str, params: dict, factors: torch.Tensor) -> Filter:
    """A filter that multiplies eigen-direction k by ``factors[k]`` (in the order of ``eig.values``)."""

    def fn(lam):
        if lam.shape != factors.shape:
            raise ValueError(f"filter {name!r} holds {factors.numel()} factors, got {lam.numel()} eigenvalues")
        return factors.to(lam)

    return Filter(name, params, fn)


def output_exp_filter(taus: torch.Tensor, t_out: float):
    """SWUDI's output-side filter: ``theta -> U diag(1 - exp(-sigma t_E)) U^T theta`` with
    ``E = sum_i tau_i tau_i^T / n_i = U diag(sigma) U^T`` (d_out x d_out, live experts, sigma clamped at 1e-8)."""
    t, n = live_experts(taus)
    E = ((t / n.view(-1, 1, 1)) @ t.transpose(1, 2)).sum(0)
    sigma, U = torch.linalg.eigh(0.5 * (E + E.T))
    g = -torch.expm1(-sigma.clamp_min(EIGEN_FLOOR) * t_out)
    return lambda theta: (U * g) @ (U.T @ theta)


def _rho_range(v):
    if not 0 <= v <= 2:
        raise ValueError(f"must be in [0, 2], got {v!r}")


def _closed_unit(v):
    if not 0 <= v <= 1:
        raise ValueError(f"must be in [0, 1], got {v!r}")


@register(
    "swudi",
    "SWUDI: exponential filter x top-K, t = 1300, K = max(1, floor(ratio d_in + 0.999)), ratio = 0.65; "
    "the authors' knobs are neutral at their defaults",
    spectral=True,
    exclusive=[("t", "kappa"), ("k", "ratio")],
    prepass=_swudi_prepass,
)
def swudi_method(taus: torch.Tensor, *, name: str = "", t: Time = 1300.0, kappa: Kappa = None,
                 ratio: SwudiRatio = 0.65, k: Count = None,
                 filter_type: Annotated[str, Doc("exponential (SWUDI) or none: f = 1 on the kept directions, the "
                                                 "truncated pseudoinverse (t, filter_gamma, tikhonov_alpha, "
                                                 "alignment_rho ignored)",
                                                 choices=("exponential", "none"))] = "exponential",
                 alignment_rho: Annotated[float, Doc("per-layer time t (lam_bar / lam_max)^rho, lam_bar the geometric "
                                                     "mean of every 2-D layer's lam_max (exponential only)",
                                                     check=_rho_range)] = 0.0,
                 alignment_ref: Annotated[float | None, Doc("lam_bar for alignment_rho (default: the merge's pre-pass "
                                                            "over every 2-D layer computes it)", check=positive)] = None,
                 filter_gamma: Annotated[float, Doc("exponential factor clamp(1 - exp(-lambda t), 0, 1)^gamma",
                                                    check=positive)] = 1.0,
                 tikhonov_alpha: Annotated[float, Doc("extra factor lambda / (lambda + alpha); 0: off",
                                                      check=nonnegative)] = 0.0,
                 consensus_power: Annotated[float, Doc("p of the consensus factor phi + (1 - phi) c_k^p, c_k = the "
                                                       "experts' effective count along q_k over N; 0: off",
                                                       check=nonnegative)] = 0.0,
                 consensus_floor: Annotated[float, Doc("phi of the consensus factor, in [0, 1]",
                                                       check=_closed_unit)] = 0.0,
                 output_exp_time: Annotated[float | None, Doc("t_E: theta <- U diag(1 - exp(-sigma t_E)) U^T theta "
                                                              "with E = sum_i tau_i tau_i^T / n_i = U diag(sigma) U^T "
                                                              "(unset: off)", check=positive)] = None,
                 init: Init = "sum", scale: Scale = 1.0, skip_losses: SkipLosses = False):
    """SWUDI with the authors' knobs: the filter is the product of the factors, then ``theta_f``.

    ``f_k = clamp(1 - exp(-lambda_k t_l), 0, 1)^gamma * lambda_k / (lambda_k + alpha) * consensus_k
    * 1[k <= K]`` with ``K = k`` or ``max(1, floor(d_in ratio + 0.999))`` and the layer's time
    ``t_l = t (lam_bar / lambda_max)^rho`` (``kappa`` gives ``t = kappa d_in / N_live`` first).
    ``filter_type="none"``: ``f_k = consensus_k 1[k <= K]`` (t, gamma, alpha, rho ignored). The
    consensus factor (:func:`consensus_factors`) applies when ``N_live > 1``; ``output_exp_time``
    then multiplies ``theta`` on the left by ``U diag(1 - exp(-sigma t_E)) U^T`` (:func:`output_exp_filter`,
    when ``d_out > 1``). At the defaults (rho 0, gamma 1, alpha 0, p 0, no t_E) this is the plain
    SWUDI filter ``(1 - exp(-lambda t)) 1[k <= K]``, computed the same way.

    ``alignment_rho > 0`` needs ``lam_bar``: :func:`~swudi_lab.merge.merge` and ``merge_files`` run
    a pre-pass over every merged 2-D layer (``lambda_max`` by :func:`lam_max`) and pass it as
    ``alignment_ref``; a direct call must give it. With ``gamma != 1``, ``f / lambda`` is 0 at or below
    the estimator's tolerance ``max(1e-8, d eps lambda_max)`` (the authors divide by ``max(lambda,
    1e-8)`` there; ``D q_k`` is round-off on those directions either way).
    """
    if isinstance(taus, LowRankTasks) and (consensus_power > 0 or output_exp_time is not None):
        taus = taus.dense()  # the consensus factor and the output filter read every tau_i
    d_out = taus.shape[1]
    neutral = (filter_type == "exponential" and alignment_rho == 0 and filter_gamma == 1 and tikhonov_alpha == 0
               and consensus_power == 0 and output_exp_time is None)

    def build(layer):
        eig, n_live, d_in = layer.eig, layer.n_live, layer.d_in
        if neutral:  # the plain SWUDI filter, exactly as before the knobs existed
            tt, kk = _time(t, kappa, d_in, n_live)
            return swudi(tt, k=k, ratio=None if k is not None else ratio), {"t": tt, "kappa": kk}
        K = k if k is not None else swudi_count(d_in, ratio)
        factors, extra = [], {"filter_type": filter_type}
        if filter_type == "exponential":
            tt, _ = _time(t, kappa, d_in, n_live)
            if alignment_rho > 0:
                if alignment_ref is None:
                    raise ValueError("alignment_rho > 0 needs alignment_ref (lam_bar, the geometric mean of every "
                                     "2-D layer's lambda_max): merge() and merge_files() compute it in a pre-pass; "
                                     "a per-layer call must pass it")
                top = max(float(eig.values[0]), EIGEN_FLOOR)
                tt = tt * (alignment_ref / top) ** alignment_rho
                extra.update(lam_max=top, alignment_ref=alignment_ref)
            factors.append(exponential_filter(tt) if filter_gamma == 1 else _powered_exponential(tt, filter_gamma))
            if tikhonov_alpha > 0:
                factors.append(tikhonov(tikhonov_alpha))
            extra.update(t=tt, kappa=time_kappa(tt, d_in, n_live))
        if consensus_power > 0 and n_live > 1:
            c = consensus_factors(taus, eig.vectors, consensus_power, consensus_floor)
            c = torch.cat([c, c.new_ones(d_in - c.numel())])  # subspace path: untouched directions get 1
            factors.append(_direction_filter("consensus", {"p": consensus_power, "phi": consensus_floor}, c))
            extra["consensus_min"] = float(c.min())
        factors.append(top_k(k=K))
        return functools.reduce(operator.mul, factors), extra

    post = output_exp_filter(taus, output_exp_time) if output_exp_time is not None and d_out > 1 else None
    return spectral_layer(taus, build, init=init, scale=scale, post=post, losses=not skip_losses)


# ----------------------------------------------------------------------------- SWUDI-A


def _wiener_noise(lam: torch.Tensor, K: int, how: str) -> float:
    """``nu^2`` of SWUDI-A's Wiener filter from the discarded eigenvalues ``lam[K:]`` (descending,
    clamped at 1e-8): their mean (``tail_mean``), the largest (``tail_first``) or their median
    (``tail_median``); the global median when nothing is discarded. Floored at 1e-8. Medians are the
    usual ones (the mean of the two middle values)."""
    lam = lam.detach().double().clamp_min(EIGEN_FLOOR).cpu().numpy()
    tail = lam[K:]
    if tail.size == 0:
        nu2 = np.median(lam)
    elif how == "tail_mean":
        nu2 = tail.mean()
    elif how == "tail_first":
        nu2 = tail[0]
    else:
        nu2 = np.median(tail)
    return max(float(nu2), EIGEN_FLOOR)


@register(
    "swudi_a",
    "SWUDI-A: top-K with K from a rank rule per layer (default participation_sqrt), f = 1 on kept directions "
    "(or filter_type exponential / wiener)",
    spectral=True,
)
def swudi_a(taus: torch.Tensor, *, name: str = "",
            rank_rule: Annotated[str, Doc("rank rule (swudi_lab.spectral.RANK_RULES, or cumvar_<frac>, loss_elbow_<frac>, "
                                          "loss_residual_<frac>, wudi_risk_<rho>)",
                                          check=_known_rank_rule)] = "participation_sqrt",
            min_rank: Annotated[int, Doc("lower clamp on K", check=positive)] = 1,
            max_rank_ratio: Annotated[float, Doc("upper clamp K <= max(min_rank, round(max_rank_ratio * d_in))",
                                                 check=unit_interval)] = 1.0,
            rank_scale: Annotated[float, Doc("then K <- clamp(round(K * rank_scale), min_rank, d_in)",
                                             check=positive)] = 1.0,
            filter_type: Annotated[str, Doc("filter on the kept directions: none (f = 1), exponential "
                                            "(1 - exp(-lambda t)) or wiener (lambda^p / (lambda^p + s nu^2))",
                                            choices=("none", "exponential", "wiener"))] = "none",
            t: Annotated[float, Doc("exponential time t (filter_type exponential)", check=nonnegative)] = 1e6,
            wiener_power: Annotated[float, Doc("Wiener exponent p", check=positive)] = 2.0,
            wiener_scale: Annotated[float, Doc("Wiener noise scale s: f = lambda^p / (lambda^p + s nu^2)",
                                               check=positive)] = 1.0,
            wiener_noise: Annotated[str, Doc("Wiener nu^2 from the discarded eigenvalues: their mean, the largest, "
                                             "or their median (the global median when none is discarded)",
                                             choices=("tail_mean", "tail_first", "tail_median"))] = "tail_mean",
            init: Init = "sum", scale: Scale = 1.0, skip_losses: SkipLosses = False):
    """``f = g(lambda) 1[k <= K]``, ``K = choose_rank(lambda, rank_rule, ...)`` with the layer's context.

    The rule sees ``rhs_energy = ||D q_k||^2``, ``start_energy = ||theta0 q_k||^2`` (computed only for
    the rules that need it), ``n_rows = N_live d_out`` (the stacked task matrix's rows) and
    ``d_out``. K is clamped to ``[min_rank, max(min_rank, round(max_rank_ratio d_in))]``, then
    ``K <- clamp(round(K rank_scale), min_rank, d_in)``. On the kept directions ``g = 1``
    (``filter_type="none"``, the default), ``g = 1 - exp(-lambda t)`` (``exponential``; t 1e6) or
    ``g = lambda^p / (lambda^p + s nu^2)`` (``wiener``; p 2, s 1, ``nu^2`` from the discarded
    eigenvalues per ``wiener_noise``, floored at 1e-8 before scaling); discarded directions get 0.
    """
    d_out, d_in = taus.shape[1:]
    rule = RANK_RULES.lookup(rank_rule)
    needs = set(getattr(rule, "needs", ())) | (set(inspect.signature(rule).parameters) & {"rhs_energy", "start_energy"})

    def build(layer):
        eig, n_live = layer.eig, layer.n_live
        rhs = layer.rhs_energy() if "rhs_energy" in needs else None
        start = layer.start_energy() if "start_energy" in needs else None
        K = choose_rank(eig.values, rank_rule, rhs_energy=rhs, start_energy=start, n_rows=n_live * d_out,
                        d_out=d_out, min_rank=min_rank, max_rank_ratio=max_rank_ratio, rank_scale=rank_scale)
        extra = {"rank_rule": rank_rule}
        if filter_type == "none":
            return top_k(k=K), extra
        extra["filter_type"] = filter_type
        if filter_type == "exponential":
            return swudi(t, k=K), extra
        nu2 = _wiener_noise(eig.values, K, wiener_noise)
        extra["nu2"] = nu2
        return wiener(wiener_power, wiener_scale * nu2) * top_k(k=K), extra

    return spectral_layer(taus, build, init=init, scale=scale, losses=not skip_losses)


# ----------------------------------------------------------------------------- OptMerge


def optmerge_problem(taus: torch.Tensor, rank: int | None = None):
    """OptMerge's per-expert targets and projectors for one layer (live experts only).

    ``K = rank`` or ``max(1, min(d_out, d_in) // N_live)``; ``target_i = SVD_K(tau_i - mean_j tau_j)
    + mean_j tau_j`` (top-K SVD); ``P_i = diag(s_K) V_K^T`` (K, d_in), the top-K singular values
    times the right singular vectors of ``tau_i``. Returns ``(targets (N, d_out, d_in),
    projectors (N, K, d_in), norms n_i (N,), K)``.
    """
    t, n = live_experts(taus)
    N, d_out, d_in = t.shape
    K = min(rank if rank is not None else max(1, min(d_out, d_in) // N), min(d_out, d_in))
    mean = t.mean(0)
    U, S, Vh = torch.linalg.svd(t - mean, full_matrices=False)
    targets = (U[..., :K] * S[:, None, :K]) @ Vh[:, :K, :] + mean
    _, S, Vh = torch.linalg.svd(t, full_matrices=False)
    projectors = S[:, :K, None] * Vh[:, :K, :]
    return targets, projectors, n, K


def optmerge_loss(theta: torch.Tensor, targets: torch.Tensor, projectors: torch.Tensor,
                  norms: torch.Tensor) -> torch.Tensor:
    """OptMerge's loss ``sum_i ||(theta - target_i) P_i^T||_F^2 / n_i`` (differentiable)."""
    residual = (theta - targets) @ projectors.transpose(1, 2)
    return (residual.pow(2).sum(dim=(1, 2)) / norms).sum()


@register(
    "optmerge",
    "OptMerge (the authors' WUDI v2 baseline): Adam on sum_i ||(theta - target_i) P_i^T||^2 / n_i, per-expert "
    "rank-K targets and projectors, lr 1e-5, 300 steps, from the sum init",
    spectral=True,
)
def optmerge(taus: torch.Tensor, *, name: str = "",
             lr: Annotated[float, Doc("Adam learning rate", check=positive)] = 1e-5,
             steps: Annotated[int, Doc("Adam steps", check=nonnegative)] = 300,
             rank: Annotated[int | None, Doc("per-expert rank K (default max(1, min(d_out, d_in) // N))",
                                             check=at_least_one)] = None,
             scale: Scale = 1.0):
    """OptMerge on one layer (:func:`optmerge_problem`, :func:`optmerge_loss`), Adam (betas 0.9,
    0.999, eps 1e-8) from ``theta0 = sum_i tau_i``.

    The loss is quadratic: its gradient is ``2 (theta C' - D')`` with ``C' = sum_i P_i^T P_i / n_i`` and
    ``D' = sum_i target_i P_i^T P_i / n_i``, so Adam runs on that exact gradient
    (:func:`~swudi_lab.spectral.iterative.adam_wudi`), the iterates of autograd on the explicit loss.
    With one expert the target is the expert and the start is its minimizer: it returns the expert.
    """
    taus = _dense(taus)  # per-expert SVD targets of the dense tau_i
    if live_count(taus) == 0:
        return _zero_layer(taus)
    targets, P, n, K = optmerge_problem(taus, rank)
    C, D = targets.new_zeros(P.shape[2], P.shape[2]), torch.zeros_like(targets[0])
    for target, p, n_i in zip(targets, P, n):  # one expert at a time: no (N, d_in, d_in) stack
        G = p.T @ p / n_i  # P_i^T P_i / n_i
        G = 0.5 * (G + G.T)
        C += G
        D += target @ G
    theta0 = taus.sum(0)
    with torch.enable_grad():  # the engine runs under no_grad
        theta = adam_wudi(C, D, theta0, lr=lr, steps=steps).final
    info = {"n_live": int(n.numel()), "rank": K, "lr": lr, "steps": steps,
            "loss_before": float(optmerge_loss(theta0, targets, P, n)),
            "loss_after": float(optmerge_loss(theta, targets, P, n))}
    return scale * theta, info
