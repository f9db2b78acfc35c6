"""Interactive explorers: sliders and dropdowns that redraw swudi_lab figures.

One generic helper, :func:`explore`, serves every explorer. It takes ``make_figure(**values) ->
go.Figure`` and a dict of controls and renders in one of three modes:

``"widgets"`` (default in Jupyter / JupyterLab / VS Code)
    ipywidgets controls above an ``Output``; on every change the output is cleared and the new
    figure is shown with ``display(fig)`` (the ``interactive_output`` pattern). We do *not* use
    plotly's ``FigureWidget``: it needs the anywidget front-end and is the usual cause of blank
    plots. Redrawing a fresh figure is simple and works wherever ipywidgets work.

``"plotly-sliders"`` (default in Colab, or ``SWUDI_LAB_WIDGETS=plotly-sliders``)
    Colab is unreliable with ``FigureWidget`` and with plotly inside an ipywidgets ``Output``. So
    the figure is precomputed on a grid of control values (``fallback_grid``) and returned as one
    plain plotly figure with a plotly slider over animation frames. It needs no kernel, so it also
    works in exported static HTML and in nbviewer. Several controls become one slider over their
    combinations (plotly sliders cannot combine independent frames without JavaScript).

``"static"`` (or ``SWUDI_LAB_WIDGETS=static``)
    Just the figure for the current values: for tests, HTML export and non-interactive runs.

The mode is chosen by the ``mode`` argument, else the ``SWUDI_LAB_WIDGETS`` environment
variable, else ``"plotly-sliders"`` in Colab (:func:`in_colab`), else ``"widgets"``.

Frames carry explicit axis ranges (``Plotly.animate`` does not autorange). Notebook renderers do
not auto-play frames; ``fig.write_html`` does unless given ``auto_play=False``. Call
:func:`setup_notebook` once in a notebook's setup cell: it picks a renderer that also survives
HTML export (``"plotly_mimetype+notebook"``; ``"colab"`` in Colab) and the device.

The ready-made explorers used by the notebooks are in :mod:`swudi_lab.viz.explorers` (also
exported by :mod:`swudi_lab.viz`).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from typing import Callable

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

MODES = ("widgets", "plotly-sliders", "static")
ENV_VAR = "SWUDI_LAB_WIDGETS"

__all__ = ["MODES", "ENV_VAR", "in_colab", "resolve_mode", "setup_notebook", "Explorer", "explore", "default_grid",
           "fit_labels", "readout"]


def in_colab() -> bool:
    """Whether this kernel runs in Google Colab: ``google.colab`` is imported, or ``$COLAB_NOTEBOOK_ID``
    is set (plotly's own test since 6.8: the import test fails in VS Code's Colab kernels)."""
    return "google.colab" in sys.modules or "COLAB_NOTEBOOK_ID" in os.environ


def resolve_mode(mode: str | None = None) -> str:
    """The rendering mode: ``mode`` if given, else ``$SWUDI_LAB_WIDGETS``, else Colab -> ``"plotly-sliders"``,
    else ``"widgets"``."""
    chosen = mode or os.environ.get(ENV_VAR) or ("plotly-sliders" if in_colab() else "widgets")
    if chosen not in MODES:
        source = "mode" if mode else ENV_VAR
        raise ValueError(f"{source} must be one of {MODES}, got {chosen!r}")
    return chosen


def setup_notebook(renderer: str | None = None) -> str:
    """A notebook's setup: choose plotly's renderer and the device, print one line, return the device.

    Renderer: ``"colab"`` in Colab (:func:`in_colab`); elsewhere ``"plotly_mimetype+notebook"``,
    which renders in JupyterLab (mimetype) *and* embeds plotly.js as HTML, so figures survive HTML
    export and nbviewer without network access. Pass ``renderer`` (any ``plotly.io.renderers``
    name) to override. Device: ``"cuda"`` when available, else ``"cpu"``. The printed line names
    the swudi_lab version, the device and the explorers' mode (:func:`resolve_mode`, which fails
    here on a bad ``$SWUDI_LAB_WIDGETS`` rather than at the first explorer).
    """
    import plotly.io as pio
    import torch

    from .. import __version__

    mode = resolve_mode()
    pio.renderers.default = renderer or ("colab" if in_colab() else "plotly_mimetype+notebook")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"swudi_lab {__version__} | device: {device} | explorers: {mode}")
    return device


def readout(value, digits: int = 3) -> str:
    """A number as a readout a student reads: ``1000 -> "1000"``, ``13.541666 -> "13.5"``,
    ``0.00123 -> "0.00123"``, ``1.3e-05 -> "1.3·10⁻⁵"``, ``True -> "True"``.

    Integers (and floats that are integers, up to 10^6) print without decimals or exponent; other
    numbers with ``digits`` significant digits, plain between 10^-3 and 10^5, else as a power of ten.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits}g}"
    mant, exp = f"{v:.{max(digits - 1, 0)}e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    sup = str(int(exp)).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return ("" if mant == "1" else f"{mant}·") + f"10{sup}"


def fit_labels(controls) -> list:
    """Controls that read well; returns the widgets to lay out in their place.

    Every description takes the width it needs (``description_width = "initial"``), so a label
    such as ``eta*lam_max`` is never cut to ``eta*lam_…``, and prints its maths
    (:func:`swudi_lab.viz.style.pretty`: ``η·λ<sub>max</sub>``). A log slider's readout (d3's ``.3g``
    prints ``1.00e+3`` for 1000) is replaced by a label that shows :func:`readout` of its value.
    """
    out = []
    for w in controls:
        style = getattr(w, "style", None)
        if getattr(w, "description", "") and style is not None and hasattr(style, "description_width"):
            style.description_width = "initial"
            if hasattr(w, "description_allow_html"):  # maths as maths: eta*lam_max -> η·λ_max
                from .style import pretty

                w.description, w.description_allow_html = pretty(w.description), True
        if isinstance(w, widgets.FloatLogSlider) and w.readout:
            w.readout = False
            label = widgets.Label(readout(w.value), layout=widgets.Layout(min_width="4em"))
            w.observe(lambda change, label=label: setattr(label, "value", readout(change["new"])), names="value")
            out.append(widgets.HBox([w, label]))
        else:
            out.append(w)
    return out


def _value(control):
    return control.value if hasattr(control, "value") else control


class Explorer(widgets.VBox):
    """Controls + an ``Output`` that shows ``make_figure(**values)`` and redraws on every change.

    Attributes: ``controls`` (dict name -> widget), ``output`` (the ``Output``), ``figure``
    (the last figure drawn), ``error`` (the last exception from ``make_figure``, or ``None``).
    """

    def __init__(self, make_figure: Callable[..., go.Figure], controls: dict):
        self.make_figure = make_figure
        self.controls = controls
        self.output = widgets.Output()
        self.figure, self.error = None, None
        live = [w for w in controls.values() if isinstance(w, widgets.Widget)]
        for w in live:
            w.observe(self._on_change, names="value")
        row = fit_labels(live)
        super().__init__([widgets.HBox(row, layout=widgets.Layout(flex_flow="row wrap")), self.output])
        self.redraw()

    @property
    def values(self) -> dict:
        """Current control values, as passed to ``make_figure``."""
        return {k: _value(w) for k, w in self.controls.items()}

    def _on_change(self, change):
        self.redraw()

    def redraw(self):
        """Rebuild the figure for the current values and show it in the output."""
        from IPython import get_ipython
        from IPython.display import clear_output, display

        try:
            self.figure, self.error = self.make_figure(**self.values), None
        except Exception as exc:  # show the message, keep the explorer alive
            self.error = exc
        if get_ipython() is None:  # plain Python (tests): nothing to display into
            return
        with self.output:
            clear_output(wait=True)
            if self.error is not None:
                print(f"{type(self.error).__name__}: {self.error}")
            else:
                display(self.figure)


def default_grid(control, n: int = 7) -> list:
    """Values a control takes in ``"plotly-sliders"`` mode: ``n`` points of a slider (log-spaced for
    ``FloatLogSlider``), every option of a dropdown / selection slider, ``[False, True]`` of a
    checkbox; always including the current value."""
    v = _value(control)
    if hasattr(control, "_options_values"):
        return list(control._options_values)
    if isinstance(v, bool):
        return [False, True]
    if hasattr(control, "base") and hasattr(control, "min"):  # FloatLogSlider: min/max are exponents
        vals = list(control.base ** np.linspace(control.min, control.max, n))
    elif hasattr(control, "min") and hasattr(control, "max"):
        vals = list(np.linspace(control.min, control.max, n))
        if isinstance(v, int):
            vals = [int(round(x)) for x in vals]
    else:
        return [v]
    vals = [float(x) if isinstance(v, float) else x for x in vals]
    return sorted(set(vals) | {v})


def _label(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _nearest(v, grid):
    if v in grid:
        return v
    try:
        return min(grid, key=lambda g: abs(float(g) - float(v)))
    except (TypeError, ValueError):
        return grid[0]


def _grids(controls: dict, fallback_grid, max_frames: int) -> dict:
    if fallback_grid is not None:
        unknown = set(fallback_grid) - set(controls)
        if unknown:
            raise ValueError(f"fallback_grid names unknown controls {sorted(unknown)}; controls: {list(controls)}")
        grids = {k: list(fallback_grid.get(k, [_value(w)])) for k, w in controls.items()}
        if any(len(g) == 0 for g in grids.values()):
            raise ValueError("fallback_grid has an empty list of values")
    else:
        sliders = [k for k, w in controls.items() if hasattr(w, "min") and not hasattr(w, "_options_values")]
        fixed = math.prod(len(default_grid(w)) for k, w in controls.items() if k not in sliders)
        per = max(2, min(9, int((max_frames / max(fixed, 1)) ** (1 / max(len(sliders), 1)))))
        grids = {k: default_grid(w, per) for k, w in controls.items()}
    total = math.prod(len(g) for g in grids.values())
    if total > max_frames:
        raise ValueError(f"fallback_grid makes {total} frames > max_frames={max_frames}; "
                         "pass a smaller fallback_grid (dict control -> list of values)")
    return grids


def _padded(traces: list, n: int) -> list:
    """Pad a frame to ``n`` traces with empty ones: plotly animates trace i of a frame onto trace i."""
    return traces + [dict(type="scatter", x=[], y=[], showlegend=False, hoverinfo="skip")] * (n - len(traces))


def _as_dict(fig: go.Figure) -> dict:
    """``{"data": [...], "layout": {...}}`` keeping numpy arrays (``Figure.to_dict`` would base64 them)."""
    return {"data": [tr.to_plotly_json() for tr in fig.data], "layout": fig.layout.to_plotly_json()}


def _finite(values, log: bool) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):  # categorical axis
        return np.array([])
    v = v[np.isfinite(v)]
    return np.log10(v[v > 0]) if log else v


def _frame_ranges(fig: dict) -> dict:
    """Explicit axis ranges of one frame, from its data and reference lines.

    ``Plotly.animate`` does not re-run autorange, so a frame whose data live on another scale
    (more noise, another filter) would be clipped; each frame therefore carries its own range
    (in log10 units on log axes, as plotly expects).
    """
    out, lay = {}, fig["layout"]
    refs = {tr.get(f"{c}axis", c) for tr in fig["data"] for c in "xy"}  # "x", "y2", ...
    keys = {k for k in lay if k.startswith(("xaxis", "yaxis"))} | {f"{r[0]}axis{r[1:]}" for r in refs}
    for key in sorted(keys):
        ax = lay.get(key, {})
        if ax.get("range") is not None:
            out[key] = dict(range=ax["range"])
            continue
        letter, ref = key[0], key[0] + key[5:]
        log = ax.get("type") == "log"
        vals = [_finite(tr.get(letter, []), log) for tr in fig["data"] if tr.get(f"{letter}axis", letter) == ref]
        vals += [_finite([sh.get(f"{letter}0"), sh.get(f"{letter}1")], log)
                 for sh in fig["layout"].get("shapes", []) if sh.get(f"{letter}ref", letter) == ref]
        v = np.concatenate(vals) if vals else np.array([])
        if v.size == 0:
            out[key] = dict(autorange=True)
            continue
        lo, hi = float(v.min()), float(v.max())
        pad = 0.05 * (hi - lo) if hi > lo else (0.5 if log else max(abs(lo) * 0.1, 1.0))
        out[key] = dict(range=[lo - pad, hi + pad], autorange=False)
    return out


def _slider_figure(make_figure, controls: dict, fallback_grid, max_frames: int) -> go.Figure:
    grids = _grids(controls, fallback_grid, max_frames)
    varying = [k for k, g in grids.items() if len(g) > 1]
    combos = [dict(zip(grids, c)) for c in itertools.product(*grids.values())]
    figs = [_as_dict(make_figure(**c)) for c in combos]
    n_traces = max(len(f["data"]) for f in figs)
    current = {k: _nearest(_value(w), grids[k]) for k, w in controls.items()}
    active = next((i for i, c in enumerate(combos) if c == current), 0)

    def name(c):
        return ", ".join(f"{k}={_label(c[k])}" for k in varying) or "current"

    frames = []
    for c, f in zip(combos, figs):
        lay = f["layout"]
        layout = {k: lay.get(k, []) for k in ("shapes", "annotations")}
        layout["title"] = lay.get("title", {})
        layout.update(_frame_ranges(f))
        frames.append(dict(name=name(c), data=_padded(f["data"], n_traces), layout=layout))
    # Step labels are the values only ("0.01, tikhonov, 1e-05"); the prefix names the controls.
    steps = [dict(method="animate", label=", ".join(_label(c[k]) for k in varying) or "current",
                  args=[[name(c)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                        transition=dict(duration=0))]) for c in combos]
    prefix = ", ".join(varying) + " = " if varying else ""
    layout = dict(figs[active]["layout"])
    layout["sliders"] = [dict(active=active, steps=steps, pad=dict(t=50), font=dict(size=10 if len(steps) > 8 else 12),
                              currentvalue=dict(prefix=prefix, font=dict(size=13)))]
    layout["height"] = layout.get("height", 450) + 80
    return go.Figure(data=_padded(figs[active]["data"], n_traces), layout=layout, frames=frames)


def explore(make_figure: Callable[..., go.Figure], controls: dict, *, mode: str | None = None,
            fallback_grid: dict | None = None, max_frames: int = 64):
    """Make an explorer of ``make_figure(**values) -> go.Figure`` driven by ``controls``.

    Args:
        make_figure: builds the figure for one set of control values (keyword arguments named
            like the controls).
        controls: dict ``name -> ipywidget`` (anything with ``.value``; sliders, dropdowns,
            checkboxes) or ``name -> plain value`` (held fixed).
        mode: ``"widgets"``, ``"plotly-sliders"`` or ``"static"`` (see the module docstring);
            default from ``$SWUDI_LAB_WIDGETS`` / Colab detection.
        fallback_grid: for ``"plotly-sliders"``: dict ``name -> list of values`` to precompute;
            controls not named are held at their current value. Default: :func:`default_grid`
            of every control, with slider resolution reduced to stay within ``max_frames``.
        max_frames: upper bound on precomputed frames (``ValueError`` above it).

    Returns an :class:`Explorer` widget (``"widgets"``) or a ``go.Figure`` (other modes); display it.
    """
    if not callable(make_figure):
        raise ValueError("make_figure must be callable: make_figure(**values) -> go.Figure")
    if not isinstance(controls, dict) or not controls:
        raise ValueError("controls must be a non-empty dict name -> widget")
    mode = resolve_mode(mode)
    if mode == "static":
        return make_figure(**{k: _value(w) for k, w in controls.items()})
    if mode == "plotly-sliders":
        return _slider_figure(make_figure, controls, fallback_grid, max_frames)
    return Explorer(make_figure, controls)
