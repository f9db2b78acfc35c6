"""Rank rules: choose the number K of kept eigen-directions of C from its spectrum (SWUDI-A).

SWUDI-A keeps, per layer, the K largest eigenvalues of ``C = V diag(lambda) V^T`` and drops the
rest (docs/design.md). ``C = T^T T`` for the stacked, normalized task matrix
``T = [tau_1 / sqrt(n_1); ...; tau_N / sqrt(n_N)]`` (``N_live d_out`` rows, ``d_in`` columns), so
``sigma_k = sqrt(lambda_k)`` are T's singular values. Each rule maps the spectrum (descending) to K.

**The authors' rules, under their names** (arXiv 2606.07289 and its public code; ``lambda``
descending, ``D2 = d_in``, ``D1 = d_out``):

==============================  ==================================================================
rule                            K
==============================  ==================================================================
none                            D2 (keep everything)
participation_sqrt              ceil((sum sqrt lambda)^2 / sum lambda)            (SWUDI-A default)
participation                   ceil((sum lambda)^2 / sum lambda^2)
stable_rank                     ceil(sum lambda^2 / lambda_1^2)
entropy                         ceil(exp H(p)), p = lambda / sum lambda
entropy_sq                      ceil(exp H(p)), p = lambda^2 / sum lambda^2
participation_sqrt_c2           K0 = participation_sqrt; if K0 >= 2, ceil((1 + c^2) K0) with c^2 the
                                population variance of sqrt(lambda_1..lambda_K0) over their squared mean
participation_sqrt_c2_half      the same with (1 + c^2 / 2)
participation_sqrt_plus         ceil((sum sqrt lambda)^2 / sum lambda (1 + 1 / ln(D2 + e)))
cumvar_<frac>                   smallest K with sum_{k<=K} lambda / sum lambda >= frac
d_aware_participation_sqrt      ceil((sum sqrt e)^2 / sum e),  e_k = ||D q_k||^2 / lambda_k^2
d_aware_cumvar                  smallest K with sum_{k<=K} e >= 0.99 sum e
d_aware_entropy                 ceil(exp H(e / sum e))
loss_elbow[_<frac>]             earliest K with L_fit(K) / L_fit(0) <= frac (default 0.01)
loss_residual_<frac>            earliest K with L_fit(K) / L_fit(0) <= 1 - frac
wudi_risk[_<rho>]               argmin_K L_fit(K) + rho L_norm(K)  (rho > 0, default 1)
gavish_donoho_authors           the authors' approximation of the optimal hard threshold (below)
==============================  ==================================================================

with ``a_k = ||theta0 q_k||^2`` (start energy), ``e'_k = ||D q_k||^2`` (right-hand-side energy),
``l_k = lambda_k^2 a_k + e'_k``, ``L_fit(K) = sum_{k>K} l_k`` and
``L_norm(K) = sum_{k<=K} e'_k / lambda_k^2 + sum_{k>K} a_k``. Where a rule divides by lambda it
uses ``max(lambda, 1e-8)``, the authors' clamp. ``gavish_donoho_authors``: ``beta = min/max`` of
the layer's ``(D1, D2)``; ``mu = sqrt(max((1 - beta)^2 + beta, 1e-3))`` for ``beta < 0.9999``, else
``sqrt(2 + sqrt 3)``; ``lambda*(beta) = sqrt(2 (beta + 1) + 8 beta / ((beta + 1) + sqrt(beta^2 + 14 beta
+ 1)))``; ``K = max(1, #{sigma_k > (lambda* / mu) median(sigma)})`` over all D2 values
``sigma_k = sqrt(max(lambda_k, 1e-8))``.

**Textbook rule.** ``gavish_donoho``: Gavish & Donoho's (2014) optimal hard threshold for unknown
noise, ``K = #{sigma_k > omega(beta) median(sigma)}`` on the ``min(d_in, N_live d_out)`` singular
values of T, ``beta`` its aspect ratio, the usual median (the mean of the two middle values) and
their cubic approximation of ``omega``.

**swudi_lab's own variants**, under distinct names (each docstring says how it differs):
``entropy_sv`` (entropy of ``p ∝ sqrt(lambda)``), ``stable_rank_sv`` (``sum lambda / lambda_1``),
``loss_kneedle`` (kneedle elbow of the achieved-fit curve) and ``wudi_risk_scalefree``
(normalized fit left undone plus normalized solution norm).

Numerics: the spectrum is clipped at 0 before any rule sees it. The authors clamp at 1e-8 first;
the two agree for every eigenvalue >= 1e-8, and differ (by at most 1e-4 per such eigenvalue in
``sum sqrt lambda``) only on a rank-deficient C, e.g. ``d_in > N d_out``.

A rule is ``rule(lam_desc, **context) -> int`` (``lam_desc`` a float64 1-D tensor, descending,
>= 0, not all zero). Context keys, each paired with ``lam`` and sorted with it: ``rhs_energy``
(``e'_k``), ``start_energy`` (``a_k``); and the shapes ``n_rows`` (``N_live d_out``, the stacked
matrix's rows), ``d_out`` and ``aspect``. Adding one is one function under ``@rank_rule("name",
needs=(...))`` (:data:`RANK_RULES`); :func:`choose_rank` validates, sorts, calls and clamps;
:func:`rank_context` computes the context of one layer.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..registry import Registry, checked_count, checked_number
from .estimator import EIGEN_FLOOR, eigh, numerical_rank_tolerance

__all__ = ["RANK_RULES", "CONTEXT_KEYS", "rank_rule", "choose_rank", "rank_context", "cumvar", "loss_elbow",
           "loss_residual", "wudi_risk", "gavish_donoho_omega"]

RANK_RULES: Registry = Registry("rank rule")
"""Rank rules by name, in registration order; ``cumvar_<frac>``, ``loss_elbow_<frac>``,
``loss_residual_<frac>`` and ``wudi_risk_<rho>`` resolve too (families)."""

CONTEXT_KEYS = ("rhs_energy", "start_energy", "n_rows", "d_out", "aspect")
"""What a rule may read besides the spectrum (see the module docstring)."""


def rank_rule(name: str, *, needs: tuple[str, ...] = ()):
    """Decorator: register ``rule(lam_desc, **context) -> K`` under ``name``.

    ``needs``: context keys the rule cannot run without (``rhs_energy``, ``start_energy``,
    ``d_out``, ...); :func:`choose_rank` raises a ``ValueError`` naming them when missing, and
    the explorers offer the rule only when they have them.
    """
    unknown = set(needs) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"rank rule {name!r}: unknown context key(s) {sorted(unknown)}; known: {CONTEXT_KEYS}")

    def deco(fn):
        fn.needs = tuple(needs)
        RANK_RULES.add(name, fn)
        return fn

    return deco


_TOL = 1e-9  # ceil(3.0000000000000004) must be 3, not 4


def _ceil(x: float) -> int:
    """``ceil`` that forgives floating round-off just above an integer."""
    return math.ceil(x - _TOL * max(1.0, abs(x)))


def _floored(lam: torch.Tensor) -> torch.Tensor:
    """``max(lambda, 1e-8)``: the authors' clamp, used where a rule divides by lambda."""
    return lam.clamp_min(EIGEN_FLOOR)


def _median(x: torch.Tensor) -> float:
    """The usual median: the mean of the two middle values for an even count (not torch's lower one)."""
    return float(np.median(x.numpy()))


def _entropy_rank(weights: torch.Tensor) -> int:
    p = weights / weights.sum()
    p = p[p > 0]
    return _ceil(math.exp(float(-(p * p.log()).sum())))


def _cumulative_count(w: torch.Tensor, frac: float) -> int:
    """Smallest K with ``sum_{k<=K} w_k >= frac sum w`` (w in lambda-descending order)."""
    share = w.cumsum(0) / w.sum()
    return min(int((share < frac - _TOL).sum()) + 1, w.numel())


# ----------------------------------------------------------------------------- spectrum rules


@rank_rule("none")
def none_rule(lam: torch.Tensor, **context) -> int:
    """``K = D2 = d_in``: keep every direction (SWUDI-A then reduces to its filter on the full spectrum)."""
    return lam.numel()


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


@rank_rule("stable_rank")
def stable_rank(lam: torch.Tensor, **context) -> int:
    """``K = ceil(sum_k lambda_k^2 / lambda_1^2)``: the stable rank ``||C||_F^2 / ||C||_2^2`` of C (authors')."""
    return _ceil(float(lam.pow(2).sum() / lam[0] ** 2))


@rank_rule("stable_rank_sv")
def stable_rank_sv(lam: torch.Tensor, **context) -> int:
    """swudi_lab's variant: ``K = ceil(sum_k lambda_k / lambda_1)``, the stable rank ``||T||_F^2 / ||T||_2^2``
    of the stacked task matrix (the authors' formula on ``sigma = sqrt(lambda)``, not on lambda).

    Always >= ``stable_rank`` (it was called ``stable_rank`` here before the authors' definition took the name).
    """
    return _ceil(float(lam.sum() / lam[0]))


@rank_rule("entropy")
def entropy(lam: torch.Tensor, **context) -> int:
    """``K = ceil(exp(-sum_k p_k log p_k))`` with ``p_k = lambda_k / sum_j lambda_j`` (authors')."""
    return _entropy_rank(lam)


@rank_rule("entropy_sq")
def entropy_sq(lam: torch.Tensor, **context) -> int:
    """``K = ceil(exp(-sum_k p_k log p_k))`` with ``p_k = lambda_k^2 / sum_j lambda_j^2`` (authors')."""
    return _entropy_rank(lam.pow(2))


@rank_rule("entropy_sv")
def entropy_sv(lam: torch.Tensor, **context) -> int:
    """swudi_lab's variant: ``K = ceil(exp H(p))`` with ``p_k = sqrt(lambda_k) / sum_j sqrt(lambda_j)``.

    Roy & Vetterli's (2007) effective rank of the singular values ``sigma = sqrt(lambda)`` of the
    stacked task matrix; the authors' ``entropy`` weights by lambda = sigma^2 (fewer directions).
    It was called ``entropy`` here before the authors' definition took the name.
    """
    return _entropy_rank(lam.sqrt())


def _c2_rank(lam: torch.Tensor, weight: float) -> int:
    K0 = participation_sqrt(lam)
    if K0 < 2:
        return K0
    s = lam[:K0].sqrt()
    c2 = float(s.var(unbiased=False) / s.mean() ** 2)  # population variance over the squared mean
    return _ceil((1 + weight * c2) * K0)


@rank_rule("participation_sqrt_c2")
def participation_sqrt_c2(lam: torch.Tensor, **context) -> int:
    """``K0 = participation_sqrt``; if ``K0 >= 2``, ``K = ceil((1 + c^2) K0)`` with
    ``c^2 = Var(sqrt lambda_1..K0) / mean(sqrt lambda_1..K0)^2`` (population variance); else ``K0``."""
    return _c2_rank(lam, 1.0)


@rank_rule("participation_sqrt_c2_half")
def participation_sqrt_c2_half(lam: torch.Tensor, **context) -> int:
    """As ``participation_sqrt_c2`` with ``(1 + c^2 / 2)``."""
    return _c2_rank(lam, 0.5)


@rank_rule("participation_sqrt_plus")
def participation_sqrt_plus(lam: torch.Tensor, **context) -> int:
    """``K = ceil((sum sqrt lambda)^2 / sum lambda * (1 + 1 / ln(D2 + e)))``."""
    s = lam.sqrt()
    return _ceil(float(s.sum() ** 2 / lam.sum()) * (1 + 1 / math.log(lam.numel() + math.e)))


def _fraction(family: str, value, *, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{family} fraction must be a number in {interval}, got {value!r}") from None
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(f"{family} fraction must be in {interval}, got {value!r}")
    return v


def cumvar(frac: float) -> Callable[..., int]:
    """Rule: smallest K with ``sum_{k<=K} lambda_k / sum_k lambda_k >= frac``, frac in (0, 1]."""
    frac = _fraction("cumvar", frac, lo=0, hi=1, lo_open=True, hi_open=False)

    def rule(lam: torch.Tensor, **context) -> int:
        return _cumulative_count(lam, frac)

    rule.__name__ = f"cumvar_{frac:g}"
    rule.__doc__ = cumvar.__doc__.replace("Rule", f"Rule (frac = {frac:g})")
    rule.needs = ()
    return rule


# ----------------------------------------------------------------------------- D-aware rules


def _d_energy(lam: torch.Tensor, rhs_energy: torch.Tensor) -> torch.Tensor:
    """``e_k = ||D q_k||^2 / max(lambda_k, 1e-8)^2``: the energy of the closed form along q_k."""
    return rhs_energy / _floored(lam) ** 2


@rank_rule("d_aware_participation_sqrt", needs=("rhs_energy",))
def d_aware_participation_sqrt(lam: torch.Tensor, rhs_energy=None, **context) -> int:
    """``K = ceil((sum_k sqrt e_k)^2 / sum_k e_k)``, ``e_k = ||D q_k||^2 / lambda_k^2``."""
    e = _d_energy(lam, rhs_energy)
    if e.sum() <= 0:
        return 1
    return _ceil(float(e.sqrt().sum() ** 2 / e.sum()))


@rank_rule("d_aware_cumvar", needs=("rhs_energy",))
def d_aware_cumvar(lam: torch.Tensor, rhs_energy=None, **context) -> int:
    """Smallest K with ``sum_{k<=K} e_k >= 0.99 sum_k e_k`` (lambda-descending order), ``e_k = ||D q_k||^2 / lambda_k^2``."""
    e = _d_energy(lam, rhs_energy)
    if e.sum() <= 0:
        return 1
    return _cumulative_count(e, 0.99)


@rank_rule("d_aware_entropy", needs=("rhs_energy",))
def d_aware_entropy(lam: torch.Tensor, rhs_energy=None, **context) -> int:
    """``K = ceil(exp H(e / sum e))``, ``e_k = ||D q_k||^2 / lambda_k^2``."""
    e = _d_energy(lam, rhs_energy)
    if e.sum() <= 0:
        return 1
    return _entropy_rank(e)


# ----------------------------------------------------------------------------- loss-based rules


def _fit_and_norm(lam, rhs_energy, start_energy):
    """``(L_fit(K), L_norm(K))`` for K = 0..d: ``l_k = lambda_k^2 a_k + e'_k``,
    ``L_fit(K) = sum_{k>K} l_k``, ``L_norm(K) = sum_{k<=K} e'_k / lambda_k^2 + sum_{k>K} a_k``."""
    lam = _floored(lam)
    ell = lam.pow(2) * start_energy + rhs_energy
    zero = lam.new_zeros(1)
    tail = lambda x: torch.cat([x.flip(0).cumsum(0).flip(0), zero])  # noqa: E731  sum_{k>K}, K = 0..d
    head = lambda x: torch.cat([zero, x.cumsum(0)])  # noqa: E731  sum_{k<=K}, K = 0..d
    return tail(ell), head(rhs_energy / lam.pow(2)) + tail(start_energy)


def _earliest_fit(lam, rhs_energy, start_energy, threshold: float) -> int:
    fit, _ = _fit_and_norm(lam, rhs_energy, start_energy)
    if fit[0] <= 0:
        return 1  # nothing to fit
    ok = torch.nonzero(fit[1:] / fit[0] <= threshold + _TOL).flatten()  # K = 1..d; L_fit(d) = 0 always qualifies
    return int(ok[0]) + 1


def loss_elbow(frac: float = 0.01) -> Callable[..., int]:
    """Rule: the earliest K with ``L_fit(K) / L_fit(0) <= frac`` (frac in [0, 1), default 0.01):
    keep directions until all but ``frac`` of the fit term ``sum_k lambda_k^2 a_k + ||D q_k||^2`` is
    covered. Needs ``rhs_energy`` and ``start_energy``."""
    frac = _fraction("loss_elbow", frac, lo=0, hi=1, lo_open=False, hi_open=True)

    def rule(lam, rhs_energy=None, start_energy=None, **context) -> int:
        return _earliest_fit(lam, rhs_energy, start_energy, frac)

    rule.__name__ = "loss_elbow" if frac == 0.01 else f"loss_elbow_{frac:g}"
    rule.__doc__ = loss_elbow.__doc__.replace("Rule", f"Rule (frac = {frac:g})")
    rule.needs = ("rhs_energy", "start_energy")
    return rule


def loss_residual(frac: float) -> Callable[..., int]:
    """Rule: the earliest K with ``L_fit(K) / L_fit(0) <= 1 - frac`` (frac in (0, 1]): a share
    ``frac`` of the fit term is covered. ``loss_residual_0.99`` is ``loss_elbow``."""
    frac = _fraction("loss_residual", frac, lo=0, hi=1, lo_open=True, hi_open=False)

    def rule(lam, rhs_energy=None, start_energy=None, **context) -> int:
        return _earliest_fit(lam, rhs_energy, start_energy, 1 - frac)

    rule.__name__ = f"loss_residual_{frac:g}"
    rule.__doc__ = loss_residual.__doc__.replace("Rule", f"Rule (frac = {frac:g})")
    rule.needs = ("rhs_energy", "start_energy")
    return rule


def wudi_risk(rho: float = 1.0) -> Callable[..., int]:
    """Rule: ``K = argmin_{K=1..d} L_fit(K) + rho L_norm(K)`` (rho > 0, default 1; ties: the smallest K).

    ``L_fit(K) = sum_{k>K} lambda_k^2 a_k + ||D q_k||^2`` is the fit left undone by dropping the
    directions after K; ``L_norm(K) = sum_{k<=K} ||D q_k||^2 / lambda_k^2 + sum_{k>K} a_k`` the
    squared norm of the result (closed form on the kept directions, start on the others). Not
    scale free (compare ``wudi_risk_scalefree``). Needs ``rhs_energy`` and ``start_energy``.
    """
    rho = checked_number("wudi_risk rho", rho)

    def rule(lam, rhs_energy=None, start_energy=None, **context) -> int:
        fit, norm = _fit_and_norm(lam, rhs_energy, start_energy)
        risk = fit[1:] + rho * norm[1:]  # K = 1..d
        return int(torch.argmin(risk)) + 1

    rule.__name__ = "wudi_risk" if rho == 1.0 else f"wudi_risk_{rho:g}"
    rule.__doc__ = wudi_risk.__doc__.replace("Rule", f"Rule (rho = {rho:g})")
    rule.needs = ("rhs_energy", "start_energy")
    return rule


def _gain(lam: torch.Tensor, rhs_energy: torch.Tensor | None):
    """``g_k = rhs_energy_k / lambda_k``, ``h_k = rhs_energy_k / lambda_k^2`` on directions above
    the estimator's tolerance (others 0); without rhs_energy ``g = lambda``."""
    if rhs_energy is None:
        return lam.clone(), None
    live = lam > numerical_rank_tolerance(lam)  # numerically null directions carry no fit and no norm
    safe = torch.where(live, lam, torch.ones_like(lam))
    g = torch.where(live, rhs_energy / safe, torch.zeros_like(lam))
    h = torch.where(live, rhs_energy / safe**2, torch.zeros_like(lam))
    return g, h


@rank_rule("wudi_risk_scalefree", needs=("rhs_energy",))
def wudi_risk_scalefree(lam: torch.Tensor, rhs_energy: torch.Tensor | None = None, **context) -> int:
    """swudi_lab's variant: ``K = argmin_K sum_{k>K} g_k / sum g + sum_{k<=K} h_k / sum h``.

    ``g_k = ||D q_k||^2 / lambda_k`` (proxy fit left undone when direction k is dropped) and
    ``h_k = ||D q_k||^2 / lambda_k^2`` (relative squared solution norm when it is kept). Unlike the
    authors' ``wudi_risk`` both terms are normalized (scale free, no rho), the fit counts
    ``e'_k / lambda_k`` instead of ``lambda_k^2 a_k + e'_k`` and the start ``theta0`` plays no part.
    Directions with ``lambda_k <= max(1e-8, d eps lambda_max)`` count as null. Ties pick the
    smallest K. It was called ``wudi_risk`` here before the authors' definition took the name.
    """
    g, h = _gain(lam, rhs_energy)
    if g.sum() <= 0:
        return 1  # nothing to fit
    K = torch.arange(1, lam.numel() + 1)
    undone = 1 - g.cumsum(0) / g.sum()  # sum_{k>K} g / sum g, for K = 1..d
    norm = h.cumsum(0) / h.sum()
    return int(K[torch.argmin(undone + norm)])


@rank_rule("loss_kneedle")
def loss_kneedle(lam: torch.Tensor, rhs_energy: torch.Tensor | None = None, **context) -> int:
    """swudi_lab's variant: kneedle elbow ``K = argmax_K (sum_{k<=K} g_k / sum g - K / d)``.

    The curve ``(K / d, sum_{k<=K} g_k / sum g)`` of the achieved loss fraction runs from (0, 0)
    to (1, 1); K is the point farthest above that chord. ``g_k = ||D q_k||^2 / lambda_k`` when
    ``rhs_energy`` is given, else ``g_k = lambda_k``. Ties pick the smallest K. Unlike the authors'
    ``loss_elbow`` (a fixed 1 % of the fit term left) it has no threshold; it was called
    ``loss_elbow`` here before the authors' definition took the name.
    """
    g, _ = _gain(lam, rhs_energy)
    if g.sum() <= 0:
        return 1
    d = lam.numel()
    K = torch.arange(1, d + 1, dtype=lam.dtype)
    above = g.cumsum(0) / g.sum() - K / d
    return int(torch.argmax(above)) + 1


# ----------------------------------------------------------------------------- hard thresholds


def gavish_donoho_omega(beta: float) -> float:
    """``omega(beta) ~= 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43`` (Gavish & Donoho 2014, eq. 5).

    Their cubic fit of ``lambda*(beta) / sqrt(mu_beta)`` (``mu_beta`` the Marchenko-Pastur median),
    accurate to about 0.3 %.
    """
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


@rank_rule("gavish_donoho")
def gavish_donoho(lam: torch.Tensor, n_rows: int | None = None, aspect: float | None = None, **context) -> int:
    """Optimal hard threshold for unknown noise: ``K = #{sigma_k > omega(beta) median(sigma)}``.

    ``sigma_k = sqrt(lambda_k)`` are the singular values of the stacked ``n_rows x d`` task matrix
    T (``n_rows = N_live d_out``). It has ``m = min(d, n_rows)`` of them: when ``d > n_rows``,
    ``d - n_rows`` eigenvalues of C are structural zeros and are left out of the median (counting
    them collapses the threshold). ``beta = m / max(d, n_rows)``; the median is the usual one (the
    mean of the two middle values for an even m). Without ``n_rows``, the values given are taken
    as all of T's singular values and ``beta = aspect`` (default 1.0, ``omega(1) = 2.86``).
    """
    d = lam.numel()
    if n_rows is not None:
        m = min(d, int(n_rows))
        beta = m / max(d, int(n_rows))
        if aspect is not None and abs(float(aspect) - beta) > 1e-9:
            raise ValueError(f"aspect {aspect!r} contradicts n_rows={n_rows} for d={d} (beta = {beta:.6g})")
        sigma = lam[:m].sqrt()
    else:
        beta = 1.0 if aspect is None else float(aspect)
        sigma = lam.sqrt()
    tau = gavish_donoho_omega(beta) * _median(sigma)
    return int((sigma > tau).sum())


@rank_rule("gavish_donoho_authors", needs=("d_out",))
def gavish_donoho_authors(lam: torch.Tensor, d_out: int | None = None, **context) -> int:
    """The authors' hard threshold: ``K = max(1, #{sigma_k > (lambda*(beta) / mu) median(sigma)})``.

    ``sigma_k = sqrt(max(lambda_k, 1e-8))`` over all D2 = d_in eigenvalues of C; ``beta = min/max``
    of the layer's shape ``(D1, D2) = (d_out, d_in)`` (not of the stacked matrix);
    ``mu = sqrt(max((1 - beta)^2 + beta, 1e-3))`` for ``beta < 0.9999``, else ``sqrt(2 + sqrt 3)``;
    ``lambda*(beta) = sqrt(2 (beta + 1) + 8 beta / ((beta + 1) + sqrt(beta^2 + 14 beta + 1)))``. The
    median is the usual one. It differs from ``gavish_donoho`` in its approximation of the MP
    median, its aspect ratio and by keeping the structural zeros in the median.
    """
    d = lam.numel()
    beta = min(int(d_out), d) / max(int(d_out), d)
    mu = math.sqrt(max((1 - beta) ** 2 + beta, 1e-3)) if beta < 0.9999 else math.sqrt(2 + math.sqrt(3))
    lam_star = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
    sigma = _floored(lam).sqrt()
    return max(1, int((sigma > lam_star / mu * _median(sigma)).sum()))


for _frac in (0.9, 0.95, 0.99):
    RANK_RULES.add(f"cumvar_{_frac:g}", cumvar(_frac))
RANK_RULES.add("loss_elbow", loss_elbow())
for _frac in (0.9, 0.99):
    RANK_RULES.add(f"loss_residual_{_frac:g}", loss_residual(_frac))
RANK_RULES.add("wudi_risk", wudi_risk())
RANK_RULES.add_family("cumvar", cumvar)
RANK_RULES.add_family("loss_elbow", loss_elbow)
RANK_RULES.add_family("loss_residual", loss_residual)
RANK_RULES.add_family("wudi_risk", wudi_risk)


# ----------------------------------------------------------------------------- choose_rank


def _vector(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _energy(name: str, x, shape, order) -> torch.Tensor | None:
    if x is None:
        return None
    x = _vector(name, x)
    if x.shape != shape:
        raise ValueError(f"{name} must have lam's shape {tuple(shape)}, got {tuple(x.shape)}")
    if (x < 0).any():
        raise ValueError(f"{name} must be >= 0 (it is a squared norm per direction)")
    return x[order]


def _size(name: str, x) -> int | None:
    return None if x is None else checked_count(name, x, 1)


def choose_rank(lam, rule: str = "participation_sqrt", *, rhs_energy=None, start_energy=None, n_rows=None,
                d_out=None, aspect=None, min_rank: int = 1, max_rank_ratio: float = 1.0,
                rank_scale: float = 1.0) -> int:
    """Number K of kept eigen-directions for SWUDI-A, from the spectrum ``lam`` of C.

    Args:
        lam: (d,) eigenvalues of C in any order (torch or numpy); negatives are clipped to 0.
        rule: a name in :data:`RANK_RULES`, or of a family (``cumvar_0.9``, ``loss_elbow_0.05``,
            ``loss_residual_0.9``, ``wudi_risk_2``).
        rhs_energy: (d,) ``||D q_k||^2`` paired with ``lam[k]`` (the D-aware and loss rules).
        start_energy: (d,) ``||theta0 q_k||^2`` paired with ``lam[k]`` (``loss_elbow``,
            ``loss_residual``, ``wudi_risk``). Both are sorted together with ``lam``.
        n_rows: rows ``N_live d_out`` of the stacked task matrix (``gavish_donoho``).
        d_out: the layer's output size D1 (``gavish_donoho_authors``).
        aspect: aspect ratio beta in (0, 1] for ``gavish_donoho`` without ``n_rows`` (default 1).
        min_rank: integer >= 1. max_rank_ratio: in (0, 1]. rank_scale: > 0.

    The clamps are the authors': the rule's K is clamped to
    ``[min_rank, max(min_rank, round(max_rank_ratio d))]``, then ``K <- clamp(round(K rank_scale),
    min_rank, d)`` (Python's ``round``, half to even), and K is always within [1, d]. An all-zero
    spectrum gives ``min(min_rank, d)`` before the scale.
    """
    lam = _vector("lam", lam)
    if not isinstance(rule, str):
        raise ValueError(f"rule must be a rule name, got {rule!r}")
    fn = RANK_RULES.lookup(rule)
    min_rank = checked_count("min_rank", min_rank, 1)
    try:
        ratio = float(max_rank_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"max_rank_ratio must be a number in (0, 1], got {max_rank_ratio!r}") from None
    if not (0 < ratio <= 1):
        raise ValueError(f"max_rank_ratio must be in (0, 1], got {max_rank_ratio!r}")
    scale = checked_number("rank_scale", rank_scale)
    if aspect is not None and not (0 < float(aspect) <= 1):
        raise ValueError(f"aspect must be in (0, 1], got {aspect!r}")
    n_rows, d_out = _size("n_rows", n_rows), _size("d_out", d_out)
    order = torch.argsort(lam, descending=True, stable=True)
    lam = lam[order].clamp_min(0)
    context = {"rhs_energy": _energy("rhs_energy", rhs_energy, lam.shape, order),
               "start_energy": _energy("start_energy", start_energy, lam.shape, order),
               "n_rows": n_rows, "d_out": d_out, "aspect": aspect}
    missing = [k for k in getattr(fn, "needs", ()) if context[k] is None]
    if missing:
        raise ValueError(f"rank rule {rule!r} needs {', '.join(missing)} (rhs_energy[k] = ||D q_k||^2, "
                         f"start_energy[k] = ||theta0 q_k||^2, d_out = the layer's output size)")
    d = lam.numel()
    upper = max(min_rank, round(ratio * d))
    K = min_rank if lam.sum() <= 0 else int(fn(lam, **context))
    K = max(min_rank, min(K, upper))
    K = max(min_rank, min(round(K * scale), d))
    return max(1, min(K, d))


def rank_context(taus, *, eig=None, D=None, init: str = "sum") -> dict:
    """Every context key the rank rules read, for one layer: a dict for :func:`choose_rank`.

    ``taus`` (N, d_out, d_in) task vectors (zero experts are skipped); ``eig = eigh(C)`` and ``D``
    are computed when not given. Returns ``rhs_energy`` ``||D q_k||^2`` and ``start_energy``
    ``||theta0 q_k||^2`` (``theta0 = sum_i tau_i``, or 0 with ``init="zero"``), both (d_in,) in
    the order of ``eig.values``, ``n_rows = N_live d_out`` and ``d_out``.
    """
    from .wudi import as_task_stack, interference_operator, live_count

    taus = as_task_stack(taus)
    if init not in ("sum", "zero"):
        raise ValueError(f"init must be 'sum' or 'zero', got {init!r}")
    if eig is None or D is None:
        C, D_ = interference_operator(taus)
        D = D if D is not None else D_
        eig = eig if eig is not None else eigh(C)
    V = eig.vectors.to(D)
    start = (taus.sum(0).to(D) @ V).pow(2).sum(0) if init == "sum" else torch.zeros_like(eig.values)
    n_live = live_count(taus)
    return {"rhs_energy": (D @ V).pow(2).sum(0), "start_energy": start,
            "n_rows": n_live * taus.shape[1] if n_live else None, "d_out": taus.shape[1]}
