"""The notebooks' ready-made explorers, all built on :func:`swudi_lab.viz.widgets.explore`.

Each returns what ``explore`` returns for the chosen ``mode`` (an ``Explorer`` widget, or a
``go.Figure`` with plotly sliders, or a static ``go.Figure``); each also exposes its figure
builder as ``make_figure`` keyword values so tests and notebooks can call it directly.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np

from ..spectral import filters as F
from ..spectral.rank_rules import RANK_RULES, choose_rank
from ..spectral.wudi import kappa_time
from .merging import accuracy_curve_figure
from .style import as_array, side_by_side
from .theory import error_curve_figure, filter_factors_figure, solutions_figure, spectra_figure
from .widgets import explore

def cutoff_filters() -> list[str]:
    """The registered filters that have a one-knob cutoff form (the inverse-problem explorer's dropdown)."""
    return [name for name, kind in F.FILTERS.items() if kind.cutoff is not None]


def cutoff_filter(name: str, lambda_c: float, lam) -> F.Filter:
    """The registered filter ``name`` with its transition at eigenvalue ``lambda_c`` (one knob for all).

    Each filter declares its cutoff form in the registry (:class:`~swudi_lab.spectral.filters.FilterKind`):
    ``tikhonov``: ``alpha = lambda_c`` (f = 1/2 there); ``exponential``: ``t = 1 / lambda_c``;
    ``top_k``: ``K = #{lambda_k >= lambda_c}``; ``landweber``: ``eta = 1 / lambda_max``,
    ``n = lambda_max / lambda_c``; ``wiener``: ``p = 2``, ``nu2 = lambda_c^2``; ``pseudoinverse``
    ignores ``lambda_c``.
    """
    lam = as_array("lam", lam)
    if not lambda_c > 0:
        raise ValueError(f"lambda_c must be > 0, got {lambda_c!r}")
    names = cutoff_filters()
    if name not in names:
        raise ValueError(f"name must be one of {names}, got {name!r}")
    return F.FILTERS[name].cutoff(lambda_c, lam)


def _blur_problem(n: int = 64, width: float = 0.03):
    """A small Gaussian-blur deconvolution ``A x = b`` (used when the toy lab is not available)."""
    s = np.linspace(0, 1, n)
    A = np.exp(-((s[:, None] - s[None, :]) ** 2) / (2 * width**2)) / n
    x = np.exp(-((s - 0.3) ** 2) / 0.005) + 0.6 * np.exp(-((s - 0.7) ** 2) / 0.02)
    return A, A @ x, x


def _load_problem(problem, n: int):
    """``(A, b, x_true)`` from the toy lab (``swudi_lab.toy.make_problem``) by name, ``"blur"``
    (built in) or a callable ``n -> (A, b, x_true)`` / ``n -> Problem``."""
    if callable(problem):
        out = problem(n)
    elif problem == "blur":
        out = _blur_problem(n)
    else:
        try:
            from ..toy import make_problem  # lazy: the toy lab is optional for the viz package
        except ImportError:
            raise ValueError(f"problem {problem!r} needs swudi_lab.toy; use problem='blur' or pass A, x_true") from None
        out = make_problem(problem, n)
    if isinstance(out, tuple):
        A, b, x = out[:3]
    else:
        A, x = out.A, getattr(out, "x_true", None)
        b = getattr(out, "b_exact", getattr(out, "b", None))
    return as_array("A", A, ndim=2), as_array("b", b), as_array("x_true", x)


def _problem(A, b, x_true, problem, n):
    if A is None:
        A, b, x_true = _load_problem(problem, n)
    A = as_array("A", A, ndim=2)
    if x_true is None:
        raise ValueError("x_true is required with A (the explorer compares against the truth)")
    x_true = as_array("x_true", x_true)
    if x_true.size != A.shape[1]:
        raise ValueError(f"x_true has {x_true.size} entries, A has {A.shape[1]} columns")
    b = A @ x_true if b is None else as_array("b", b)
    if b.size != A.shape[0]:
        raise ValueError(f"b has {b.size} entries, A has {A.shape[0]} rows")
    U, sigma, Vt = np.linalg.svd(A, full_matrices=False)
    return A, b, x_true, U, sigma, Vt.T


def _noisy(b, noise, seed):
    """``b + noise * rms(b) * e`` with one fixed standard normal ``e`` (relative noise level)."""
    e = np.random.default_rng(seed).standard_normal(b.shape)
    return b + noise * np.sqrt(np.mean(b**2)) * e


_WIDE = {"description_width": "initial"}  # the whole label, never cut to "eta*lam_..."


def _log_slider(description, value, lo, hi, *, steps: int = 60, readout_format: str = ".3g"):
    """A log slider over ``[lo, hi]`` in ``steps`` equal log steps (one step: a factor ``(hi/lo)^(1/steps)``)."""
    lo, hi = math.log10(lo), math.log10(hi)
    v = min(max(value, 10**lo), 10**hi)
    return widgets.FloatLogSlider(value=v, base=10, min=lo, max=hi, step=(hi - lo) / steps,
                                  description=description, continuous_update=False, readout_format=readout_format,
                                  style=_WIDE)


def _log_range(values, pad: float = 0.08) -> list:
    """A fixed log10 axis range covering the finite positive ``values`` (so axes stay put while exploring)."""
    v = np.asarray(values, dtype=float).ravel()
    return _lin_range(np.log10(v[np.isfinite(v) & (v > 0)]), pad, min_span=0.1)


def _lin_range(values, pad: float = 0.08, min_span: float = 1e-9) -> list:
    """A fixed axis range covering the finite ``values``, padded by ``pad`` of their span (at least ``min_span``)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, min_span)
    return [lo - pad * span, hi + pad * span]


def _anchored(grid, value) -> list:
    """``grid`` with its element nearest to ``value`` (in log distance for positive grids) replaced by
    ``value``: the plotly-slider fallback then opens exactly where the widget explorer does."""
    grid = [float(g) for g in grid]
    value = float(value)
    if value in grid:
        return grid
    dist = (lambda g: abs(math.log(g / value))) if value > 0 and all(g > 0 for g in grid) else (lambda g: abs(g - value))
    i = min(range(len(grid)), key=lambda j: dist(grid[j]))
    return sorted(grid[:i] + [value] + grid[i + 1:])


EIG_ATA = "λ_k = σ_k² of AᵀA"  # the rug's name on a least-squares problem (filter_factors_figure)


# --------------------------------------------------------------- (1) inverse problem --------


def inverse_problem_explorer(A=None, b=None, x_true=None, *, problem="shaw", n: int = 64, noise: float = 1e-2,
                             filter: str = "tikhonov", lambda_c: float | None = None, seed: int = 0,
                             mode: str | None = None, fallback_grid: dict | None = None):
    """Noisy inverse problem ``A x = b``: noise level, filter and cutoff ``lambda_c`` sliders.

    Shows the filtered solution ``x_f = V diag(f(sigma^2) / sigma) U^T b_noisy`` against ``x_true``
    and the factors ``f(lambda)`` on the eigenvalues ``lambda = sigma^2`` of ``A^T A``.
    ``b_noisy = b + noise * rms(b) * e`` with a fixed standard normal ``e`` (``seed``).
    The filter's parameter is set from ``lambda_c`` by :func:`cutoff_filter`.

    Args: ``A`` (m, n), ``b`` (m,) (default ``A x_true``), ``x_true`` (n,); or ``problem``: a toy-lab
    name (``swudi_lab.toy``), ``"blur"`` (built in) or a callable ``n -> (A, b, x_true)``.
    """
    A, b, x_true, U, sigma, V = _problem(A, b, x_true, problem, n)
    lam = sigma**2
    pos = lam[lam > 0]
    lo, hi = max(pos.min(), pos.max() * 1e-14), pos.max()
    lambda_c = lambda_c if lambda_c is not None else math.sqrt(lo * hi)
    span = float(x_true.max() - x_true.min()) or 1.0
    y_range = [float(x_true.min()) - 0.6 * span, float(x_true.max()) + 0.6 * span]

    def make_figure(noise, filter, lambda_c):
        beta = U.T @ _noisy(b, noise, seed)
        filt = cutoff_filter(filter, lambda_c, lam)
        f = filt(lam)
        x_f = V @ (f * beta / np.where(sigma > 0, sigma, 1))
        err = np.linalg.norm(x_f - x_true) / np.linalg.norm(x_true)
        left = solutions_figure(x_true, {filt.label: x_f}, title="solution x_f vs truth")
        left.update_yaxes(range=y_range)  # fixed: a blown-up solution leaves the frame, the axes stay
        right = filter_factors_figure({filt.label: f}, lam=lam, eigenvalues=lam, eigenvalues_name=EIG_ATA,
                                      title="filter factors f(λ) on λ = σ²")
        return side_by_side([left, right], title=f"noise {noise:.2g}, {filt.label}: relative error "
                                                 f"‖x_f − x_true‖ / ‖x_true‖ = {err:.3g}")

    controls = {
        "noise": _log_slider("noise", noise, 1e-4, 1.0, steps=40, readout_format=".2g"),
        "filter": widgets.Dropdown(options=cutoff_filters(), value=filter, description="filter"),
        "lambda_c": _log_slider("cutoff λ_c", lambda_c, lo, hi, steps=112, readout_format=".2g"),
    }
    grid = fallback_grid or {"noise": _anchored([1e-3, 1e-2, 1e-1], controls["noise"].value),
                             "filter": sorted({"tikhonov", "exponential", "top_k", filter}),
                             "lambda_c": _anchored(np.logspace(math.log10(lo), math.log10(hi), 5),
                                                   controls["lambda_c"].value)}
    return explore(make_figure, controls, mode=mode, fallback_grid=grid)


# ----------------------------------------------------------------- (2) GD as a filter --------


def gd_error_curves(A=None, b=None, x_true=None, *, problem="shaw", n: int = 64, noise: float = 1e-2,
                    eta_lmax: float = 1.0, max_steps: int = 100_000, seed: int = 0, n_points: int = 60):
    """The error curves :func:`gd_explorer` draws: ``(n_grid, err_landweber, err_exponential)``.

    ``err[j] = ||x_n - x_true|| / ||x_true||`` after ``n = n_grid[j]`` GD steps of size
    ``eta = eta_lmax / lambda_max`` on ``A^T A x = A^T b_noisy`` from 0 (Landweber), and for the
    gradient flow at ``t = eta n`` (exponential); ``b_noisy`` as in the explorer (``noise``, ``seed``).
    A notebook uses it to check that the explorer's semiconvergence minimum is interior.
    """
    A, b, x_true, U, sigma, V = _problem(A, b, x_true, problem, n)
    return _gd_curves(U, sigma, V, b, x_true, noise, seed, max_steps, n_points)(eta_lmax)


def _gd_curves(U, sigma, V, b, x_true, noise, seed, max_steps, n_points=60):
    lam = sigma**2
    lmax = float(lam.max())
    beta = U.T @ _noisy(b, noise, seed)
    coef = beta / np.where(sigma > 0, sigma, 1)  # pseudoinverse coefficients u_k^T b / sigma_k
    proj = V.T @ x_true
    perp2 = max(float(x_true @ x_true - proj @ proj), 0.0)
    norm = float(np.linalg.norm(x_true)) or 1.0
    n_grid = np.unique(np.round(np.logspace(0, math.log10(max_steps), n_points)).astype(int))

    def errors(factors):  # ||V (f c) - x_true|| / ||x_true|| for each row of factors
        return np.sqrt(((factors * coef - proj) ** 2).sum(-1) + perp2) / norm

    def curves(eta_lmax):
        eta = eta_lmax / lmax
        return (n_grid, errors(1 - (1 - eta * lam[None]) ** n_grid[:, None]),
                errors(-np.expm1(-lam[None] * eta * n_grid[:, None])))

    return curves


def gd_explorer(A=None, b=None, x_true=None, *, problem="shaw", n: int = 64, noise: float = 1e-2,
                eta_lmax: float = 1.0, steps: int = 100, max_steps: int = 100_000, seed: int = 0,
                mode: str | None = None, fallback_grid: dict | None = None):
    """Gradient descent as a filter: step ``eta`` (as ``eta lambda_max``) and steps ``n`` sliders.

    Left: the Landweber factors ``1 - (1 - eta lambda)^n`` (exactly n GD steps on
    ``A^T A x = A^T b`` from 0) against the exponential ``1 - exp(-lambda eta n)``. Right: the
    relative error ``||x_n - x_true|| / ||x_true||`` vs n (semiconvergence) with the current n and the
    best n marked (:func:`gd_error_curves`). The error axis is fixed over the whole slider range.
    """
    A, b, x_true, U, sigma, V = _problem(A, b, x_true, problem, n)
    lam = sigma**2
    lmax = float(lam.max())
    curves_at = _gd_curves(U, sigma, V, b, x_true, noise, seed, max_steps)
    lo_eta, hi_eta = 0.05, 1.95
    y_range = _log_range(np.concatenate([np.concatenate(curves_at(e)[1:]) for e in (lo_eta, 1.0, hi_eta)]))

    def make_figure(eta_lmax, steps):
        eta, steps = eta_lmax / lmax, max(1, int(round(steps)))
        gd, flow = F.landweber(eta, steps), F.exponential(eta * steps)
        # one name per curve in both panels, so the shared legend lists each once
        GD, FLOW = "landweber (n GD steps)", "exponential (gradient flow, t = ηn)"
        left = filter_factors_figure({GD: gd(lam), FLOW: flow(lam)}, lam=lam, eigenvalues=lam, eigenvalues_name=EIG_ATA,
                                     title=f"{gd.label} vs {flow.label}")
        n_grid, err_gd, err_flow = curves_at(eta_lmax)
        right = error_curve_figure({GD: (n_grid, err_gd), FLOW: (n_grid, err_flow)}, current=steps, log_y=True,
                                   y_title="‖x_n − x_true‖ / ‖x_true‖",
                                   title="semiconvergence: the error falls, then rises")
        right.update_yaxes(range=y_range)
        for tr in right.data:
            if (tr.name or "").startswith("min of"):
                tr.showlegend = False  # the stars explain themselves (hover: the best n)
        return side_by_side([left, right], title=f"η λ_max = {eta_lmax:.2f}, n = {steps}, t = ηn = {eta * steps:.3g}")

    controls = {
        "eta_lmax": widgets.FloatSlider(value=eta_lmax, min=lo_eta, max=hi_eta, step=0.05, description="η λ_max",
                                        continuous_update=False, readout_format=".2f", style=_WIDE),
        "steps": _log_slider("steps n", steps, 1, max_steps, steps=100, readout_format=".0f"),
    }
    grid = fallback_grid or {"eta_lmax": _anchored([0.5, 1.0, 1.9], controls["eta_lmax"].value),
                             "steps": [int(round(s)) for s in _anchored(
                                 np.unique(np.round(np.logspace(0, math.log10(max_steps), 9))), controls["steps"].value)]}
    return explore(make_figure, controls, mode=mode, fallback_grid=grid)


# ------------------------------------------------------------ (3) filters and rank rules -----


def _rank_rules(rules, context: dict | None = None) -> dict:
    """``name -> callable(lam) -> K``: ``rules`` if given, else every rule of
    :data:`swudi_lab.spectral.rank_rules.RANK_RULES` whose context (``rule.needs``) is in ``context``,
    through ``choose_rank``."""
    if rules is not None:
        return dict(rules)
    context = {k: v for k, v in (context or {}).items() if v is not None}
    return {name: (lambda lam, name=name: choose_rank(lam, name, **context))
            for name, fn in RANK_RULES.items()
            if all(k in context for k in getattr(fn, "needs", ()))}


def _apply_rule(rule, lam) -> int:
    K = rule(lam)
    return int(K.item() if hasattr(K, "item") else K)


def filters_explorer(lam, *, n_tasks: int | None = None, kappa: float = 3.0, ratio: float = 0.65,
                     rule: str = "ratio", rules: dict | None = None, rhs_energy=None, start_energy=None,
                     n_rows: int | None = None, d_out: int | None = None, mode: str | None = None,
                     fallback_grid: dict | None = None):
    """Filters and rank rules on a given spectrum: ``kappa`` (time), ``ratio r`` and a rank-rule dropdown.

    ``t = kappa / mean(lambda)`` (``= kappa d_in / N`` since ``trace(C) = N``). SWUDI's filter
    ``(1 - exp(-lambda t)) topK`` takes ``K = ceil(r d_in)`` from the ratio slider; the top-K filter
    (SWUDI-A's) takes its ``K`` from the rule (``"ratio"``: the same ``ceil(r d_in)``; otherwise
    ``rules[name](lambda)``, by default the :mod:`swudi_lab.spectral.rank_rules` registry). Left: the
    exponential(t), top-K and SWUDI factors, drawn on a dense ``lambda`` grid over the spectrum (the
    eigenvalues as a rug); right: the normalized spectrum with both ``K`` marked. Axes stay fixed.

    Args: ``lam`` (d_in,) eigenvalues of C; ``n_tasks`` N (only for labels); ``rules`` dict
    ``name -> callable(lambda) -> K`` to override the registry. The layer's rank-rule context
    (:func:`swudi_lab.spectral.rank_context` gives all of it) enables the rules that need it:
    ``rhs_energy`` (d_in,) ``||D q_k||^2`` and ``start_energy`` (d_in,) ``||theta0 q_k||^2``, paired with
    ``lam`` (the D-aware and loss rules, ``wudi_risk``), ``n_rows = N_live d_out`` (``gavish_donoho``'s
    aspect ratio and median) and ``d_out`` (``gavish_donoho_authors``).
    """
    lam = as_array("lam", lam)
    order = np.argsort(lam, kind="stable")[::-1]
    energies = {}
    for key, value in (("rhs_energy", rhs_energy), ("start_energy", start_energy)):
        if value is not None:
            value = as_array(key, value)
            if value.shape != lam.shape:
                raise ValueError(f"{key} must have lam's shape {lam.shape}, got {value.shape}")
            energies[key] = np.ascontiguousarray(value[order])
    lam = np.ascontiguousarray(lam[order])  # descending (torch rejects negative strides)
    mean = float(lam.mean())
    if mean <= 0:
        raise ValueError("lam must have a positive mean (trace(C) = N > 0)")
    d = lam.size
    rules = _rank_rules(rules, {**energies, "n_rows": n_rows, "d_out": d_out})
    options = ["ratio", *rules]
    if rule not in options:
        raise ValueError(f"rule must be one of {options}, got {rule!r}")
    pos = lam[lam > 0]
    dense = np.logspace(math.log10(pos.min()), math.log10(pos.max()), 400) if pos.size else np.array([1.0])
    spec_range = _log_range(lam / mean)

    def make_figure(kappa, ratio, rule):
        t = kappa_time(kappa, d, float(lam.sum()))  # trace = N: t = kappa d_in / N
        K_r = F.swudi_count(d, ratio)  # SWUDI's K from the ratio r (it always follows the r slider)
        K = K_r if rule == "ratio" else min(d, max(1, _apply_rule(rules[rule], lam)))  # the rule's K (top-K)
        soft, hard, both = F.exponential(t), F.top_k(k=K), F.swudi(t, k=K_r)
        # dense grid (and the eigenvalues themselves): the exponential's shape is drawn across gaps in
        # the spectrum; a top-K factor is 1 at and above the K-th largest eigenvalue, 0 below.
        x = np.unique(np.concatenate([dense, pos]))
        cut = lambda k: (x >= lam[k - 1]).astype(float)
        exp_f = -np.expm1(-x * t)
        factors = {soft.label: exp_f, hard.label: cut(K), both.label: exp_f * cut(K_r)}
        left = filter_factors_figure(factors, lam=x, eigenvalues=lam, eigenvalues_name="of C",
                                     title="factors f(λ) on the spectrum")
        marks = {f"ratio r = {ratio:.2f} (SWUDI)": K_r}
        if rule != "ratio":
            marks[f"{rule} (top-K)"] = K
        right = spectra_figure({"spectrum λ_k": lam}, normalize=True, ranks=marks, title="spectrum and chosen K")
        right.update_yaxes(range=spec_range)
        n_txt = f", N = {n_tasks}" if n_tasks else ""
        return side_by_side([left, right], title=f"κ = {kappa:.3g} (t = {t:.3g}{n_txt}, d_in = {d}): "
                                                 f"SWUDI K = {K_r} (r = {ratio:.2f}), top-K K = {K} ({rule})")

    controls = {
        "kappa": _log_slider("κ = t N / d_in", kappa, 1e-2, 1e3, steps=100, readout_format=".3g"),
        "ratio": widgets.FloatSlider(value=ratio, min=0.01, max=1.0, step=0.01, description="ratio r (SWUDI)",
                                     continuous_update=False, readout_format=".2f", style=_WIDE),
        "rule": widgets.Dropdown(options=options, value=rule, description="K rule (top-K)", style=_WIDE),
    }
    grid = fallback_grid or {"kappa": _anchored([0.3, 1.0, 3.0, 10.0, 30.0, 100.0], controls["kappa"].value),
                             "ratio": _anchored([0.25, 0.5, 0.65, 0.8, 1.0], controls["ratio"].value)}
    return explore(make_figure, controls, mode=mode, fallback_grid=grid)


# ------------------------------------------------------------------- (4) merge results ------


def _results_table(results, kappas, ratios):
    """Normalize results to ``{(kappa, ratio): {task: acc}}`` (callables evaluated on the grid)."""
    if callable(results):
        if kappas is None or ratios is None:
            raise ValueError("with a callable results, give kappas and ratios (the grid to evaluate)")
        return {(float(k), float(r)): dict(results(k, r)) for k in kappas for r in ratios}
    if isinstance(results, dict):
        return {(float(k), float(r)): dict(v) for (k, r), v in results.items()}
    table = {}
    for i, row in enumerate(results):
        row = dict(row)
        x = row.pop("kappa", row.pop("t", None))
        r = row.pop("ratio", None)
        if x is None or r is None:
            raise ValueError(f"results row {i} needs 'kappa' (or 't') and 'ratio' keys, got {sorted(row)}")
        table[(float(x), float(r))] = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
    return table


def _average(accs: dict) -> float:
    for key in ("average", "avg", "mean"):
        if key in accs:
            return float(accs[key])
    return float(np.mean(list(accs.values())))


def merge_explorer(results, *, kappas=None, ratios=None, x_name: str = "kappa", references: dict | None = None,
                   per_task: bool = True, x: float | None = None, ratio: float | None = None,
                   mode: str | None = None, fallback_grid: dict | None = None):
    """Explore precomputed merge accuracies over (kappa or t, SWUDI ratio r).

    Args:
        results: a callable ``(kappa, ratio) -> {task: accuracy}`` (evaluated once on
            ``kappas x ratios``), a dict ``{(kappa, ratio): {task: accuracy}}``, or a list of rows
            ``{"kappa" (or "t"): .., "ratio": .., task: accuracy, ...}``. An ``"average"``/``"avg"``
            entry is used as the average, else the mean over tasks.
        x_name: label of the first parameter (``"kappa"`` or ``"t"``).
        references: horizontal lines, e.g. ``{"closed form": 82.33, "WUDI": 84.63}``.
        per_task: also draw one thin curve per task.
        x, ratio: where the explorer opens (the nearest grid values; default the middle ``x`` and the
            largest ratio). Pass the paper's setting, e.g. ``ratio=0.65``.
    Readouts are rounded, and the accuracy axis is fixed over the whole table (and the references
    that fall within 10 points of it), so moving a slider moves the curves, not the axes. Left: accuracy vs ``x_name`` at the selected ratio; right: accuracy vs ratio at the selected ``x_name``;
    the curve ``"task average"`` is the average accuracy (black), thin curves are single tasks.
    """
    table = _results_table(results, kappas, ratios)
    if not table:
        raise ValueError("results is empty")
    xs = sorted({k for k, _ in table})
    rs = sorted({r for _, r in table})
    tasks = [t for t in next(iter(table.values())) if t not in ("average", "avg", "mean")]

    def curves(points):
        pts = [(p, table[key]) for p, key in points if key in table]
        out = {"task average": ([p for p, _ in pts], [_average(a) for _, a in pts])}
        if per_task:
            out.update({task: ([p for p, _ in pts], [a[task] for _, a in pts]) for task in tasks})
        return out

    values = [_average(a) for a in table.values()]
    if per_task:
        values += [a[t] for a in table.values() for t in tasks if t in a]
    lo, hi = min(values), max(values)
    refs = {k: float(v) for k, v in (references or {}).items() if lo - 10 <= float(v) <= hi + 10}
    y_range = _lin_range(values + list(refs.values()))

    def make_figure(x, ratio):
        left = accuracy_curve_figure(curves([(k, (k, ratio)) for k in xs]), x_title=x_name, current=x,
                                     references=refs, title=f"accuracy vs {x_name} at r = {ratio:.2f}")
        right = accuracy_curve_figure(curves([(r, (x, r)) for r in rs]), x_title="SWUDI ratio r = K / d_in",
                                      log_x=False, current=ratio, references=refs,
                                      title=f"accuracy vs r at {x_name} = {x:.3g}")
        for fig in (left, right):
            fig.update_yaxes(range=y_range)
        avg = _average(table[(x, ratio)]) if (x, ratio) in table else float("nan")
        return side_by_side([left, right], title=f"{x_name} = {x:.3g}, r = {ratio:.2f}: average accuracy {avg:.2f} %")

    def nearest(v, options, default):
        return default if v is None else min(options, key=lambda o: abs(o - float(v)))

    controls = {
        "x": widgets.SelectionSlider(options=[(f"{k:.3g}", k) for k in xs], value=nearest(x, xs, xs[len(xs) // 2]),
                                     description=x_name, continuous_update=False, style=_WIDE),
        "ratio": widgets.SelectionSlider(options=[(f"{r:.2f}", r) for r in rs], value=nearest(ratio, rs, rs[-1]),
                                         description="ratio r", continuous_update=False, style=_WIDE),
    }
    return explore(make_figure, controls, mode=mode, fallback_grid=fallback_grid, max_frames=max(64, len(xs) * len(rs)))
