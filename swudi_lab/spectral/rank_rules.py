"""Rank rules: choose the number K of kept eigen-directions of C from its spectrum (SWUDI-A).

SWUDI-A keeps, per layer, the K largest eigenvalues of ``C = V diag(lambda) V^T`` with f = 1 and
drops the rest (docs/design.md). ``C = T^T T`` for the stacked, normalized task matrix
``T = [tau_1 / sqrt(n_1); ...; tau_N / sqrt(n_N)]``, so ``sigma_k = sqrt(lambda_k)`` are T's
singular values. Each rule maps the spectrum (descending, clipped at 0) to K:

=====================  =====================================================================
rule                   K
=====================  =====================================================================
participation_sqrt     ceil((sum sqrt lambda)^2 / sum lambda)     (SWUDI-A default)
participation          ceil((sum lambda)^2 / sum lambda^2)
entropy                ceil(exp(H(p))), p ∝ sqrt(lambda)          (Roy & Vetterli effective rank)
entropy_sq             ceil(exp(H(p))), p ∝ lambda
stable_rank            ceil(sum lambda / lambda_max)
cumvar_<frac>          smallest K with sum_{k<=K} lambda / sum lambda >= frac
gavish_donoho          #{sigma > omega(beta) median(sigma)}       (optimal hard threshold)
wudi_risk              argmin_K  sum_{k>K} g_k / sum g + sum_{k<=K} h_k / sum h
loss_elbow             kneedle elbow of sum_{k<=K} g_k / sum g versus K / d
=====================  =====================================================================

with ``g_k = ||D q_k||^2 / lambda_k`` (the loss reduction fitting direction k achieves) and
``h_k = ||D q_k||^2 / lambda_k^2`` (its contribution to the squared solution norm).

A rule is ``rule(lam_desc, **context) -> int`` (``lam_desc`` a float64 1-D tensor, descending,
>= 0, not all zero; context keys ``rhs_energy``, ``aspect``). Adding one is one function under
``@rank_rule("name")`` (:data:`RANK_RULES`); :func:`choose_rank` validates, sorts and clamps.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..registry import Registry
from .estimator import numerical_rank_tolerance

__all__ = ["RANK_RULES", "rank_rule", "choose_rank", "cumvar"]

RANK_RULES: Registry = Registry("rank rule")
"""Rank rules by name, in registration order; any ``cumvar_<frac>`` resolves too (a family)."""


def rank_rule(name: str, *, needs_rhs_energy: bool = False):
    """Decorator: register ``rule(lam_desc, **context) -> K`` under ``name``.

    ``needs_rhs_energy``: the rule reads ``rhs_energy[k] = ||D q_k||^2`` and cannot run without it.
    """

    def deco(fn):
        fn.needs_rhs_energy = needs_rhs_energy
        RANK_RULES.add(name, fn)
        return fn

    return deco

_TOL = 1e-9  # ceil(3.0000000000000004) must be 3, not 4


def _ceil(x: float) -> int:
    """``ceil`` that forgives floating round-off just above an integer."""
    return math.ceil(x - _TOL * max(1.0, abs(x)))


@rank_rule("participation_sqrt")
def participation_sqrt(lam: torch.Tensor, **context) -> int:
    """``K = ceil((sum_k sqrt lambda_k)^2 / sum_k lambda_k)``: participation ratio of sigma = sqrt(lambda).

    Equals d for a flat spectrum and 1 for a single nonzero eigenvalue. SWUDI-A's default.
    """
    s = lam.sqrt()
    return _ceil(float(s.sum() ** 2 / lam.sum()))


@rank_rule("participation")
def participation(lam: torch.Tensor, **context) -> int:
    """``K = ceil((sum_k lambda_k)^2 / sum_k lambda_k^2)``: participation ratio of the eigenvalues."""
    return _ceil(float(lam.sum() ** 2 / lam.pow(2).sum()))


def _entropy_rank(weights: torch.Tensor) -> int:
    p = weights / weights.sum()
    p = p[p > 0]
    return _ceil(math.exp(float(-(p * p.log()).sum())))


@rank_rule("entropy")
def entropy(lam: torch.Tensor, **context) -> int:
    """``K = ceil(exp(-sum_k p_k log p_k))`` with ``p_k = sqrt(lambda_k) / sum_j sqrt(lambda_j)``.

    Roy & Vetterli (2007) effective rank of the singular values ``sigma_k = sqrt(lambda_k)`` of
    the stacked task matrix.
    """
    return _entropy_rank(lam.sqrt())


@rank_rule("entropy_sq")
def entropy_sq(lam: torch.Tensor, **context) -> int:
    """``K = ceil(exp(-sum_k p_k log p_k))`` with ``p_k = lambda_k / sum_j lambda_j``."""
    return _entropy_rank(lam)


@rank_rule("stable_rank")
def stable_rank(lam: torch.Tensor, **context) -> int:
    """``K = ceil(sum_k lambda_k / lambda_max)`` (stable rank ``||T||_F^2 / ||T||_2^2``)."""
    return _ceil(float(lam.sum() / lam[0]))


def cumvar(frac: float) -> Callable[..., int]:
    """Rule: smallest K with ``sum_{k<=K} lambda_k / sum_k lambda_k >= frac``, frac in (0, 1]."""
    try:
        frac = float(frac)
    except (TypeError, ValueError):
        raise ValueError(f"cumvar fraction must be a number in (0, 1], got {frac!r}") from None
    if not (0 < frac <= 1):
        raise ValueError(f"cumvar fraction must be in (0, 1], got {frac!r}")

    def rule(lam: torch.Tensor, **context) -> int:
        share = lam.cumsum(0) / lam.sum()
        return int((share < frac - _TOL).sum()) + 1

    rule.__name__ = f"cumvar_{frac:g}"
    rule.__doc__ = cumvar.__doc__.replace("Rule", f"Rule (frac = {frac:g})")
    return rule


def gavish_donoho_omega(beta: float) -> float:
    """``omega(beta) ~= 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43`` (Gavish & Donoho 2014)."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


@rank_rule("gavish_donoho")
def gavish_donoho(lam: torch.Tensor, aspect: float | None = None, **context) -> int:
    """Optimal hard threshold for unknown noise: ``K = #{sigma_k > omega(beta) median(sigma)}``.

    ``sigma_k = sqrt(lambda_k)``; ``beta = aspect`` in (0, 1] is the aspect ratio min/max of the
    matrix whose singular values these are (default 1.0, ``omega(1) = 2.86``). The median runs over
    the values given, so pass the ``min(m, n)`` singular values: for a merge layer with
    ``d_in <= N d_out`` that is all of C's eigenvalues.
    """
    beta = 1.0 if aspect is None else float(aspect)
    if not (0 < beta <= 1):
        raise ValueError(f"aspect must be in (0, 1] (min/max of the matrix shape), got {aspect!r}")
    sigma = lam.sqrt()
    tau = gavish_donoho_omega(beta) * float(sigma.median())
    return int((sigma > tau).sum())


def _gain(lam: torch.Tensor, rhs_energy: torch.Tensor | None, rule: str, required: bool):
    """``g_k = rhs_energy_k / lambda_k`` on directions above the estimator's tolerance (others 0)."""
    if rhs_energy is None:
        if required:
            raise ValueError(f"rank rule {rule!r} needs rhs_energy (rhs_energy[k] = ||D q_k||^2)")
        return lam.clone(), None
    live = lam > numerical_rank_tolerance(lam)  # numerically null directions carry no fit and no norm
    safe = torch.where(live, lam, torch.ones_like(lam))
    g = torch.where(live, rhs_energy / safe, torch.zeros_like(lam))
    h = torch.where(live, rhs_energy / safe**2, torch.zeros_like(lam))
    return g, h


@rank_rule("wudi_risk", needs_rhs_energy=True)
def wudi_risk(lam: torch.Tensor, rhs_energy: torch.Tensor | None = None, **context) -> int:
    """``K = argmin_K risk(K)``, ``risk(K) = sum_{k>K} g_k / sum g + sum_{k<=K} h_k / sum h``.

    ``g_k = ||D q_k||^2 / lambda_k`` (proxy fit left undone when direction k is dropped) and
    ``h_k = ||D q_k||^2 / lambda_k^2`` (relative squared solution norm when it is kept); both
    terms are scale-free. Needs ``rhs_energy[k] = ||D q_k||^2``. Directions with
    ``lambda_k <= max(1e-8, d eps lambda_max)`` (the estimator's tolerance) count as null. Ties pick the smallest K.
    """
    g, h = _gain(lam, rhs_energy, "wudi_risk", required=True)
    if g.sum() <= 0:
        return 1  # nothing to fit
    K = torch.arange(1, lam.numel() + 1)
    undone = 1 - g.cumsum(0) / g.sum()  # sum_{k>K} g / sum g, for K = 1..d
    norm = h.cumsum(0) / h.sum()
    risk = undone + norm
    return int(K[torch.argmin(risk)])


@rank_rule("loss_elbow")
def loss_elbow(lam: torch.Tensor, rhs_energy: torch.Tensor | None = None, **context) -> int:
    """Kneedle elbow: ``K = argmax_K (sum_{k<=K} g_k / sum g - K / d)``.

    The curve ``(K / d, sum_{k<=K} g_k / sum g)`` of the achieved loss fraction runs from (0, 0)
    to (1, 1); K is the point farthest above that chord. ``g_k = ||D q_k||^2 / lambda_k`` when
    ``rhs_energy`` is given, else ``g_k = lambda_k``. Ties pick the smallest K.
    """
    g, _ = _gain(lam, rhs_energy, "loss_elbow", required=False)
    if g.sum() <= 0:
        return 1
    d = lam.numel()
    K = torch.arange(1, d + 1, dtype=lam.dtype)
    above = g.cumsum(0) / g.sum() - K / d
    return int(torch.argmax(above)) + 1


for _frac in (0.9, 0.95, 0.99):
    RANK_RULES.add(f"cumvar_{_frac:g}", cumvar(_frac))
RANK_RULES.add_family("cumvar", cumvar)


def _vector(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def choose_rank(lam, rule: str = "participation_sqrt", *, rhs_energy=None, aspect=None,
                min_rank: int = 1, max_rank_ratio: float = 1.0) -> int:
    """Number K of kept eigen-directions for SWUDI-A, from the spectrum ``lam`` of C.

    Args:
        lam: (d,) eigenvalues of C in any order (torch or numpy); negatives are clipped to 0.
        rule: a name in :data:`RANK_RULES` or ``"cumvar_<frac>"``.
        rhs_energy: (d,) ``||D q_k||^2`` paired with ``lam[k]`` (needed by ``wudi_risk``,
            optional for ``loss_elbow``); sorted together with ``lam``.
        aspect: aspect ratio beta in (0, 1] for ``gavish_donoho`` (default 1).
        min_rank: lower clamp >= 1. max_rank_ratio: upper clamp ``ceil(max_rank_ratio d)``, in (0, 1].

    Returns K in ``[min_rank, ceil(max_rank_ratio d)]`` (the upper clamp wins if they
    conflict), always within [1, d]. An all-zero spectrum returns ``min(min_rank, d)``.
    """
    lam = _vector("lam", lam)
    if not isinstance(rule, str):
        raise ValueError(f"rule must be a rule name, got {rule!r}")
    fn = RANK_RULES.lookup(rule)
    if isinstance(min_rank, bool) or not float(min_rank).is_integer() or min_rank < 1:
        raise ValueError(f"min_rank must be an integer >= 1, got {min_rank!r}")
    try:
        ratio = float(max_rank_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"max_rank_ratio must be a number in (0, 1], got {max_rank_ratio!r}") from None
    if not (0 < ratio <= 1):
        raise ValueError(f"max_rank_ratio must be in (0, 1], got {max_rank_ratio!r}")
    if aspect is not None and not (0 < float(aspect) <= 1):
        raise ValueError(f"aspect must be in (0, 1], got {aspect!r}")
    order = torch.argsort(lam, descending=True, stable=True)
    lam = lam[order].clamp_min(0)
    if rhs_energy is not None:
        rhs_energy = _vector("rhs_energy", rhs_energy)
        if rhs_energy.shape != lam.shape:
            raise ValueError(f"rhs_energy must have lam's shape {tuple(lam.shape)}, "
                             f"got {tuple(rhs_energy.shape)}")
        if (rhs_energy < 0).any():
            raise ValueError("rhs_energy must be >= 0 (it is ||D q_k||^2)")
        rhs_energy = rhs_energy[order]
    if rhs_energy is None and getattr(fn, "needs_rhs_energy", False):
        raise ValueError(f"rank rule {rule!r} needs rhs_energy (rhs_energy[k] = ||D q_k||^2)")
    d = lam.numel()
    upper = min(d, max(1, _ceil(ratio * d)))
    if lam.sum() <= 0:
        K = int(min_rank)
    else:
        K = max(int(fn(lam, rhs_energy=rhs_energy, aspect=aspect)), int(min_rank))
    return max(1, min(K, upper))
