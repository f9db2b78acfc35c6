"""Choosing a filter's parameter for ``A x = b``: L-curve, GCV, discrepancy principle, oracle.

A *family* is a callable ``param -> Filter`` (``tikhonov``, ``lambda t: exponential(t)``,
``lambda k: top_k(k=k)``, ``lambda p: swudi(t=p[0], k=p[1])``) and ``params`` a grid of its
parameters. All rules share one SVD ``A = U diag(sigma) V^T``; with ``beta = U^T b`` and filter
factors ``f_k = f(sigma_k^2)`` (docs/design.md notation, ``lambda = sigma^2``)::

    x_p        = V diag(f_k / sigma_k) beta                          (filtered_solve)
    ||x_p||^2  = sum_k (f_k beta_k / sigma_k)^2
    ||A x_p - b||^2 = sum_k ((1 - f_k) beta_k)^2 + ||b - U U^T b||^2
    dof(p)     = sum_k f_k       (trace of the influence matrix A A^#, "effective parameters")

As in ``filtered_solve``, ``f_k / sigma_k`` is ``(f_k / sigma_k^2) sigma_k`` with
``Filter.over_lambda`` and the floor ``EIGEN_FLOOR^2`` (1e-16) on ``sigma^2``: pseudoinverse-like
filters damp directions with ``sigma_k < 1e-8`` (and count them that much in ``dof`` and in the
residual); filters that vanish like lambda at 0 stay exact.

Order of the grid. Rules speak of "more" and "less" regularized: more regularization means
smaller factors, fewer effective parameters ``dof``, larger residual and smaller solution
norm (large ``alpha`` for Tikhonov, small ``t`` for exponential, small ``n`` for Landweber, small
``K`` for top-K, large ``nu2`` for Wiener). The grid may come in either direction (or any
order): every rule sorts it by ``dof``, **most regularized first**, and returns the curves in
that order (``result.params`` is the sorted grid).

- :func:`l_curve`: corner of ``(log ||A x_p - b||, log ||x_p||)``, the point of maximum
  curvature. Candidates are the vertices of the curve's lower convex hull (the L bulges towards
  small residual and small norm, so its corner is a hull vertex); the curvature at a vertex is the
  Menger curvature (circle through three points) with its hull neighbours. The neighbours are
  local, at a distance that does not depend on the grid's extent: on a fine grid of a smooth
  family (Tikhonov, exponential) they are the adjacent grid points and the corner lands within one
  grid step of the maximum of the continuous curvature; for discrete families (TSVD, Landweber)
  the hull drops the jagged, non-convex clusters of points that would fake a sharp corner.
- :func:`gcv`: ``G(p) = ||A x_p - b||^2 / (m - dof(p))^2``, minimized.
- :func:`discrepancy`: the most regularized ``p`` with ``||A x_p - b|| <= tau * noise_norm``.
- :func:`oracle`: ``argmin ||x_p - x_true||`` (needs the truth: the best any rule could do).
- :func:`choose`: several rules on one sweep; :func:`parameter_curves`: the sweep itself.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..registry import Registry, checked_number
from .estimator import EIGEN_FLOOR, SVD, _tensor, filtered_solve, svd
from .filters import Filter

__all__ = ["Choice", "ChoiceRule", "CHOICE_RULES", "rules_for", "ParameterCurves", "parameter_curves", "l_curve", "l_curve_curvature", "gcv", "discrepancy", "oracle", "choose"]


@dataclass(frozen=True)
class ParameterCurves:
    """Per-parameter quantities of a family on one problem, most regularized first.

    ``params`` (list of P), ``filters`` (list of P :class:`Filter`), ``residual_norms``,
    ``solution_norms``, ``dof`` (each (P,) tensors); ``coef`` (P, r) the coefficients
    ``f_k beta_k / sigma_k`` of ``x_p`` in the basis V; ``decomposition`` the shared SVD and
    ``b`` (m,) the data.
    """

    params: list
    filters: list
    residual_norms: torch.Tensor
    solution_norms: torch.Tensor
    dof: torch.Tensor
    coef: torch.Tensor
    decomposition: SVD
    b: torch.Tensor


@dataclass(frozen=True)
class Choice:
    """A chosen parameter with its filter, solution and the curves behind the choice.

    ``method`` (``"l_curve" | "gcv" | "discrepancy" | "oracle"``), ``param``, ``filter``, ``x`` (n,),
    ``index`` into ``params`` (sorted most regularized first), ``params``, ``residual_norms``,
    ``solution_norms``, ``dof`` ((P,) tensors, same order) and ``criterion`` (P,): the curvature
    (L-curve), ``G(p)`` (GCV), the residual norm minus ``tau * noise_norm`` (discrepancy) or the
    error ``||x_p - x_true||`` (oracle).
    """

    method: str
    param: object
    filter: Filter
    x: torch.Tensor
    index: int
    params: list
    residual_norms: torch.Tensor
    solution_norms: torch.Tensor
    dof: torch.Tensor
    criterion: torch.Tensor


def _grid(params) -> list:
    if isinstance(params, (torch.Tensor, np.ndarray)):
        params = params.tolist()
    try:
        params = list(params)
    except TypeError:
        raise ValueError(f"params must be a sequence of parameters, got {type(params).__name__}") from None
    if not params:
        raise ValueError("params is empty: need at least one parameter")
    return params


def parameter_curves(A, b, family: Callable[[object], Filter], params: Sequence, *,
                     decomposition: SVD | None = None) -> ParameterCurves:
    """Evaluate a family on a grid through one SVD (the sweep every rule starts from).

    ``A`` (m, n), ``b`` (m,). Residual and solution norms come from the coefficients
    ``beta = U^T b`` (formulas in the module docstring), consistent with
    :func:`~swudi_lab.spectral.filtered_solve` (same floor on ``sigma^2``). Sorted by ``dof``
    ascending (most regularized first, stable).
    """
    if not callable(family):
        raise ValueError(f"family must be a callable param -> Filter, got {type(family).__name__}")
    params = _grid(params)
    dec = decomposition if decomposition is not None else svd(A)
    U, sigma, V = dec
    if decomposition is not None and A is not None and tuple(np.shape(A)) != (U.shape[0], V.shape[0]):
        raise ValueError(f"decomposition is of a {(U.shape[0], V.shape[0])} matrix, A is {tuple(np.shape(A))}")
    b = _tensor("b", b, U.dtype, U.device)
    if b.ndim != 1 or b.shape[0] != U.shape[0]:
        raise ValueError(f"b must be a vector of length {U.shape[0]} (rows of A), got shape {tuple(b.shape)}")
    beta = U.T @ b
    outside = (b - U @ beta).pow(2).sum()  # ||b - U U^T b||^2, data outside range(A)
    lam = sigma**2
    filters, rows = [], []
    for p in params:
        filt = family(p)
        if not isinstance(filt, Filter):
            raise ValueError(f"family({p!r}) must return a Filter, got {type(filt).__name__}")
        f = filt(lam)
        if not torch.isfinite(f).all():
            raise ValueError(f"filter {filt} produced non-finite factors")
        filters.append(filt)
        rows.append(filt.over_lambda(lam, EIGEN_FLOOR**2) * sigma)  # f_k / sigma_k as in filtered_solve
    W = torch.stack(rows)  # (P, r)
    coef = W * beta
    dof = (W * sigma).sum(dim=1)  # sum_k f_k
    residual = (((1 - W * sigma) * beta).pow(2).sum(dim=1) + outside).sqrt()
    order = sorted(range(len(params)), key=lambda i: float(dof[i]))
    idx = torch.tensor(order)
    return ParameterCurves([params[i] for i in order], [filters[i] for i in order], residual[idx],
                           coef[idx].norm(dim=1), dof[idx], coef[idx], dec, b)


def _result(method: str, curves: ParameterCurves, index: int, criterion) -> Choice:
    filt = curves.filters[index]
    x = filtered_solve(None, curves.b, filt, decomposition=curves.decomposition)
    return Choice(method, curves.params[index], filt, x, index, curves.params,
                  curves.residual_norms, curves.solution_norms, curves.dof, criterion)


def _menger_curvature(rho: np.ndarray, eta: np.ndarray, min_step: float) -> np.ndarray:
    """Signed curvature of the polyline (rho, eta) at each point, neighbours >= min_step away.

    ``min_step`` is an absolute distance in the plane of (rho, eta) (decades on the L-curve).
    """
    P = np.stack([rho, eta], axis=1)
    n = P.shape[0]
    kappa = np.full(n, -np.inf)
    for i in range(1, n - 1):
        j = i - 1
        while j > 0 and np.hypot(*(P[i] - P[j])) < min_step:
            j -= 1
        k = i + 1
        while k < n - 1 and np.hypot(*(P[k] - P[i])) < min_step:
            k += 1
        a, c = P[i] - P[j], P[k] - P[i]
        ab, bc, ac = np.hypot(*a), np.hypot(*c), np.hypot(*(P[k] - P[j]))
        if ab == 0 or bc == 0 or ac == 0:
            continue
        # Most regularized first, the L is walked from bottom-right to top-left and turns
        # clockwise at its corner (cross < 0): count that curvature as positive.
        kappa[i] = -2 * (a[0] * c[1] - a[1] * c[0]) / (ab * bc * ac)
    return kappa


def _lower_hull(rho: np.ndarray, eta: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points (rho, eta), by decreasing rho.

    Andrew's monotone chain on the points sorted by (rho, eta); collinear and repeated points are
    dropped. Walked by decreasing rho it runs from the bottom-right arm of the L (most
    regularized) to its top-left arm, like the curve itself.
    """
    hull: list[int] = []
    for i in sorted(range(len(rho)), key=lambda i: (rho[i], eta[i])):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (rho[a] - rho[o]) * (eta[i] - eta[o]) - (eta[a] - eta[o]) * (rho[i] - rho[o])
            if cross > 0:
                break
            hull.pop()
        hull.append(i)
    return hull[::-1]


def l_curve_curvature(rho, eta, min_step: float = 0.0) -> np.ndarray:
    """Curvature of the L-curve ``(rho, eta)`` (log10 norms, most regularized first) at each point.

    Finite on the interior vertices of the lower convex hull: the Menger curvature of the hull
    polyline there, with hull neighbours at least ``min_step`` away (an absolute distance in
    decades; 0: the adjacent hull vertices). ``-inf`` elsewhere: points off the hull (never a
    corner of the L) and the curve's two ends.
    """
    rho, eta = np.asarray(rho, dtype=float), np.asarray(eta, dtype=float)
    hull = _lower_hull(rho, eta)
    kappa = np.full(rho.shape[0], -np.inf)
    if len(hull) >= 3:
        on_hull = _menger_curvature(rho[hull], eta[hull], min_step)
        kappa[hull] = on_hull
    kappa[[0, -1]] = -np.inf  # endpoints are never chosen
    return kappa


def _l_curve(curves: ParameterCurves, min_step: float) -> Choice:
    if len(curves.params) < 3:
        raise ValueError(f"params needs at least 3 values for an L-curve corner, got {len(curves.params)}")
    if isinstance(min_step, bool) or not (isinstance(min_step, (int, float)) and math.isfinite(min_step)
                                          and min_step >= 0):
        raise ValueError(f"min_step must be a finite distance >= 0 (decades), got {min_step!r}")
    tiny = torch.finfo(curves.residual_norms.dtype).tiny
    rho = curves.residual_norms.clamp_min(tiny).log10().cpu().double().numpy()
    eta = curves.solution_norms.clamp_min(tiny).log10().cpu().double().numpy()
    kappa = l_curve_curvature(rho, eta, float(min_step))
    index = int(np.argmax(kappa)) if np.isfinite(kappa).any() else len(curves.params) // 2
    return _result("l_curve", curves, index, torch.from_numpy(kappa))


def _gcv(curves: ParameterCurves) -> Choice:
    m = curves.b.shape[0]
    denom = m - curves.dof
    G = torch.where(denom > 1e-12 * m, curves.residual_norms**2 / denom.clamp_min(1e-300) ** 2,
                    torch.full_like(denom, math.inf))
    return _result("gcv", curves, int(torch.argmin(G)), G)


def _delta_tau(noise_norm, tau) -> tuple[float, float]:
    delta = checked_number("noise_norm", noise_norm, allow_zero=True)
    if isinstance(tau, bool) or not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and > 0, got {tau!r}")
    return delta, float(tau)


def _discrepancy(curves: ParameterCurves, delta: float, tau: float) -> Choice:
    gap = curves.residual_norms - tau * delta
    ok = torch.nonzero(gap <= 0).flatten()
    if ok.numel():
        index = int(ok[0])
    else:
        index = int(torch.argmin(curves.residual_norms))
        warnings.warn(f"discrepancy: no parameter reaches ||A x - b|| <= {tau * delta:.3g} (smallest "
                      f"residual {float(curves.residual_norms[index]):.3g}); returning the smallest residual",
                      stacklevel=3)
    return _result("discrepancy", curves, index, gap)


def _oracle(curves: ParameterCurves, x_true) -> Choice:
    V = curves.decomposition.V
    x_true = _tensor("x_true", x_true, V.dtype, V.device)
    if x_true.ndim != 1 or x_true.shape[0] != V.shape[0]:
        raise ValueError(f"x_true must be a vector of length {V.shape[0]} (columns of A), got shape "
                         f"{tuple(x_true.shape)}")
    c = V.T @ x_true
    perp = (x_true.pow(2).sum() - c.pow(2).sum()).clamp_min(0)
    err = ((curves.coef - c).pow(2).sum(dim=1) + perp).sqrt()
    return _result("oracle", curves, int(torch.argmin(err)), err)


def l_curve(A, b, family, params, *, decomposition: SVD | None = None, min_step: float = 0.0) -> Choice:
    """L-curve corner: maximum curvature of ``(log10 ||A x_p - b||, log10 ||x_p||)``.

    Args:
        A (m, n), b (m,), family (param -> Filter), params (grid, any order, >= 3 values).
        min_step: smallest distance (in decades on the log10-log10 plane) between a candidate
            and the neighbours its curvature is measured with; 0 (default): the adjacent
            vertices of the lower convex hull. An absolute distance, so the corner does not move
            when the grid is extended.

    Candidates are the vertices of the lower convex hull of the points (the corner of an L is
    one; the jagged clusters of discrete families are not). The curvature at a vertex ``i`` is
    that of the circle through it and its hull neighbours ``j``, ``k`` (Menger):
    ``kappa = 2 cross(P_i - P_j, P_k - P_i) / (|P_i - P_j| |P_k - P_i| |P_k - P_j|)``, sign chosen
    so the corner of the L is positive. On a fine grid of a smooth family the neighbours are the
    adjacent grid points, so the pick is within one grid step of the maximum of the continuous
    curvature (``tests/test_choice.py`` checks it against the analytic Tikhonov curvature on
    grids of different extents). Endpoints are never chosen.
    Returns a :class:`Choice` with ``criterion`` the curvature (``-inf`` off the hull and at the
    ends).
    """
    return _l_curve(parameter_curves(A, b, family, params, decomposition=decomposition), min_step)


def gcv(A, b, family, params, *, decomposition: SVD | None = None) -> Choice:
    """Generalized cross-validation: ``argmin_p G(p) = ||A x_p - b||^2 / (m - sum_k f_k)^2``.

    A (m, n), b (m,), family (param -> Filter), params (grid, any order). ``G = inf`` where
    ``sum_k f_k >= m`` (no degrees of freedom left). Returns a :class:`Choice` with
    ``criterion`` the GCV function (ties: the most regularized).

    GCV needs no noise level but its minimum is flat when m is small: on ``shaw(64)`` with
    relative noise 1e-3 it lands within ~1.2x of the oracle error for most noise draws but
    badly under-regularizes for about 1 draw in 4 (measured over 40 seeds, Tikhonov,
    exponential and top-K alike). Plot ``criterion`` before trusting it.
    """
    return _gcv(parameter_curves(A, b, family, params, decomposition=decomposition))


def discrepancy(A, b, family, params, noise_norm: float, tau: float = 1.0, *,
                decomposition: SVD | None = None) -> Choice:
    """Morozov's discrepancy principle: the most regularized ``p`` with ``||A x_p - b|| <= tau delta``.

    ``delta = noise_norm`` is (an estimate of) ``||e||``; ``tau >= 1`` (e.g. 1.1) is a safety
    factor. A (m, n), b (m,), family (param -> Filter), params (grid, any order). If no
    parameter fits, warns and returns the smallest residual. Returns a :class:`Choice` with
    ``criterion = ||A x_p - b|| - tau delta``.
    """
    delta, tau = _delta_tau(noise_norm, tau)
    return _discrepancy(parameter_curves(A, b, family, params, decomposition=decomposition), delta, tau)


def oracle(A, b, family, params, x_true, *, decomposition: SVD | None = None) -> Choice:
    """The best parameter in hindsight: ``argmin_p ||x_p - x_true||``.

    A (m, n), b (m,), x_true (n,), family, params (grid, any order). Errors use
    ``||x_p - x_true||^2 = ||coef_p - V^T x_true||^2 + ||x_true - V V^T x_true||^2``. Returns a
    :class:`Choice` with ``criterion`` the absolute errors (ties: the most regularized).
    """
    return _oracle(parameter_curves(A, b, family, params, decomposition=decomposition), x_true)


@dataclass(frozen=True)
class ChoiceRule:
    """A registered parameter-choice rule: ``pick(curves, **context) -> Choice``.

    ``needs`` names the context it cannot run without (``x_true``, ``noise_norm``);
    ``one_dimensional``: it needs a scalar grid (the L-curve's corner is a point on a curve).
    """

    name: str
    pick: Callable[..., Choice]
    needs: tuple[str, ...] = ()
    one_dimensional: bool = False
    doc: str = ""


CHOICE_RULES: Registry = Registry("parameter-choice rule")
"""Parameter-choice rules by name, in registration order (:func:`choose`, the toy demo)."""

for _rule in (
    ChoiceRule("oracle", lambda c, x_true, **_: _oracle(c, x_true), ("x_true",), doc="the best on the grid in hindsight"),
    ChoiceRule("gcv", lambda c, **_: _gcv(c), doc="generalized cross-validation"),
    ChoiceRule("l_curve", lambda c, min_step, **_: _l_curve(c, min_step), one_dimensional=True,
               doc="corner of the L-curve"),
    ChoiceRule("discrepancy", lambda c, delta, tau, **_: _discrepancy(c, delta, tau), ("noise_norm",),
               doc="discrepancy principle"),
):
    CHOICE_RULES.add(_rule.name, _rule)

RULES = tuple(CHOICE_RULES)


def rules_for(grid: Sequence) -> tuple[str, ...]:
    """The registered rules that apply to ``grid`` (no L-curve on a multi-dimensional grid)."""
    scalar = all(np.ndim(p) == 0 for p in grid)
    return tuple(name for name, r in CHOICE_RULES.items() if scalar or not r.one_dimensional)


def choose(A, b, family, params, rules=RULES, *, x_true=None, noise_norm: float | None = None,
           tau: float = 1.0, decomposition: SVD | None = None, min_step: float = 0.0) -> dict[str, Choice]:
    """Several rules on one sweep of the grid: ``{rule: Choice}`` for ``rules`` in order.

    ``rules`` are names in :data:`CHOICE_RULES` (``oracle``, ``gcv``, ``l_curve``,
    ``discrepancy``); ``oracle`` needs ``x_true`` (n,), ``discrepancy`` needs ``noise_norm``
    (``||e||``). Same results as calling the rules one by one, for the cost of one
    :func:`parameter_curves`.
    """
    if isinstance(rules, str):
        rules = (rules,)
    unknown = [r for r in rules if r not in CHOICE_RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; known: {CHOICE_RULES.names()}")
    context = {"x_true": x_true, "noise_norm": noise_norm, "tau": tau, "min_step": min_step}
    for r in rules:
        for need in CHOICE_RULES[r].needs:
            if context[need] is None:
                raise ValueError(f"{need} is required for the {r} rule")
    if "discrepancy" in rules:
        context["delta"], context["tau"] = _delta_tau(noise_norm, tau)
    curves = parameter_curves(A, b, family, params, decomposition=decomposition)
    return {r: CHOICE_RULES[r].pick(curves, **context) for r in rules}
