"""One look for every swudi_lab figure: a template, one colour per method/filter, small helpers.

Colours are keyed by the *kind* of a curve, not by its legend text: ``"exponential(t=300)"``,
``"exponential"`` and ``"exp"`` share one colour, so a filter looks the same in the theory
figures and in the merging figures. Unknown names get a stable colour from a qualitative palette.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import plotly.graph_objects as go

# The palette, defined once. Methods that are the same estimator share a colour:
# WUDI (GD/Adam) ~ Landweber, SWUDI ~ its exponential-times-top-K filter.
PALETTE: dict[str, str] = {
    "pseudoinverse": "#7f7f7f",   # the closed form D C^+ : grey, the ill-posed reference
    "landweber": "#1f77b4",       # gradient descent / WUDI: blue
    "exponential": "#2ca02c",     # gradient flow 1 - exp(-lambda t): green
    "tikhonov": "#9467bd",        # ridge: purple
    "top_k": "#ff7f0e",           # hard truncation: orange
    "swudi": "#d62728",           # SWUDI: red
    "swudi_a": "#e377c2",         # SWUDI-A: pink
    "wiener": "#8c564b",          # Wiener: brown
    "average": "#bcbd22",         # weight averaging: olive
    "task_arithmetic": "#17becf",  # task arithmetic: cyan
    "ties": "#aec7e8",            # TIES: light blue
    "zero": "#c7c7c7",
    "truth": "#000000",           # true solution / reference data: black
    "task_average": "#000000",    # average accuracy over tasks (a summary curve): black
    "lambda": "#333333",          # an eigenvalue spectrum
    "base": "#7f7f7f",
    "experts": "#000000",
}

ALIASES: dict[str, str] = {
    "closed_form": "pseudoinverse", "closed": "pseudoinverse", "pinv": "pseudoinverse",
    "gd": "landweber", "wudi": "landweber", "adam": "landweber", "wudi_adam": "landweber",
    "gradient_descent": "landweber", "exp": "exponential", "gradient_flow": "exponential",
    "ridge": "tikhonov", "tsvd": "top_k", "topk": "top_k", "truncated": "top_k",
    "swudi-a": "swudi_a", "swudia": "swudi_a", "mean": "average", "ta": "task_arithmetic",
    "x_true": "truth", "true": "truth", "individual": "experts", "expert": "experts",
}

DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
"""Line dashes cycled over the curves of one figure, so curves that coincide stay visible."""

_QUALITATIVE = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                "#31a354", "#756bb1", "#e6550d", "#636363"]

FONT = "Inter, Helvetica, Arial, sans-serif"

TEMPLATE = go.layout.Template(
    layout=dict(
        font=dict(family=FONT, size=13, color="#222"),
        title=dict(x=0.02, xanchor="left", font=dict(size=16)),
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=list(PALETTE.values())[:10],
        hovermode="closest",
        legend=dict(bgcolor="rgba(255,255,255,0.7)", borderwidth=0),
        margin=dict(l=70, r=30, t=70, b=60),
        xaxis=dict(showgrid=True, gridcolor="#eee", zeroline=False, linecolor="#444",
                   ticks="outside", mirror=True, showline=True),
        yaxis=dict(showgrid=True, gridcolor="#eee", zeroline=False, linecolor="#444",
                   ticks="outside", mirror=True, showline=True),
    )
)
"""The plotly template used by every figure (set per figure; the global default is left alone)."""


def kind(name: str) -> str:
    """The palette key of a curve name: ``"exponential(t=300)" -> "exponential"``, ``"WUDI (Adam)" -> "landweber"``.

    The text before any ``(``/``[``/``:``/``,`` is tried whole (``"task arithmetic"``), then its first word.
    """
    head = re.split(r"[(\[:,]", str(name), maxsplit=1)[0].strip().lower()
    for key in (head.replace(" ", "_"), head.split(" ")[0] if head else head):
        if "*" in key and set(key.split("*")) == {"exponential", "top_k"}:
            key = "swudi"  # exponential * top-K is SWUDI's filter
        key = ALIASES.get(key, key)
        if key in PALETTE:
            return key
    return head.replace(" ", "_")


def color(name: str) -> str:
    """The one colour of a method / filter / curve ``name`` (stable across figures and sessions)."""
    key = kind(name)
    if key in PALETTE:
        return PALETTE[key]
    h = int(hashlib.md5(key.encode()).hexdigest(), 16)
    return _QUALITATIVE[h % len(_QUALITATIVE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#1f77b4", 0.2 -> "rgba(31,119,180,0.2)"`` (for ± std bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def new_figure(title: str, x_title: str, y_title: str, *, log_x: bool = False,
               log_y: bool = False, height: int = 420) -> go.Figure:
    """An empty figure in the swudi_lab look with a teaching title and labelled axes."""
    return go.Figure(layout=dict(
        template=TEMPLATE, title=dict(text=title), height=height,
        xaxis=dict(title=dict(text=x_title), type="log" if log_x else None),
        yaxis=dict(title=dict(text=y_title), type="log" if log_y else None)))


def as_array(name: str, x, ndim: int | None = 1) -> np.ndarray:
    """Convert numpy / torch / list input to a float numpy array, validating ``ndim``.

    Raises ``ValueError`` naming the argument on a wrong shape, an empty array or NaN/Inf.
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def log_safe(a: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive entries become NaN (a gap) instead of breaking the axis."""
    return np.where(a > 0, a, np.nan)


def _axis_is_log(fig: go.Figure, axis: str) -> bool:
    """Whether layout axis ``"x"``, ``"x2"``, ``"y"``... is a log axis."""
    name = axis[0] + "axis" + axis[1:]
    ax = fig.layout[name] if name in fig.layout else None
    return ax is not None and ax.type == "log"


def mark_x(fig: go.Figure, x: float, text: str = "", color_: str = "#444", *, dash: str = "dot",
           xref: str = "x", yref: str = "y") -> go.Figure:
    """Vertical marker line at data value ``x`` with a label at the top (correct on log axes too).

    Plotly shapes take data coordinates but annotations take ``log10`` on log axes; this helper
    hides that difference.
    """
    fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, xref=xref, yref=f"{yref} domain",
                  line=dict(color=color_, dash=dash, width=1.5))
    if text:
        ax = float(np.log10(x)) if _axis_is_log(fig, xref) and x > 0 else x
        fig.add_annotation(x=ax, y=1, xref=xref, yref=f"{yref} domain", text=text, showarrow=False,
                           yanchor="bottom", font=dict(color=color_, size=11))
    return fig


def mark_y(fig: go.Figure, y: float, text: str = "", color_: str = "#444", *, dash: str = "dash",
           xref: str = "x", yref: str = "y") -> go.Figure:
    """Horizontal reference line at data value ``y`` with a label at the right end."""
    fig.add_shape(type="line", x0=0, x1=1, y0=y, y1=y, xref=f"{xref} domain", yref=yref,
                  line=dict(color=color_, dash=dash, width=1.5))
    if text:
        ay = float(np.log10(y)) if _axis_is_log(fig, yref) and y > 0 else y
        fig.add_annotation(x=1, y=ay, xref=f"{xref} domain", yref=yref, text=text, showarrow=False,
                           xanchor="right", yanchor="bottom", font=dict(color=color_, size=11))
    return fig


def side_by_side(figs: list[go.Figure], *, title: str = "", subplot_titles=None,
                 height: int = 430, spacing: float = 0.1) -> go.Figure:
    """Put several swudi_lab figures next to each other in one figure (one row of panels).

    Traces, axis types, titles and ranges, marker lines and labels of ``figs[i]`` go to panel i;
    a legend entry that repeats an earlier panel's name is shown once. Used by the explorers,
    which must return a single figure. (Built as one dict, much faster than ``make_subplots``.)
    """
    if not figs:
        raise ValueError("figs is empty")
    n = len(figs)
    titles = subplot_titles or [f.layout.title.text or "" for f in figs]
    width = (1 - spacing * (n - 1)) / n
    layout = dict(template=TEMPLATE, title=dict(text=title, y=0.98, yanchor="top"), height=height, shapes=[],
                  annotations=[], margin=dict(t=95))
    data, seen = [], set()
    for i, fig in enumerate(figs):
        sx = "" if i == 0 else str(i + 1)
        x0 = i * (width + spacing)
        remap = {"x": f"x{sx}", "y": f"y{sx}", "x domain": f"x{sx} domain", "y domain": f"y{sx} domain",
                 "paper": "paper"}
        for tr in fig.data:
            d = tr.to_plotly_json()
            d["xaxis"], d["yaxis"] = f"x{sx}", f"y{sx}"
            name = d.get("name")
            if name and d.get("showlegend") is not False:
                d.setdefault("legendgroup", name)
                if name in seen:
                    d["showlegend"] = False
                seen.add(name)
            data.append(d)
        for axis, other, dom in (("xaxis", f"y{sx}", [x0, x0 + width]), ("yaxis", f"x{sx}", [0, 1])):
            src = fig.layout[axis]
            layout[f"{axis}{sx}"] = dict(type=src.type, title=dict(text=src.title.text), range=src.range,
                                         anchor=other, domain=dom)
        for shape in fig.layout.shapes:
            layout["shapes"].append(shape.to_plotly_json() | {"xref": remap[shape.xref or "x"],
                                                              "yref": remap[shape.yref or "y"]})
        for ann in fig.layout.annotations:
            layout["annotations"].append(ann.to_plotly_json() | {"xref": remap[ann.xref or "x"],
                                                                "yref": remap[ann.yref or "y"]})
        layout["annotations"].append(dict(text=f"<b>{titles[i]}</b>", x=x0 + width / 2, y=1.0, xref="paper",
                                          yref="paper", xanchor="center", yanchor="bottom", showarrow=False,
                                          yshift=20, font=dict(size=13)))
    return go.Figure(data=data, layout=layout, _validate=False)  # parts were validated already
