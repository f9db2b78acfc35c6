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

# The palette, defined once, colour-blind safe: Okabe & Ito's eight colours and Paul Tol's muted
# scheme (distinguishable with every common colour-vision deficiency; no red-green pairs of equal
# lightness). Methods that are the same estimator share a colour: WUDI (GD/Adam) ~ Landweber,
# SWUDI ~ its exponential-times-top-K filter. Within one figure every curve still gets its own
# colour (:class:`Colors`).
PALETTE: dict[str, str] = {
    "pseudoinverse": "#999999",   # the closed form D C^+ : grey, the ill-posed reference
    "landweber": "#0072B2",       # gradient descent / WUDI: blue
    "exponential": "#009E73",     # gradient flow 1 - exp(-lambda t): bluish green
    "tikhonov": "#CC79A7",        # ridge: reddish purple
    "top_k": "#E69F00",           # hard truncation: orange
    "swudi": "#D55E00",           # SWUDI: vermillion
    "swudi_a": "#882255",         # SWUDI-A: wine
    "wiener": "#332288",          # Wiener: indigo
    "average": "#999933",         # weight averaging: olive
    "task_arithmetic": "#44AA99",  # task arithmetic: teal
    "ties": "#56B4E9",            # TIES: sky blue
    "optmerge": "#AA4499",        # OptMerge: purple
    # parameter-choice rules (notebooks 1 and 3)
    "oracle": "#000000",
    "gcv": "#0072B2",
    "l_curve": "#E69F00",
    "corner": "#E69F00",
    "discrepancy": "#009E73",
    "zero": "#BBBBBB",
    "truth": "#000000",           # true solution / reference data: black
    "task_average": "#000000",    # average accuracy over tasks (a summary curve): black
    "lambda": "#333333",          # an eigenvalue spectrum
    "base": "#777777",
    "experts": "#000000",
}

ALIASES: dict[str, str] = {
    "closed_form": "pseudoinverse", "closed": "pseudoinverse", "pinv": "pseudoinverse",
    "gd": "landweber", "wudi": "landweber", "adam": "landweber", "wudi_adam": "landweber",
    "gradient_descent": "landweber", "exp": "exponential", "gradient_flow": "exponential",
    "ridge": "tikhonov", "tsvd": "top_k", "topk": "top_k", "truncated": "top_k",
    "swudi-a": "swudi_a", "swudia": "swudi_a", "mean": "average", "ta": "task_arithmetic",
    "x_true": "truth", "true": "truth", "individual": "experts", "expert": "experts",
    "l-curve": "l_curve", "lcurve": "l_curve", "gcv_function": "gcv",
}

DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
"""Line dashes cycled over the curves of one figure, so curves that coincide stay visible."""

QUALITATIVE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#882255", "#332288",
               "#44AA99", "#999933", "#AA4499", "#000000", "#DDCC77", "#117733", "#88CCEE"]
"""The qualitative cycle for curves without a palette colour, and for a second curve of one kind
in a figure: colour-blind-safe colours in the order they stay distinct (Okabe-Ito, then Tol muted)."""

FONT = "Inter, Helvetica, Arial, sans-serif"

_AXIS = dict(showgrid=True, gridcolor="#eee", zeroline=False, linecolor="#444", ticks="outside", mirror=True,
             showline=True, automargin=True,
             # powers of ten, never SI prefixes ("10µ", "1B"); minor log ticks unlabelled, not a bare "4"
             exponentformat="power", minorloglabels="none", separatethousands=False)

TEMPLATE = go.layout.Template(
    layout=dict(
        font=dict(family=FONT, size=13, color="#222"),
        title=dict(x=0.02, xanchor="left", y=0.975, yanchor="top", font=dict(size=16)),  # inside the figure
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=QUALITATIVE[:10],
        hovermode="closest",
        legend=dict(bgcolor="rgba(255,255,255,0.7)", borderwidth=0),
        margin=dict(l=70, r=30, t=70, b=60),
        xaxis=_AXIS,
        yaxis=_AXIS,
    )
)
"""The plotly template used by every figure (set per figure; the global default is left alone).

Axes: powers of ten on log axes (``exponentformat="power"``, no SI prefixes, no bare minor-tick
digits), margins that grow to fit long tick labels (``automargin``)."""


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
    return QUALITATIVE[h % len(QUALITATIVE)]


class Colors:
    """The colours of one figure: every distinct curve name gets its own colour.

    A name gets its palette colour (:func:`color`) unless an earlier name of the same figure has it
    already (two ``exponential(...)`` curves, two layers, two rules of one kind); it then gets the
    first colour of :data:`QUALITATIVE` that the figure does not use yet (so do names outside the
    palette, in the order they come: blue, orange, green, ...). The same name always gets
    the same colour, so derived traces (a curve's minimum, its band) match their curve.
    """

    def __init__(self):
        self.by_name: dict[str, str] = {}

    def __call__(self, name) -> str:
        name = str(name)
        if name in self.by_name:
            return self.by_name[name]
        used = set(self.by_name.values())
        c = PALETTE.get(kind(name))  # names outside the palette: the qualitative cycle, in order
        if c is None or c in used:
            c = next((q for q in QUALITATIVE if q not in used), QUALITATIVE[len(used) % len(QUALITATIVE)])
        self.by_name[name] = c
        return c


# ASCII maths -> Unicode and HTML sub/superscripts, which plotly draws the same in JupyterLab, in an
# exported page and in Colab (no MathJax needed).
_GREEK = {"lambda": "λ", "lam": "λ", "sigma": "σ", "kappa": "κ", "theta": "θ", "tau": "τ", "eta": "η",
          "alpha": "α", "beta": "β", "gamma": "γ", "rho": "ρ", "xi": "ξ", "nu": "ν", "mu": "μ",
          "epsilon": "ε", "delta": "δ", "Delta": "Δ", "Sigma": "Σ"}
_GREEK_RE = re.compile(r"(?<![A-Za-z])(" + "|".join(sorted(_GREEK, key=len, reverse=True)) + r")(?![A-Za-z])")
_SUB_RE = re.compile(r"(?<![A-Za-z<])([A-Za-z\u0370-\u03ff])_(\{[^}]*\}|[A-Za-z0-9]+)")
_SUP_RE = re.compile(r"(?<=[\w)>\u0370-\u03ff])\^(\{[^}]*\}|[-+]?[A-Za-z0-9.]+|\+)")


_E_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)e([+-]?\d+)(?![\w.])")


def _times_ten(mant: str, exp: int) -> str:
    """``mant·10^exp`` in HTML (``10^exp`` alone when the mantissa is 1), with a true minus sign."""
    return ("" if mant in ("1", "1.0") else f"{mant}·") + f"10<sup>{str(exp).replace('-', '−')}</sup>"


def _power(m) -> str:
    return _times_ten(m.group(1), int(m.group(2)))


def tick_text(v: float, plain: bool | None = None) -> str:
    """A tick label: a plain number between 10^-3 and 10^4 (``0.2``, ``50``), else ``2·10⁻⁵``
    (``plain`` forces one or the other)."""
    if v == 0:
        return "0"
    if plain if plain is not None else 1e-3 <= abs(v) < 1e4:
        return f"{v:.6g}"
    mant, exp = f"{v:.1e}".split("e")
    return _times_ten(mant.rstrip("0").rstrip("."), int(exp))


def _log_ticks(lo: float, hi: float):
    """Tick values and labels for a log axis spanning less than two decades ``[lo, hi]``: 1-2-5 steps
    (1..9 when that gives fewer than four), every one labelled as a number: plotly would label one
    power of ten and leave the rest bare or empty."""
    k0, k1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    for mants in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        vals = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mants if lo <= m * 10.0 ** k <= hi]
        if len(vals) >= 4:
            break
    plain = all(1e-3 <= v < 1e4 for v in vals)  # one style on one axis
    return vals, [tick_text(v, plain) for v in vals]


def _fix_log_axes(fig: go.Figure) -> None:
    for key in [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
        ax = fig.layout[key]
        if ax.type != "log" or ax.tickvals is not None or ax.dtick is not None:
            continue
        letter, ref = key[0], key[0] + key[5:]
        vals = [v[v > 0] for v in _axis_values(fig, letter, ref)]
        if ax.range is not None:
            vals.append(10.0 ** np.asarray(ax.range, dtype=float))
        v = np.concatenate(vals) if vals else np.array([])
        if v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        if hi / lo < 10 ** 2.2:
            pad = (hi / lo) ** 0.05 if hi > lo else 1.5
            tv, tt = _log_ticks(lo / pad, hi * pad)
            if len(tv) >= 2:
                ax.update(tickmode="array", tickvals=tv, ticktext=tt)


def _axis_values(fig: go.Figure, letter: str, ref: str) -> list[np.ndarray]:
    """The finite numeric ``x`` (``letter="x"``) or ``y`` values of every trace drawn on axis ``ref``."""
    vals = []
    for tr in fig.data:
        if (getattr(tr, f"{letter}axis", None) or letter) != ref or getattr(tr, letter, None) is None:
            continue
        try:
            v = np.asarray(getattr(tr, letter), dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        vals.append(v[np.isfinite(v)])
    return vals


def _data_extent(fig: go.Figure, letter: str, ref: str, log: bool):
    vals = [np.log10(v[v > 0]) if log else v for v in _axis_values(fig, letter, ref)]
    v = np.concatenate(vals) if vals else np.array([])
    return (float(v.min()), float(v.max())) if v.size else None


def _fix_mark_labels(fig: go.Figure) -> None:
    """A marker label in the right third of its axis reads leftwards, so it is not cut at the edge."""
    for ann in fig.layout.annotations:
        if ann.name != "mark_x" or ann.x is None:
            continue
        ref = ann.xref or "x"
        ext = _data_extent(fig, "x", ref, _axis_is_log(fig, ref))
        if ext and ext[1] > ext[0] and (float(ann.x) - ext[0]) / (ext[1] - ext[0]) > 0.67:
            ann.update(xanchor="right", xshift=-3)


def pretty(text):
    """Plain-text maths as a textbook prints it, for figure titles, axes, legends and labels.

    ``"lambda_k d_in / N"`` -> ``"λ<sub>k</sub> d<sub>in</sub> / N"``, ``"||x - x_true||"`` ->
    ``"‖x - x<sub>true</sub>‖"``, ``"D C^+"`` -> ``"D C<sup>+</sup>"``, ``"10^-3"`` -> ``"10<sup>−3</sup>"``,
    ``"eta*lam_max"`` -> ``"η·λ<sub>max</sub>"``. Identifiers keep their underscores (``top_k``,
    ``task_arithmetic``: only a single letter is subscripted). ``None`` stays ``None``; idempotent.
    """
    if text is None or not isinstance(text, str) or not text:
        return text
    t = text.replace("||", "‖")
    t = _E_RE.sub(_power, t)  # 8.96e-07 -> 8.96·10⁻⁷
    t = _GREEK_RE.sub(lambda m: _GREEK[m.group(1)], t)
    t = re.sub(r"([\u0370-\u03ff])(\d+)(?![\d.])", r"\1<sub>\2</sub>", t)  # theta0 -> θ₀
    t = re.sub(r"(?<=[\w)\u0370-\u03ff])\*(?=[\w(\u0370-\u03ff])", "·", t)
    t = _SUB_RE.sub(lambda m: f"{m.group(1)}<sub>{m.group(2).strip('{}')}</sub>", t)
    t = _SUP_RE.sub(lambda m: "<sup>" + m.group(1).strip("{}").replace("-", "−") + "</sup>", t)
    return t


def int_ticks(fig: go.Figure, axis: str = "x", values=None, *, max_ticks: int = 10) -> go.Figure:
    """Integer ticks on an axis of integers (an index k, a block, a count): never ``0.5`` steps.

    ``values``: the integers shown (default: the x or y of every trace on that axis). The step is
    1, 2, 5, 10, 20, ... so that at most ``max_ticks`` ticks are labelled.
    """
    letter = axis[0]
    if values is None:
        values = np.concatenate(_axis_values(fig, letter, axis) or [np.array([])])
    v = np.asarray([float(x) for x in values if x is not None and np.isfinite(float(x))])
    span = float(v.max() - v.min()) if v.size else 1.0
    step = 1
    for m in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        step = m
        if span / m <= max_ticks:
            break
    key = f"{letter}axis{axis[1:]}"
    fig.layout[key].update(tickmode="linear", tick0=0, dtick=step, tickformat="d")
    return fig


def rgba(hex_color: str, alpha: float) -> str:
    """``"#1f77b4", 0.2 -> "rgba(31,119,180,0.2)"`` (for ± std bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def new_figure(title: str, x_title: str, y_title: str, *, log_x: bool = False,
               log_y: bool = False, height: int = 420) -> go.Figure:
    """An empty figure in the swudi_lab look with a teaching title and labelled axes."""
    return go.Figure(layout=dict(
        template=TEMPLATE, title=dict(text=wrap(pretty(title))), height=height,
        xaxis=dict(title=dict(text=pretty(x_title)), type="log" if log_x else None),
        yaxis=dict(title=dict(text=pretty(y_title)), type="log" if log_y else None)))


def wrap(text, width: int = 90):
    """Break a long title into lines of at most ``width`` characters (``<br>``): plotly never wraps,
    it cuts a title at the figure's edge."""
    if not text or not isinstance(text, str) or len(re.sub(r"<[^>]+>", "", text)) <= width or "<br>" in text:
        return text
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(re.sub(r"<[^>]+>", "", line + " " + word)) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "<br>".join(lines + [line])


def finish(fig: go.Figure) -> go.Figure:
    """The last touch of every swudi_lab figure: maths in titles, axis titles, legend entries and
    labels as Unicode / sub- and superscripts (:func:`pretty`), long titles wrapped (:func:`wrap`),
    and a log axis spanning less than two decades labelled with plain numbers (``0.2 0.5 1 2``)."""
    _fix_log_axes(fig)
    _fix_mark_labels(fig)
    lay = fig.layout
    if lay.title and lay.title.text:
        lay.title.text = wrap(pretty(lay.title.text))
    for key in [k for k in lay if k.startswith(("xaxis", "yaxis"))]:
        ax = lay[key]
        if ax.title and ax.title.text:
            ax.title.text = pretty(ax.title.text)
    for tr in fig.data:
        if getattr(tr, "name", None):
            tr.name = pretty(tr.name)
        cb = getattr(getattr(tr, "marker", None), "colorbar", None) if not hasattr(tr, "colorbar") else tr.colorbar
        if cb is not None and cb.title and cb.title.text:
            cb.title.text = pretty(cb.title.text)
    for ann in lay.annotations:
        if ann.text:
            ann.text = pretty(ann.text)
    return fig


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


def _marks(fig: go.Figure, kind_: str, ref: str) -> int:
    """How many labels of ``mark_x`` / ``mark_y`` are already on this axis (to stack the next one)."""
    return sum(1 for a in fig.layout.annotations if a.name == kind_ and (a.xref if kind_ == "mark_x" else a.yref) == ref)


def mark_x(fig: go.Figure, x: float, text: str = "", color_: str = "#444", *, dash: str = "dot",
           xref: str = "x", yref: str = "y") -> go.Figure:
    """Vertical marker line at data value ``x`` with a label at the top (correct on log axes too).

    Plotly shapes take data coordinates but annotations take ``log10`` on log axes; this helper
    hides that difference. Labels of several markers on one axis are stacked downwards from the
    top, on a white ground, so they never overprint each other.
    """
    fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, xref=xref, yref=f"{yref} domain",
                  line=dict(color=color_, dash=dash, width=1.5))
    if text:
        ax = float(np.log10(x)) if _axis_is_log(fig, xref) and x > 0 else x
        n = _marks(fig, "mark_x", xref)
        fig.add_annotation(x=ax, y=1 - 0.08 * (n % 6), xref=xref, yref=f"{yref} domain", text=pretty(text),
                           showarrow=False, name="mark_x", xanchor="left", yanchor="top", xshift=3, yshift=-2,
                           bgcolor="rgba(255,255,255,0.8)", font=dict(color=color_, size=11))
    return fig


def mark_y(fig: go.Figure, y: float, text: str = "", color_: str = "#444", *, dash: str = "dash",
           xref: str = "x", yref: str = "y") -> go.Figure:
    """Horizontal reference line at data value ``y`` with a label above its right end.

    Labels of several lines on one axis step leftwards (right end, three quarters, half, ...), so
    lines at nearly the same height keep readable labels.
    """
    fig.add_shape(type="line", x0=0, x1=1, y0=y, y1=y, xref=f"{xref} domain", yref=yref,
                  line=dict(color=color_, dash=dash, width=1.5))
    if text:
        ay = float(np.log10(y)) if _axis_is_log(fig, yref) and y > 0 else y
        n = _marks(fig, "mark_y", yref)
        fig.add_annotation(x=1 - 0.25 * (n % 4), y=ay, xref=f"{xref} domain", yref=yref, text=pretty(text),
                           showarrow=False, name="mark_y", xanchor="right", yanchor="bottom",
                           bgcolor="rgba(255,255,255,0.8)", font=dict(color=color_, size=11))
    return fig


def side_by_side(figs: list[go.Figure], *, title: str = "", subplot_titles=None,
                 height: int = 430, spacing: float = 0.1) -> go.Figure:
    """Put several swudi_lab figures next to each other in one figure (one row of panels).

    Traces, axes (type, title, range, ticks), marker lines and labels of ``figs[i]`` go to panel i,
    and each panel keeps its own legend, under the panel (plotly's ``legend``, ``legend2``, ...):
    a legend never lists another panel's curves. Used by the explorers, which must return a single
    figure. (Built as one dict, much faster than ``make_subplots``.)
    """
    if not figs:
        raise ValueError("figs is empty")
    n = len(figs)
    titles = subplot_titles or [f.layout.title.text or "" for f in figs]
    width = (1 - spacing * (n - 1)) / n
    entries = [sum(1 for tr in f.data if tr.name and tr.showlegend is not False) for f in figs]
    row, top, below = 19, 95, 80  # px per legend entry; top margin; axis ticks + title under a panel
    bottom = below + row * max(entries) + 10 if max(entries) else 60
    total = height + max(0, bottom - 60)
    plot_h = total - top - bottom
    layout = dict(template=TEMPLATE, title=dict(text=wrap(pretty(title), 110), y=0.98, yanchor="top"),
                  height=total, shapes=[], annotations=[], margin=dict(t=top, b=bottom), showlegend=True)
    data = []
    for i, fig in enumerate(figs):
        sx = "" if i == 0 else str(i + 1)
        legend = "legend" if i == 0 else f"legend{i + 1}"
        x0 = i * (width + spacing)
        remap = {"x": f"x{sx}", "y": f"y{sx}", "x domain": f"x{sx} domain", "y domain": f"y{sx} domain",
                 "paper": "paper"}
        for tr in fig.data:
            d = tr.to_plotly_json()
            d["xaxis"], d["yaxis"], d["legend"] = f"x{sx}", f"y{sx}", legend
            if d.get("name"):
                d["name"] = pretty(d["name"])
            data.append(d)
        layout[legend] = dict(x=x0, xanchor="left", y=-below / max(plot_h, 1), yanchor="top", orientation="v",
                              bgcolor="rgba(255,255,255,0)", font=dict(size=11), tracegroupgap=2)
        for axis, other, dom in (("xaxis", f"y{sx}", [x0, x0 + width]), ("yaxis", f"x{sx}", [0, 1])):
            src = fig.layout[axis].to_plotly_json()
            if (src.get("title") or {}).get("text"):
                src["title"] = dict(src["title"], text=pretty(src["title"]["text"]))
            layout[f"{axis}{sx}"] = dict(src, anchor=other, domain=dom)
        for shape in fig.layout.shapes:
            layout["shapes"].append(shape.to_plotly_json() | {"xref": remap[shape.xref or "x"],
                                                              "yref": remap[shape.yref or "y"]})
        for ann in fig.layout.annotations:
            layout["annotations"].append(ann.to_plotly_json() | {"xref": remap[ann.xref or "x"],
                                                                "yref": remap[ann.yref or "y"],
                                                                "text": pretty(ann.text)})
        layout["annotations"].append(dict(text=f"<b>{wrap(pretty(titles[i]), int(100 * width))}</b>",
                                          x=x0 + width / 2, y=1.0, xref="paper", yref="paper", xanchor="center",
                                          yanchor="bottom", showarrow=False, yshift=8, font=dict(size=13)))
    return go.Figure(data=data, layout=layout, _validate=False)  # parts were validated already
