"""The HTML report of ``make demo`` and ``make study``: the method table's figures in one self-contained page.

Built from the per-seed results (:func:`swudi_lab.demo.run_demo`) with the figures of
:mod:`swudi_lab.viz`; plotly.js is embedded once, so the page opens offline. A figure whose sweep
the profile did not run (the demo has only the kappa sweep) is left out.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .evaluate import average_accuracy
from .files import atomic_write_text
from .viz import (
    accuracy_bar_figure,
    accuracy_curve_figure,
    cost_bars_figure,
    layer_ranks_figure,
    pareto_figure,
    task_heatmap_figure,
)

__all__ = ["report_figures", "write_report"]


def report_figures(per_seed: list[dict]) -> dict:
    """Title -> ``go.Figure`` for the report, from the per-seed results of ``run_seed`` (only the sweeps they hold)."""
    first = per_seed[0]
    labels = list(first["methods"])
    acc = {lab: [r["methods"][lab]["avg_acc"] for r in per_seed] for lab in labels}
    base = float(np.mean([average_accuracy(r["base"]) for r in per_seed]))
    experts = float(np.mean([average_accuracy(r["experts"]) for r in per_seed]))
    closed = float(np.mean([r["sweeps"]["closed_form"]["avg_acc"] for r in per_seed]))
    refs = {"closed form D C^+": closed, "base + heads": base, "experts": experts}
    figs = {}
    figs["Average accuracy per method"] = accuracy_bar_figure(acc, base=base, experts=experts)
    figs["Per-task accuracy"] = task_heatmap_figure(
        {lab: {t: float(np.mean([r["methods"][lab]["per_task"][t] for r in per_seed])) for t in first["tasks"]}
         for lab in labels})

    def curves(key, xkey):
        return np.array([p[xkey] for p in first["sweeps"][key]]), np.array(
            [[p["avg_acc"] for p in r["sweeps"][key]] for r in per_seed])

    if "wudi_steps" in first["sweeps"]:
        steps = {lab: (np.array([p["steps"] for p in pts]),
                       np.array([[p["avg_acc"] for p in r["sweeps"]["wudi_steps"][lab]] for r in per_seed]))
                 for lab, pts in first["sweeps"]["wudi_steps"].items()}
        figs["WUDI vs Adam steps"] = accuracy_curve_figure(
            {f"WUDI, {lab}": xy for lab, xy in steps.items()}, x_title="Adam steps n", references=refs,
            title="WUDI accuracy vs Adam steps, against the closed form (mean ± std)")
    figs["Accuracy vs kappa"] = accuracy_curve_figure(
        {"exponential filter": curves("kappa", "kappa")}, references=refs,
        title="Exponential filter: accuracy vs kappa = t N / d_in (one eigh per layer)")
    if "ratio" in first["sweeps"]:
        figs["Accuracy vs SWUDI ratio"] = accuracy_curve_figure(
            {"SWUDI (matched kappa)": curves("ratio", "ratio")}, x_title="SWUDI ratio r (K = ceil(r d_in))",
            log_x=False, references=refs, title="SWUDI: accuracy vs the kept fraction r")
    ranks = first["methods"].get("swudi_a", {}).get("ranks")
    if ranks:
        figs["SWUDI-A ranks"] = layer_ranks_figure({k: v["k"] for k, v in ranks.items()},
                                                   d_in={k: v["d_in"] for k, v in ranks.items()})
    seconds = {lab: float(np.mean([r["methods"][lab]["seconds"] for r in per_seed])) for lab in labels}
    figs["Accuracy vs merge time"] = pareto_figure({lab: (seconds[lab], float(np.mean(acc[lab]))) for lab in labels})
    tasks = first["tasks"]
    if "cross_effect" in first:
        figs["Each expert alone on every task"] = task_heatmap_figure(
            {f"+ tau ({s})": {t: float(np.mean([r["cross_effect"][s][t] for r in per_seed])) for t in tasks} for s in tasks},
            y_title="expert added", signed=True,
            title="acc_t(theta0 + tau_s) - acc_t(theta0): diagonal = each expert's gain, elsewhere its interference")
    figs["Merge cost"] = cost_bars_figure(
        {lab: {"time": seconds[lab],
               "memory": float(np.mean([r["methods"][lab]["peak_mb"] for r in per_seed]))} for lab in labels})
    return figs


def write_report(per_seed: list[dict], path, *, table: str = "", title: str = "swudi_lab demo", note: str = "") -> Path:
    """Write a self-contained HTML page (plotly.js inline once) with the figures, the table and ``note``."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} pre{font-size:12px}</style>",
             f"</head><body><h1>{html.escape(title)}: merging the offline ViT zoo</h1>",
             f"<p>Seeds: {', '.join(str(r['seed']) for r in per_seed)}.</p>"]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    if table:
        parts.append(f"<pre>{html.escape(table)}</pre>")
    for i, (fig_title, fig) in enumerate(report_figures(per_seed).items()):
        parts.append(f"<h2>{html.escape(fig_title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), auto_play=False))
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
