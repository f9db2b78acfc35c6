"""Figures of merging results: accuracy per method and task, accuracy vs kappa / ratio / Adam steps,
per-layer ranks of SWUDI-A, the accuracy–time Pareto front and the cost (time, memory) bars.

Inputs are plain dicts of numbers or arrays (``method -> accuracy``), so the figures do not
depend on the classes of the merge engine or the evaluator. Accuracies are in percent.
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import QUALITATIVE, TEMPLATE, Colors, as_array, color, finish, int_ticks, mark_y, new_figure, pretty, rgba

__all__ = [
    "accuracy_bar_figure",
    "published_comparison_figure",
    "task_heatmap_figure",
    "accuracy_curve_figure",
    "adam_steps_figure",
    "layer_ranks_figure",
    "pareto_figure",
    "cost_bars_figure",
    "LAYER_TYPES",
]

LAYER_TYPES = ("qkv", "proj", "fc1", "fc2")
"""Linear layer types of a timm ViT block, in the order the rank figure groups them."""


def _category_labels(fig: go.Figure, names, axis: str = "x") -> None:
    """Print category names with their maths (``"wudi (lr 1e-5)"`` -> ``"wudi (lr 10⁻⁵)"``), keeping the data."""
    names = [str(n) for n in names]
    shown = [pretty(n) for n in names]
    if shown != names:
        fig.layout[f"{axis}axis"].update(tickmode="array", tickvals=names, ticktext=shown)


def _mean_std(name, v):
    a = np.atleast_1d(as_array(name, v, ndim=None)).ravel()
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else 0.0), a.size


def accuracy_bar_figure(results, *, base: float | None = None, experts: float | None = None,
                        title: str = "Average accuracy per merging method (mean ± std over seeds)"
                        ) -> go.Figure:
    """Bar per method: mean accuracy over seeds with ± std error bars, plus reference lines.

    Args:
        results: dict ``method -> accuracy`` (a number, or a list/array of one value per seed).
        base: accuracy of the base model (dashed line), e.g. zero-shot.
        experts: average accuracy of the individual experts (the usual upper reference).
    """
    if not results:
        raise ValueError("results is empty")
    names = list(results)
    stats = [_mean_std(f"results[{n!r}]", results[n]) for n in names]
    means, stds, counts = zip(*stats)
    fig = new_figure(title, "method", "average accuracy (%)")
    colors = Colors()
    fig.add_trace(go.Bar(x=names, y=means, name="accuracy", marker_color=[colors(n) for n in names],
                         error_y=dict(type="data", array=stds, visible=any(s > 0 for s in stds)),
                         customdata=np.c_[stds, counts],
                         text=[f"{m:.2f}" for m in means], textposition="outside",
                         hovertemplate="%{x}<br>accuracy=%{y:.2f} ± %{customdata[0]:.2f}"
                                       "<br>seeds=%{customdata[1]}<extra></extra>"))
    lo = min(means) - max(stds)
    for value, text, c in [(base, "base", color("base")), (experts, "experts", color("experts"))]:
        if value is not None:
            mark_y(fig, float(value), f"{text} {value:.2f}", c)
            lo = min(lo, float(value))
    hi = max([m + s for m, s in zip(means, stds)] + [v for v in (base, experts) if v is not None])
    pad = max(1.0, 0.1 * (hi - lo))
    fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_layout(showlegend=False)
    _category_labels(fig, names)
    return finish(fig)


def published_comparison_figure(ours, published=None, *, title: str = "Ours against the published numbers",
                                y_title: str = "average accuracy (%)") -> go.Figure:
    """Bars of our average accuracy per method, with the published value beside it where there is one.

    Args:
        ours: dict ``label -> accuracy``.
        published: dict ``label -> accuracy`` (labels without a published value get our bar alone).
    """
    if not ours:
        raise ValueError("ours is empty")
    published = dict(published or {})
    names = list(ours)
    fig = new_figure(title, "method", y_title)
    colors = Colors()
    fig.add_trace(go.Bar(x=names, y=[float(ours[n]) for n in names], name="swudi_lab (measured)",
                         marker_color=[colors(n) for n in names], text=[f"{float(ours[n]):.1f}" for n in names],
                         textposition="outside", hovertemplate="%{x}<br>ours=%{y:.2f}<extra></extra>"))
    shown = [n for n in names if n in published]
    if shown:
        fig.add_trace(go.Bar(x=shown, y=[float(published[n]) for n in shown], name="published",
                             marker=dict(color="rgba(0,0,0,0)", line=dict(color="#333", width=2)),
                             text=[f"{float(published[n]):.1f}" for n in shown], textposition="outside",
                             hovertemplate="%{x}<br>published=%{y:.2f}<extra></extra>"))
    fig.update_layout(barmode="group", showlegend=bool(shown))
    values = [float(v) for v in ours.values()] + [float(published[n]) for n in shown]
    fig.update_yaxes(range=[0, max(values) * 1.15 + 1])
    _category_labels(fig, names)
    return finish(fig)


def task_heatmap_figure(table, *, title: str = "Accuracy per task (%)", y_title: str = "method",
                        signed: bool = False) -> go.Figure:
    """Heatmap row × task of accuracies (or of accuracy changes), with the values written in the cells.

    Args:
        table: dict ``row -> {task: value}`` (rows are usually methods); tasks missing for a row show
            as blank.
        y_title: what the rows are (e.g. ``"expert added"`` for :func:`swudi_lab.evaluate.cross_effect`).
        signed: the values are changes in points: a diverging red-blue scale centred on 0 (red: worse).
    """
    if not table:
        raise ValueError("table is empty")
    methods = list(table)
    tasks = []
    for m in methods:
        if not isinstance(table[m], dict):
            raise ValueError(f"table[{m!r}] must be a dict task -> accuracy")
        tasks += [t for t in table[m] if t not in tasks]
    z = np.array([[float(table[m].get(t, np.nan)) for t in tasks] for m in methods])
    text = [[("" if np.isnan(v) else f"{v:.1f}") for v in row] for row in z]
    fig = new_figure(title, "task", y_title, height=max(300, 60 + 40 * len(methods)))
    colors = dict(colorscale="RdBu", zmid=0.0, colorbar=dict(title="Δ acc (points)")) if signed else \
        dict(colorscale="Viridis", colorbar=dict(title="acc (%)"))
    value = "change" if signed else "accuracy"
    fig.add_trace(go.Heatmap(z=z, x=tasks, y=methods, text=text, texttemplate="%{text}", **colors,
                             hovertemplate=f"{y_title}=%{{y}}<br>task=%{{x}}<br>{value}=%{{z:.2f}}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    return finish(fig)


def accuracy_curve_figure(curves, *, x_title: str = "scale-free time kappa = t N / d_in",
                          y_title: str = "average accuracy (%)", log_x: bool = True, references=None,
                          current: float | None = None,
                          title: str = "Accuracy vs the regularization parameter (mean ± std)") -> go.Figure:
    """Accuracy curves vs a parameter (kappa, t, SWUDI ratio r, K...) with ± std bands over seeds.

    Args:
        curves: dict ``name -> (x, y)``; ``y`` is (m,) or (seeds, m) — then the mean is drawn and
            a band spans mean ± std.
        x_title: the parameter, e.g. ``"kappa = t N / d_in"`` or ``"SWUDI ratio r = K / d_in"``.
        log_x: log x axis (use ``False`` for the ratio r in (0, 1]).
        references: dict ``name -> accuracy`` drawn as horizontal lines (e.g. closed form, WUDI).
        current: optional x drawn as a vertical line (the explorer's slider).
    """
    from .style import mark_x

    if not curves:
        raise ValueError("curves is empty")
    fig = new_figure(title, x_title, y_title, log_x=log_x)
    colors = Colors()
    for name, xy in curves.items():
        if len(xy) != 2:
            raise ValueError(f"curves[{name!r}] must be a pair (x, y)")
        x = as_array(f"curves[{name!r}] x", xy[0])
        y = as_array(f"curves[{name!r}] y", xy[1], ndim=None)
        y2 = y[None] if y.ndim == 1 else y
        if y2.ndim != 2 or y2.shape[1] != x.size:
            raise ValueError(f"curves[{name!r}]: y must be ({x.size},) or (seeds, {x.size}), got {y.shape}")
        mean = y2.mean(0)
        std = y2.std(0, ddof=1) if y2.shape[0] > 1 else np.zeros_like(mean)
        c = colors(name)
        if y2.shape[0] > 1:
            fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[mean + std, (mean - std)[::-1]],
                                     fill="toself", fillcolor=rgba(c, 0.18), line=dict(width=0), mode="lines",
                                     name=f"{name} ± std", showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=mean, customdata=std, name=name, mode="lines+markers",
                                 line=dict(color=c, width=2.5), marker=dict(size=6),
                                 hovertemplate="x=%{x:.4g}<br>accuracy=%{y:.2f} ± %{customdata:.2f}<extra>"
                                 + name + "</extra>"))
    for name, v in (references or {}).items():
        mark_y(fig, float(v), f"{name} {float(v):.2f}", colors(name))
    if current is not None:
        mark_x(fig, float(current), f"{current:.4g}", "#444")
    return finish(fig)


def adam_steps_figure(steps, accuracy, closed_form: float, *, references=None, name: str = "WUDI (Adam)",
                      title: str = "WUDI accuracy vs Adam steps: early stopping beats the closed form"
                      ) -> go.Figure:
    """Accuracy of WUDI after n Adam steps (log x) with the closed form ``D C^+`` as a horizontal line.

    Semiconvergence in accuracy: WUDI rises above the closed form, peaks (a few hundred steps)
    and decays back toward it as n grows.

    Args:
        steps: (m,) step counts n. accuracy: (m,) or (seeds, m) accuracies.
        closed_form: accuracy of the pseudoinverse solution (the limit n -> infinity).
        references: more horizontal lines, e.g. ``{"SWUDI": 85.55, "exponential(t=300)": 85.10}``.
    """
    refs = {"closed form D C^+": closed_form, **(references or {})}
    fig = accuracy_curve_figure({name: (steps, accuracy)}, x_title="Adam steps n", references=refs,
                                title=title)
    return fig


def _layer_type_and_block(name: str):
    lower = name.lower()
    kind = next((t for t in LAYER_TYPES if re.search(rf"(^|[._]){t}([._]|$)", lower)), "other")
    m = re.search(r"(?:blocks|layers?|resblocks)[._](\d+)", lower) or re.search(r"(\d+)", lower)
    return kind, (int(m.group(1)) if m else None)


def layer_ranks_figure(ranks, d_in=None, *,
                       title: str = "Per-layer ranks K chosen by SWUDI-A, by layer type") -> go.Figure:
    """Chosen rank K per layer vs block index, one line per layer type (qkv, proj, fc1, fc2).

    Args:
        ranks: dict ``layer name -> K`` (e.g. ``"blocks.3.attn.qkv.weight" -> 410``); the type and
            block index are parsed from the name.
        d_in: optional int or dict ``layer name -> d_in``; then ``K / d_in`` is plotted.
    """
    if not ranks:
        raise ValueError("ranks is empty")
    groups: dict[str, list] = {}
    for i, (layer, K) in enumerate(ranks.items()):
        kind, block = _layer_type_and_block(layer)
        d = d_in.get(layer) if isinstance(d_in, dict) else d_in
        if d is not None and d <= 0:
            raise ValueError(f"d_in for {layer!r} must be > 0, got {d}")
        y = float(K) / d if d else float(K)
        groups.setdefault(kind, []).append((block if block is not None else i, y, layer, int(K), d))
    rel = d_in is not None
    fig = new_figure(title, "block index", "K / d_in" if rel else "chosen rank K")
    dashes = {"qkv": "solid", "proj": "dot", "fc1": "dash", "fc2": "dashdot"}
    symbols = {"qkv": "circle", "proj": "square", "fc1": "diamond", "fc2": "triangle-up"}
    palette = dict(zip(LAYER_TYPES, QUALITATIVE))  # four colour-blind-safe colours, one per layer type
    for kind in [*LAYER_TYPES, "other"]:
        if kind not in groups:
            continue
        pts = sorted(groups[kind])
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=kind, mode="lines+markers",
            line=dict(color=palette.get(kind, "#7f7f7f"), dash=dashes.get(kind, "solid"), width=2),
            marker=dict(symbol=symbols.get(kind, "x"), size=8),
            customdata=[[p[2], p[3], p[4] if p[4] else float("nan")] for p in pts],
            hovertemplate="%{customdata[0]}<br>K=%{customdata[1]}<br>d_in=%{customdata[2]}<extra></extra>"))
    if rel:
        top = max(y for pts in groups.values() for _, y, *_ in pts)
        fig.update_yaxes(range=[0, max(1.05, 1.05 * top)])
    int_ticks(fig, "x", [p[0] for pts in groups.values() for p in pts])  # blocks are integers
    return finish(fig)


def pareto_front(times, accs):
    """Indices of the Pareto-optimal points (no other point is both faster and more accurate), by time."""
    order = np.lexsort((-np.asarray(accs), np.asarray(times)))
    front, best = [], -np.inf
    for i in order:
        if accs[i] > best:
            front.append(int(i))
            best = accs[i]
    return front


SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon", "star",
           "cross", "x", "star-triangle-up", "hourglass")
"""Marker symbols cycled over the points of a scatter, so points stay apart without colour too."""


def pareto_figure(points, *, x_range=None, y_range=None,
                  title: str = "Accuracy vs merge time: the Pareto front") -> go.Figure:
    """Scatter of methods in (merge time in seconds, log x; accuracy) with the Pareto front drawn.

    Each method is one marker (its own colour and symbol) named in the legend, in the order of
    ``points``: labels next to the points would pile up where methods are close.

    Args:
        points: dict ``method -> (seconds, accuracy)``.
        x_range, y_range: fixed axis ranges (seconds and %; the x range in seconds, not log10), so
            that an explorer's redraws keep the axes still; default: fitted to the points.
    """
    if not points:
        raise ValueError("points is empty")
    names = list(points)
    vals = [points[n] for n in names]
    for n, v in zip(names, vals):
        if len(v) != 2 or float(v[0]) <= 0:
            raise ValueError(f"points[{n!r}] must be (seconds > 0, accuracy), got {v!r}")
    times = np.array([float(v[0]) for v in vals])
    accs = np.array([float(v[1]) for v in vals])
    fig = new_figure(title, "merge wall-clock time (s, log)", "average accuracy (%)", log_x=True)
    front = pareto_front(times, accs)
    fig.add_trace(go.Scatter(x=times[front], y=accs[front], mode="lines", name="Pareto front",
                             line=dict(color="#999", dash="dash", shape="hv"), hoverinfo="skip"))
    colors = Colors()
    for i, (n, t, a) in enumerate(zip(names, times, accs)):
        fig.add_trace(go.Scatter(x=[t], y=[a], mode="markers", name=n,
                                 marker=dict(color=colors(n), size=13, symbol=SYMBOLS[i % len(SYMBOLS)],
                                             line=dict(color="white", width=1)),
                                 hovertemplate=f"{n}<br>time=%{{x:.3g}} s<br>accuracy=%{{y:.2f}}<extra></extra>"))
    if x_range is not None:
        lo, hi = (float(v) for v in x_range)
        if not 0 < lo < hi:
            raise ValueError(f"x_range must be (lo, hi) seconds with 0 < lo < hi, got {x_range!r}")
        fig.update_xaxes(range=[np.log10(lo), np.log10(hi)], autorange=False)
    if y_range is not None:
        fig.update_yaxes(range=[float(v) for v in y_range], autorange=False)
    fig.update_layout(legend=dict(title=dict(text="method")))
    return finish(fig)


def cost_bars_figure(costs, *, title: str = "Cost of merging: wall-clock time and peak memory") -> go.Figure:
    """Two panels of horizontal bars, one bar per method: merge time (s, log x) and peak memory (MiB).

    The methods are named once, on the left, read horizontally: long names are never rotated,
    cut or overlapping the next panel.

    Args:
        costs: dict ``method -> {"time": seconds, "memory": MiB}`` (``memory`` may be missing/None).
    """
    if not costs:
        raise ValueError("costs is empty")
    names = list(costs)
    for n in names:
        if not isinstance(costs[n], dict) or "time" not in costs[n]:
            raise ValueError(f"costs[{n!r}] must be a dict with 'time' (and optionally 'memory')")
    times = [float(costs[n]["time"]) for n in names]
    mems = [costs[n].get("memory") for n in names]
    mems = [float("nan") if m is None else float(m) for m in mems]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["merge time (s)", "peak memory (MiB)"], shared_yaxes=True,
                        horizontal_spacing=0.06)
    pick = Colors()
    colors = [pick(n) for n in names]
    fig.add_trace(go.Bar(y=names, x=times, orientation="h", name="time", marker_color=colors,
                         text=[f"{t:.3g}" for t in times], textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}<br>time=%{x:.3g} s<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(y=names, x=mems, orientation="h", name="peak memory", marker_color=colors,
                         text=[("" if np.isnan(m) else f"{m:.0f}") for m in mems], textposition="outside",
                         cliponaxis=False, hovertemplate="%{y}<br>peak memory=%{x:.4g} MiB<extra></extra>"), 1, 2)
    pos = [t for t in times if t > 0]
    if pos:  # room for the labels right of the bars
        fig.update_xaxes(type="log", range=[np.log10(min(pos)) - 0.3, np.log10(max(pos)) + 0.6], row=1, col=1)
    else:
        fig.update_xaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="seconds (log)", row=1, col=1)
    finite = [m for m in mems if np.isfinite(m)]
    fig.update_xaxes(title_text="MiB", range=[0, 1.2 * max(finite) if finite and max(finite) > 0 else 1], row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)  # in the order given, top to bottom
    fig.update_layout(template=TEMPLATE, title=title, showlegend=False, height=max(360, 140 + 34 * len(names)))
    return finish(fig)
