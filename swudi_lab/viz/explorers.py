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


# ------------------------------------------------------------------ toy problems ------------


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


def _log_slider(description, value, lo, hi):
    lo, hi = math.log10(lo), math.log10(hi)
    v = min(max(value, 10**lo), 10**hi)
    return widgets.FloatLogSlider(value=v, base=10, min=lo, max=hi, step=(hi - lo) / 40,
                                  description=description, continuous_update=False, readout_format=".3g")


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

    def make_figure(noise, filter, lambda_c):
        beta = U.T @ _noisy(b, noise, seed)
        filt = cutoff_filter(filter, lambda_c, lam)
        f = filt(lam)
        x_f = V @ (f * beta / np.where(sigma > 0, sigma, 1))
        err = np.linalg.norm(x_f - x_true) / np.linalg.norm(x_true)
        left = solutions_figure(x_true, {filt.label: x_f}, title="solution x_f vs truth")
        right = filter_factors_figure({filt.label: f}, lam=lam, eigenvalues=lam,
                                      title="filter factors f(lambda) on lambda = sigma^2")
        return side_by_side([left, right], title=f"noise {noise:.3g}, {filt.label}: relative error "
                                                 f"||x_f - x_true|| / ||x_true|| = {err:.3g}")

    controls = {
        "noise": _log_slider("noise", noise, 1e-4, 1.0),
        "filter": widgets.Dropdown(options=cutoff_filters(), value=filter, description="filter"),
        "lambda_c": _log_slider("lambda_c", lambda_c, lo, hi),
    }
    grid = fallback_grid or {"noise": [1e-3, 1e-2, 1e-1], "filter": ["tikhonov", "exponential", "top_k"],
                             "lambda_c": list(np.logspace(math.log10(lo), math.log10(hi), 5))}
    return explore(make_figure, controls, mode=mode, fallback_grid=grid)


# ----------------------------------------------------------------- (2) GD as a filter --------


def gd_explorer(A=None, b=None, x_true=None, *, problem="shaw", n: int = 64, noise: float = 1e-2,
                eta_lmax: float = 1.0, steps: int = 100, max_steps: int = 100_000, seed: int = 0,
                mode: str | None = None, fallback_grid: dict | None = None):
    """Gradient descent as a filter: step ``eta`` (as ``eta lambda_max``) and steps ``n`` sliders.

    Left: the Landweber factors ``1 - (1 - eta lambda)^n`` (exactly n GD steps on
    ``A^T A x = A^T b`` from 0) against the exponential ``1 - exp(-lambda eta n)``. Right: the error
    ``||x_n - x_true||`` vs n (semiconvergence) with the current n and the best n marked.
    """
    A, b, x_true, U, sigma, V = _problem(A, b, x_true, problem, n)
    lam = sigma**2
    lmax = float(lam.max())
    beta = U.T @ _noisy(b, noise, seed)
    coef = beta / np.where(sigma > 0, sigma, 1)  # pseudoinverse coefficients u_k^T b / sigma_k
    proj = V.T @ x_true
    perp2 = max(float(x_true @ x_true - proj @ proj), 0.0)
    n_grid = np.unique(np.round(np.logspace(0, math.log10(max_steps), 60)).astype(int))

    def errors(factors):  # ||V (f c) - x_true|| for each row of factors
        return np.sqrt(((factors * coef - proj) ** 2).sum(-1) + perp2)

    def make_figure(eta_lmax, steps):
        eta, steps = eta_lmax / lmax, max(1, int(round(steps)))
        gd, flow = F.landweber(eta, steps), F.exponential(eta * steps)
        left = filter_factors_figure({gd.label: gd(lam), flow.label: flow(lam)}, lam=lam,
                                     eigenvalues=lam, title="n GD steps vs gradient flow t = eta n")
        curves = {"landweber (GD)": (n_grid, errors(1 - (1 - eta * lam[None]) ** n_grid[:, None])),
                  "exponential t = eta n": (n_grid, errors(-np.expm1(-lam[None] * eta * n_grid[:, None])))}
        right = error_curve_figure(curves, current=steps, log_y=True, title="semiconvergence")
        return side_by_side([left, right], title=f"eta lambda_max = {eta_lmax:.3g}, n = {steps}, t = eta n = {eta * steps:.3g}")

    controls = {
        "eta_lmax": widgets.FloatSlider(value=eta_lmax, min=0.05, max=1.95, step=0.05, description="eta*lam_max",
                                        continuous_update=False),
        "steps": _log_slider("steps n", steps, 1, max_steps),
    }
    grid = fallback_grid or {"eta_lmax": [0.5, 1.0, 1.9],
                             "steps": [int(s) for s in np.unique(np.round(np.logspace(0, math.log10(max_steps), 9)))]}
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

    ``t = kappa / mean(lambda)`` (``= kappa d_in / N`` since ``trace(C) = N``). ``K`` comes from the
    rule (``"ratio"``: ``K = ceil(r d_in)``; otherwise ``rules[name](lambda)``, by default the
    :mod:`swudi_lab.spectral.rank_rules` registry). Left: exponential(t), top-K and SWUDI factors
    on the spectrum; right: the normalized spectrum with ``K`` marked.

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

    def make_figure(kappa, ratio, rule):
        t = kappa_time(kappa, d, float(lam.sum()))  # trace = N: t = kappa d_in / N
        K = math.ceil(ratio * d) if rule == "ratio" else min(d, max(1, _apply_rule(rules[rule], lam)))
        filters = {F.exponential(t).label: F.exponential(t), F.top_k(k=K).label: F.top_k(k=K),
                   F.swudi(t, k=K).label: F.swudi(t, k=K)}
        left = filter_factors_figure(filters, eigenvalues=lam, title="factors on the spectrum")
        marks = {f"ratio r={ratio:.2f}": math.ceil(ratio * d)}
        if rule != "ratio":
            marks[rule] = K
        right = spectra_figure({"lambda": lam}, normalize=True, ranks=marks, title="spectrum and chosen K")
        n_txt = f", N = {n_tasks}" if n_tasks else ""
        return side_by_side([left, right], title=f"kappa = {kappa:.3g} (t = {t:.4g}{n_txt}, d_in = {d}), "
                                                 f"K = {K} ({rule})")

    controls = {
        "kappa": _log_slider("kappa", kappa, 1e-2, 1e3),
        "ratio": widgets.FloatSlider(value=ratio, min=0.05, max=1.0, step=0.05, description="ratio r",
                                     continuous_update=False),
        "rule": widgets.Dropdown(options=options, value=rule, description="K rule"),
    }
    grid = fallback_grid or {"kappa": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0], "ratio": [0.25, 0.5, 0.65, 0.8, 1.0]}
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
                   per_task: bool = True, mode: str | None = None, fallback_grid: dict | None = None):
    """Explore precomputed merge accuracies over (kappa or t, SWUDI ratio r).

    Args:
        results: a callable ``(kappa, ratio) -> {task: accuracy}`` (evaluated once on
            ``kappas x ratios``), a dict ``{(kappa, ratio): {task: accuracy}}``, or a list of rows
            ``{"kappa" (or "t"): .., "ratio": .., task: accuracy, ...}``. An ``"average"``/``"avg"``
            entry is used as the average, else the mean over tasks.
        x_name: label of the first parameter (``"kappa"`` or ``"t"``).
        references: horizontal lines, e.g. ``{"closed form": 82.33, "WUDI": 84.63}``.
        per_task: also draw one thin curve per task.
    Left: accuracy vs ``x_name`` at the selected ratio; right: accuracy vs ratio at the selected ``x_name``;
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

    def make_figure(x, ratio):
        left = accuracy_curve_figure(curves([(k, (k, ratio)) for k in xs]), x_title=x_name, current=x,
                                     references=references, title=f"accuracy vs {x_name} at r = {ratio:.3g}")
        right = accuracy_curve_figure(curves([(r, (x, r)) for r in rs]), x_title="SWUDI ratio r = K / d_in",
                                      log_x=False, current=ratio, references=references,
                                      title=f"accuracy vs r at {x_name} = {x:.3g}")
        avg = _average(table[(x, ratio)]) if (x, ratio) in table else float("nan")
        return side_by_side([left, right], title=f"{x_name} = {x:.3g}, r = {ratio:.3g}: average accuracy {avg:.2f}")

    controls = {
        "x": widgets.SelectionSlider(options=xs, value=xs[len(xs) // 2], description=x_name, continuous_update=False),
        "ratio": widgets.SelectionSlider(options=rs, value=rs[-1], description="ratio r", continuous_update=False),
    }
    return explore(make_figure, controls, mode=mode, fallback_grid=fallback_grid, max_frames=max(64, len(xs) * len(rs)))
