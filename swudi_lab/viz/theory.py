"""Figures of the theory: filter factors, Picard plot, spectra, semiconvergence, L-curve, noise.

Notation is docs/design.md: eigenvalues ``lambda`` of C (or ``lambda = sigma^2`` for ``A x = b``),
filter factors ``f(lambda)``, time ``t``, scale-free time ``kappa = t N / d_in``, rank ``K``.
Every function takes plain numpy / torch arrays, dicts and lists and returns a ``go.Figure``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .style import DASHES, Colors, as_array, color, finish, int_ticks, log_safe, mark_x, new_figure

__all__ = [
    "filter_factors_figure",
    "picard_figure",
    "spectra_figure",
    "error_curve_figure",
    "l_curve_figure",
    "empirical_factors_figure",
    "noise_amplification_figure",
    "solutions_figure",
]


def _label(filt) -> str:
    return getattr(filt, "label", None) or str(filt)


def filter_factors_figure(filters, lam=None, *, eigenvalues=None, n_points: int = 400,
                          eigenvalues_name: str = "lambda_k",
                          title: str = "Filter factors f(lambda): how much of each eigen-direction is solved"
                          ) -> go.Figure:
    """Filter factors ``f(lambda)`` of several filters on one ``lambda`` axis (log x).

    ``f = 1`` solves a direction exactly (pseudoinverse), ``f = 0`` keeps the start ``theta0``.

    Args:
        filters: a ``Filter``, a list of them, or a dict ``label -> Filter`` or
            ``label -> array of factors`` (factors must then be given on ``lam``).
        lam: (n,) points where the filters are evaluated (any order; arrays of factors follow
            it, and are sorted with it). Default: the sorted ``eigenvalues``
            if given (the factors a real C actually gets: top-K depends on the spectrum),
            else a log grid over ``[1e-6, 10]``.
        eigenvalues: optional (d,) eigenvalues of a real C, drawn as a rug at ``f = 0``.
        eigenvalues_name: what the rug's eigenvalues are, for its legend entry: ``"lambda_k"``
            (default), ``"of C"`` for a merge layer, ``"sigma_k^2 of A"`` for ``A x = b``.
        n_points: size of the default grid.
    """
    if hasattr(filters, "label") or callable(filters) and not isinstance(filters, dict):
        filters = [filters]
    if isinstance(filters, dict):
        items = list(filters.items())
    else:
        items = [(_label(f), f) for f in filters]
    if not items:
        raise ValueError("filters is empty")
    eig = None if eigenvalues is None else np.sort(as_array("eigenvalues", eigenvalues))
    on_eigenvalues = False
    if lam is None:
        if eig is not None and (eig > 0).any():
            lam, on_eigenvalues = eig[eig > 0], True
        else:
            lam = np.logspace(-6, 1, n_points)
    dense = None
    if on_eigenvalues and lam is not None and lam.size > 1:
        # A filter of lambda alone (it has a slope at 0: Landweber, exponential, Tikhonov) is drawn as
        # the curve it is, on a fine grid over the spectrum: joined only at the eigenvalues it would
        # be a straight ramp across a gap of the spectrum.
        dense = np.union1d(np.logspace(np.log10(lam.min()), np.log10(lam.max()), n_points), lam)
    lam = as_array("lam", lam)
    order = np.argsort(lam, kind="stable")  # factors given as arrays follow lam's order
    lam = lam[order]
    fig = new_figure(title, "eigenvalue lambda", "filter factor f(lambda)", log_x=True)
    colors = Colors()
    for i, (name, f) in enumerate(items):
        pointwise = callable(f) and getattr(f, "slope0", None) is not None
        x = dense if (pointwise and dense is not None) else lam
        y = as_array(f"filters[{name!r}]", f(x) if callable(f) else f)
        if y.shape != x.shape:
            raise ValueError(f"filters[{name!r}] has {y.shape} factors, lam has {x.shape}")
        if not callable(f):
            y = y[order]
        # a filter that depends on the spectrum (top-K, SWUDI) is known at the eigenvalues only:
        # drawn as steps between them, never as a ramp across a gap
        shape = "hv" if (callable(f) and not pointwise and on_eigenvalues) else "linear"
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines",
                                 line=dict(color=colors(name), width=2.5, dash=DASHES[i % len(DASHES)], shape=shape),
                                 hovertemplate="lambda=%{x:.3g}<br>f(lambda)=%{y:.3f}<extra>" + name + "</extra>"))
    if eig is not None:
        fig.add_trace(go.Scatter(x=log_safe(eig), y=np.full(eig.shape, -0.04), mode="markers",
                                 name=f"eigenvalues {eigenvalues_name} (d={eig.size})",
                                 marker=dict(symbol="line-ns-open", size=10, color="rgba(0,0,0,0.45)"),
                                 hovertemplate="lambda=%{x:.3g}<extra>eigenvalue</extra>"))
    fig.update_yaxes(range=[-0.08, 1.08])
    return finish(fig)


def picard_figure(sigma, beta, *, noise_level: float | None = None,
                  title: str = "Picard plot: coefficients must decay faster than sigma_k") -> go.Figure:
    """Discrete Picard condition: ``sigma_k``, ``|u_k^T b|`` and ``|u_k^T b| / sigma_k`` vs k (log y).

    The naive solution ``x = sum_k (u_k^T b / sigma_k) v_k`` is only meaningful while
    ``|u_k^T b|`` decays faster than ``sigma_k``; where the coefficients flatten at the noise level
    the ratio explodes and a filter must cut (``f(lambda = sigma^2)`` small).

    Args:
        sigma: (n,) singular values of A, descending.
        beta: (n,) coefficients ``u_k^T b`` (signs are ignored).
        noise_level: optional horizontal marker, e.g. the noise std per component.
    """
    sigma = as_array("sigma", sigma)
    beta = np.abs(as_array("beta", beta))
    if beta.shape != sigma.shape:
        raise ValueError(f"beta must have sigma's shape {sigma.shape}, got {beta.shape}")
    k = np.arange(1, sigma.size + 1)
    ratio = np.where(sigma > 0, beta / np.where(sigma > 0, sigma, 1), np.nan)
    fig = new_figure(title, "index k", "value (log)", log_y=True)
    for name, y, c, sym in [("sigma_k", sigma, "#000000", "circle"),
                            ("|u_k^T b|", beta, color("landweber"), "x"),
                            ("|u_k^T b| / sigma_k", ratio, color("swudi"), "diamond-open")]:
        fig.add_trace(go.Scatter(x=k, y=log_safe(y), name=name, mode="lines+markers",
                                 line=dict(color=c, width=1.5), marker=dict(symbol=sym, size=6, color=c),
                                 hovertemplate="k=%{x}<br>" + name + "=%{y:.3g}<extra></extra>"))
    if noise_level is not None:
        fig.add_hline(y=float(noise_level), line=dict(color="#999", dash="dash"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"noise level {noise_level:.3g}",
                                 line=dict(color="#999", dash="dash")))
    int_ticks(fig, "x", k)
    return finish(fig)


def spectra_figure(spectra, *, normalize: bool = False, ranks=None, fraction: bool = False,
                   title: str | None = None) -> go.Figure:
    """Eigenvalue spectra ``lambda_k`` vs k (log y), optionally normalized and with chosen K marked.

    Args:
        spectra: dict ``name -> (d,) eigenvalues`` (any order; sorted descending here), or one array.
        normalize: plot ``lambda / mean(lambda)``; since ``trace(C) = N`` this is ``lambda d_in / N``,
            so spectra of different layers and models share one scale (1 = the mean direction).
        ranks: ``{K_name: K}`` for all spectra, or ``{spectrum_name: {K_name: K}}``; each K is a
            vertical line (e.g. the rank rules of SWUDI-A, or ``K = ceil(0.65 d_in)``).
        fraction: x axis ``k / d`` instead of k (compare layers of different width d_in).
    """
    if not isinstance(spectra, dict):
        spectra = {"lambda": spectra}
    if not spectra:
        raise ValueError("spectra is empty")
    y_title = "lambda_k / mean(lambda) = lambda_k d_in / N" if normalize else "eigenvalue lambda_k"
    x_title = "k / d_in" if fraction else "index k (descending lambda)"
    fig = new_figure(title or ("Normalized spectra of C" if normalize else "Spectra of C"),
                     x_title, y_title, log_y=True)
    colors = Colors()
    for name, lam in spectra.items():
        lam = np.sort(as_array(f"spectra[{name!r}]", lam))[::-1]
        if normalize:
            m = lam.mean()
            if m <= 0:
                raise ValueError(f"spectra[{name!r}] has mean <= 0, cannot normalize")
            lam = lam / m
        d = lam.size
        k = np.arange(1, d + 1) / (d if fraction else 1)
        fig.add_trace(go.Scatter(x=k, y=log_safe(lam), name=name, mode="lines",
                                 line=dict(color=colors(name), width=2),
                                 hovertemplate="k=%{x:.3g}<br>lambda=%{y:.3g}<extra>" + name + "</extra>"))
    # Each K is a vertical line named in the legend (labels at the top would overprint when the Ks
    # are close): in its spectrum's colour when several spectra have one, else in its rule's.
    rule_colors = Colors()
    for spec_name, marks in _rank_marks(ranks, spectra):
        d = np.asarray(spectra[spec_name]).size if spec_name else None
        several = bool(spec_name) and len(spectra) > 1
        for i, (k_name, K) in enumerate(marks.items()):
            x = K / d if (fraction and d) else K
            text = f"{k_name}: K = {K}" + (f" ({spec_name})" if several else "")
            c = colors(spec_name) if several else ("#444" if k_name.lower() == "k" else rule_colors(k_name))
            dash = ["dot", "dash", "dashdot", "longdash"][i % 4]
            mark_x(fig, x, "", c, dash=dash)
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=text,
                                     line=dict(color=c, dash=dash, width=1.5), hoverinfo="skip"))
    if not fraction:
        int_ticks(fig, "x", [1, max(np.asarray(v).size for v in spectra.values())])
    return finish(fig)


def _rank_marks(ranks, spectra):
    if not ranks:
        return []
    if all(isinstance(v, dict) for v in ranks.values()):
        unknown = set(ranks) - set(spectra)
        if unknown:
            raise ValueError(f"ranks names unknown spectra {sorted(unknown)}")
        return list(ranks.items())
    only = next(iter(spectra)) if len(spectra) == 1 else None
    return [(only, ranks)]


def error_curve_figure(curves, *, x_title: str = "gradient steps n", y_title: str = "error ||x - x_true||",
                       log_x: bool = True, log_y: bool = False, mark_min: bool = True,
                       current: float | None = None,
                       title: str = "Semiconvergence: the error first falls, then rises as noise is fitted"
                       ) -> go.Figure:
    """Error vs a regularization parameter (GD steps n, t, alpha, K) for one or several filters.

    Args:
        curves: dict ``name -> (x, err)`` with two (m,) arrays.
        x_title, y_title: axis labels (say which parameter: ``n``, ``t``, ``kappa``, ``alpha``, ``K``).
        mark_min: mark each curve's minimum (the best stopping point / parameter) with a star.
        current: optional x value drawn as a vertical line (the slider's position in an explorer).
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = new_figure(title, x_title, y_title, log_x=log_x, log_y=log_y)
    colors = Colors()
    for j, (name, xy) in enumerate(curves.items()):
        if len(xy) != 2:
            raise ValueError(f"curves[{name!r}] must be a pair (x, err)")
        x, y = as_array(f"curves[{name!r}] x", xy[0]), as_array(f"curves[{name!r}] err", xy[1])
        if x.shape != y.shape:
            raise ValueError(f"curves[{name!r}]: x has shape {x.shape}, err {y.shape}")
        c = colors(name)
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines", line=dict(color=c, width=2.5,
                                                                              dash=DASHES[j % len(DASHES)]),
                                 hovertemplate=x_title + "=%{x:.4g}<br>" + y_title + "=%{y:.4g}<extra>"
                                 + name + "</extra>"))
        if mark_min:
            i = int(np.argmin(y))
            fig.add_trace(go.Scatter(x=[x[i]], y=[y[i]], mode="markers", name=f"min of {name}",
                                     marker=dict(symbol="star", size=14, color=c, line=dict(color="white", width=1)),
                                     hovertemplate=f"best {x_title}={x[i]:.4g}<br>{y_title}={y[i]:.4g}<extra></extra>"))
    if current is not None:
        mark_x(fig, float(current), f"current {current:.4g}", "#444")
    return finish(fig)


def l_curve_figure(residual_norms, solution_norms, *, params=None, param_name: str = "alpha",
                   corner: int | None = None, chosen=None,
                   title: str = "L-curve: residual norm vs solution norm (log-log)") -> go.Figure:
    """The L-curve ``(||A x_f - b||, ||x_f||)`` traced by a parameter, with corner and choices marked.

    Args:
        residual_norms, solution_norms: (m,) arrays, one entry per parameter value.
        params: optional (m,) parameter values (``alpha``, ``t``, K ...) shown on hover.
        param_name: the parameter's name for hover text.
        corner: index of the L-curve corner (maximum curvature), marked with a star.
        chosen: dict ``rule name -> index`` (e.g. ``{"GCV": 12, "discrepancy": 15, "oracle": 13}``).
    """
    r = as_array("residual_norms", residual_norms)
    s = as_array("solution_norms", solution_norms)
    if r.shape != s.shape:
        raise ValueError(f"solution_norms must have residual_norms' shape {r.shape}, got {s.shape}")
    p = None if params is None else as_array("params", params)
    if p is not None and p.shape != r.shape:
        raise ValueError(f"params must have shape {r.shape}, got {p.shape}")
    fig = new_figure(title, "residual norm ||A x - b||", "solution norm ||x||", log_x=True, log_y=True)
    hover = ("residual=%{x:.3g}<br>||x||=%{y:.3g}" +
             ("<br>" + param_name + "=%{customdata:.3g}" if p is not None else "") + "<extra></extra>")
    fig.add_trace(go.Scatter(x=log_safe(r), y=log_safe(s), customdata=p, mode="lines+markers", name="L-curve",
                             line=dict(color="#444", width=2), marker=dict(size=4), hovertemplate=hover))
    points = dict(chosen or {})
    colors = Colors()
    if corner is not None:
        points = {"corner": corner, **points}
    for i, (name, idx) in enumerate(points.items()):
        if not 0 <= int(idx) < r.size:
            raise ValueError(f"index {idx} for {name!r} is outside 0..{r.size - 1}")
        idx = int(idx)
        label = f"{name}" + (f" ({param_name}={p[idx]:.3g})" if p is not None else "")
        fig.add_trace(go.Scatter(x=[r[idx]], y=[s[idx]], mode="markers", name=label,
                                 marker=dict(symbol=["star", "diamond", "square", "triangle-up", "cross"][i % 5],
                                             size=14, color=colors(name), line=dict(color="white", width=1)),
                                 hovertemplate=label + "<br>residual=%{x:.3g}<br>||x||=%{y:.3g}<extra></extra>"))
    return finish(fig)


def empirical_factors_figure(lam, factors, t_eff=None, *,
                             title: str = "Empirical filter factors of an optimizer vs 1 - exp(-lambda t_eff)"
                             ) -> go.Figure:
    """Filter factors measured on a GD/Adam trajectory against the fitted exponential filter.

    Per direction ``f_k = 1 - (theta_n - theta*) q_k / (theta0 - theta*) q_k`` (measured by the
    iterative module); if the optimizer acts as gradient flow, ``f_k ~ 1 - exp(-lambda_k t_eff)``.

    Args:
        lam: (d,) eigenvalues of C.
        factors: (d,) empirical factors, or dict ``name -> (d,)`` (e.g. ``{"GD": ..., "Adam": ...}``).
        t_eff: fitted effective time (number) or dict ``name -> t_eff``; draws the exponential.
    """
    lam = as_array("lam", lam)
    if not isinstance(factors, dict):
        factors = {"empirical": factors}
        if t_eff is not None and not isinstance(t_eff, dict):
            t_eff = {"empirical": t_eff}
    elif t_eff is not None and not isinstance(t_eff, dict):
        t_eff = {name: t_eff for name in factors}
    t_eff = t_eff or {}
    order = np.argsort(lam)
    grid = np.logspace(np.log10(max(lam[lam > 0].min(), 1e-12)) if (lam > 0).any() else -6,
                       np.log10(max(lam.max(), 1e-12)), 300)
    fig = new_figure(title, "eigenvalue lambda", "filter factor f(lambda)", log_x=True)
    colors = Colors()
    for name, f in factors.items():
        f = as_array(f"factors[{name!r}]", f)
        if f.shape != lam.shape:
            raise ValueError(f"factors[{name!r}] has shape {f.shape}, lam has {lam.shape}")
        c = colors(name)
        fig.add_trace(go.Scatter(x=log_safe(lam[order]), y=f[order], mode="markers", name=f"{name} (measured)",
                                 marker=dict(color=c, size=5, opacity=0.6),
                                 hovertemplate="lambda=%{x:.3g}<br>f=%{y:.3f}<extra>" + name + "</extra>"))
        if name in t_eff:
            t = float(t_eff[name])
            fig.add_trace(go.Scatter(x=grid, y=-np.expm1(-grid * t), mode="lines",
                                     name=f"1 - exp(-lambda t_eff), t_eff={t:.4g}",
                                     line=dict(color=c, width=2.5, dash="dash"),
                                     hovertemplate="lambda=%{x:.3g}<br>f=%{y:.3f}<extra>t_eff=" + f"{t:.4g}</extra>"))
    return finish(fig)


def noise_amplification_figure(lam, coeffs, filters=None, *,
                               title: str = "Noise amplification: |D q_k| / lambda_k explodes at small lambda"
                               ) -> go.Figure:
    """Per-direction coefficients of the pseudoinverse ``|D q_k| / lambda_k`` vs ``lambda_k`` (log-log),
    against the filtered ones ``f(lambda_k) |D q_k| / lambda_k``.

    With proxy noise ``D q_k = lambda_k r_k + xi_k`` the pseudoinverse returns ``r_k + xi_k / lambda_k``:
    the small eigenvalues amplify noise; a filter damps exactly those directions.

    Args:
        lam: (d,) eigenvalues. coeffs: (d,) norms ``|D q_k|`` (or ``|u_k^T b| sigma_k`` for ``A x = b``).
        filters: optional ``Filter``s (list, or dict ``label -> Filter | (d,) factors``).
    """
    lam = as_array("lam", lam)
    c = np.abs(as_array("coeffs", coeffs))
    if c.shape != lam.shape:
        raise ValueError(f"coeffs must have lam's shape {lam.shape}, got {c.shape}")
    order = np.argsort(lam)[::-1]
    lam, c = lam[order], c[order]
    safe = np.where(lam > 0, lam, np.nan)
    fig = new_figure(title, "eigenvalue lambda_k", "coefficient |D q_k| f(lambda_k) / lambda_k", log_x=True, log_y=True)
    fig.add_trace(go.Scatter(x=safe, y=log_safe(c / safe), mode="markers", name="pseudoinverse (f = 1)",
                             marker=dict(color=color("pseudoinverse"), size=6),
                             hovertemplate="lambda=%{x:.3g}<br>|D q|/lambda=%{y:.3g}<extra>pseudoinverse</extra>"))
    if filters is not None:
        items = filters.items() if isinstance(filters, dict) else [(_label(f), f) for f in
                                                                   (filters if isinstance(filters, (list, tuple)) else [filters])]
        colors = Colors()
        colors("pseudoinverse")
        for name, f in items:
            fk = as_array(f"filters[{name!r}]", f(lam) if callable(f) else np.asarray(f)[order])
            fig.add_trace(go.Scatter(x=safe, y=log_safe(fk * c / safe), mode="markers", name=name,
                                     marker=dict(color=colors(name), size=6, symbol="x"),
                                     hovertemplate="lambda=%{x:.3g}<br>f |D q|/lambda=%{y:.3g}<extra>" + name + "</extra>"))
    return finish(fig)


def solutions_figure(x_true, solutions, *, grid=None, y_title: str = "x_j",
                     title: str = "Solutions vs the truth") -> go.Figure:
    """A true solution and one or several reconstructions on one axis.

    Args:
        x_true: (n,) true solution (drawn black), or ``None``.
        solutions: dict ``name -> (n,)`` (e.g. ``{"pseudoinverse": x_pinv, "tikhonov(alpha=1e-3)": x_f}``).
        grid: optional (n,) abscissa (default: index ``0..n-1``).
        y_title: the y axis (default ``"x_j"``; e.g. ``"b_i"`` for data).

    Every curve has its own colour and dash (a solution on top of another stays visible).
    """
    if not solutions and x_true is None:
        raise ValueError("solutions is empty and x_true is None")
    fig = new_figure(title, "position" if grid is not None else "component j", y_title)
    n = None
    if x_true is not None:
        xt = as_array("x_true", x_true)
        n = xt.size
    for name, x in solutions.items():
        xs = as_array(f"solutions[{name!r}]", x)
        if n is not None and xs.size != n:
            raise ValueError(f"solutions[{name!r}] has {xs.size} entries, x_true has {n}")
        n = xs.size
    g = np.arange(n) if grid is None else as_array("grid", grid)
    if g.size != n:
        raise ValueError(f"grid has {g.size} entries, solutions have {n}")
    if x_true is not None:
        fig.add_trace(go.Scatter(x=g, y=xt, name="truth x_true", mode="lines",
                                 line=dict(color=color("truth"), width=3),
                                 hovertemplate="j=%{x}<br>x_true=%{y:.4g}<extra></extra>"))
    colors = Colors()
    if x_true is not None:
        colors("truth")
    for i, (name, x) in enumerate(solutions.items()):
        fig.add_trace(go.Scatter(x=g, y=as_array(name, x), name=name, mode="lines",
                                 line=dict(color=colors(name), width=2, dash=DASHES[(i + (x_true is not None)) % len(DASHES)]),
                                 hovertemplate="j=%{x}<br>x=%{y:.4g}<extra>" + name + "</extra>"))
    if grid is None:
        int_ticks(fig, "x", [0, n - 1])
    return finish(fig)
