"""``swudi-lab demo`` (``make demo``): the end-to-end merge on the offline ViT zoo.

For every expert seed: build or reuse the zoo (:mod:`swudi_lab.zoo`), merge its eight experts
with every method of the registry, score each merged backbone with every task's own head
(:mod:`swudi_lab.evaluate`), and run the sweeps that test the paper's claims on our zoo:

* methods at the **paper's defaults** (t = 300 / 1300, lr = 1e-5, ...) and at **scale-matched**
  values: the same scale-free time ``kappa = t N / d_in`` as the paper's CLIP ViT-B/32 layers
  (d_in = 768, N = 8), and a WUDI learning rate relative to the task-vector entries, calibrated so
  that 300 Adam steps act like the exponential filter at the paper's kappa (see
  :func:`calibrate_wudi_lr`);
* WUDI at 100 / 300 / 1000 / 3000 Adam steps against the closed form (semiconvergence);
* accuracy against kappa, one ``eigh`` per layer serving the whole sweep;
* accuracy against the SWUDI ratio r, and the per-layer ranks SWUDI-A chose;
* each expert alone, before any merge (weight disentanglement, :func:`~swudi_lab.evaluate.own_response`
  and :func:`~swudi_lab.evaluate.cross_effect`): the share of task t's gain that ``tau_t / N`` keeps
  (what averaging can keep at best) and what ``tau_s`` alone does to every other task.

Seeds are aggregated as mean ± std. Outputs (``results/demo/``, ``$SWUDI_LAB_RESULTS/demo``): ``summary.json``
(``{"methods": {label: {"avg_acc", "norm_acc", "per_task", "seconds", "peak_mb", ...}},
"experts": ..., "base": ..., "sweeps": ..., "disentanglement": ...}``), ``summary.csv`` and ``report.html`` (plotly).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config.presets import PAPER, ZOO_MATCHED
from .config import paths
from .evaluate import (average_accuracy, cross_effect, evaluate_backbone, mean_std, measure, normalized_accuracy,
                       own_response, recovered_gain)
from .files import atomic_open, atomic_write_text
from .merge import METHODS, merge
from .merge.engine import iter_layer_problems
from .merge.sweep import filter_sweep, per_layer
from .spectral import exponential, kappa_time, live_count, pseudoinverse, swudi
from .spectral.iterative import adam_wudi, empirical_filter_factors, fit_effective_time

__all__ = ["Run", "demo_runs", "calibrate_wudi_lr", "run_seed", "run_demo", "format_table"]

# The paper's setting (CLIP ViT-B/32, d_in = 768, N = 8) and its scale-free times, from the presets.
PAPER_KAPPA_IWUDI = ZOO_MATCHED.params("iwudi")["kappa"]  # 3.125
PAPER_KAPPA_SWUDI = ZOO_MATCHED.params("swudi")["kappa"]  # 13.54
ZOO_D_IN = 128  # width of the zoo's ViT: the filtered method's matched ridge is set on it

WUDI_STEPS = (100, 300, 1000, 3000)
KAPPAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
RATIOS = (0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
LR_REL_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SWEEP_IMAGES = 500  # test images per task for the sweeps (the method table uses the whole split)


@dataclass(frozen=True)
class Run:
    """One merge of the method table: a label, a registry method, its parameters, the setting."""

    label: str
    method: str
    params: dict = field(default_factory=dict)
    setting: str = "paper"  # "paper" defaults or "matched" (scale-matched to the paper's regime)


def demo_runs(lr_rel: float) -> list[Run]:
    """Every registry method at the paper's settings (preset ``clip-vit-b32``), plus the scale-matched
    variants (preset ``zoo-matched``, with WUDI's ``lr_rel`` as calibrated on this zoo).

    ``filtered`` has no published setting: it runs Tikhonov with ``alpha = 1 / t`` (the ridge that
    halves the factors where the exponential filter at time t reaches 1 - 1/e), at the paper's
    t = 300 and at the scale-matched t of a d_in = 128 layer.
    """
    runs = [Run(name, name, PAPER.params(name) if name in PAPER.methods else {}, "paper") for name in METHODS]
    t128 = kappa_time(PAPER_KAPPA_IWUDI, ZOO_D_IN, PAPER.n_experts)
    runs += [
        Run("wudi (matched lr)", "wudi", {**ZOO_MATCHED.params("wudi"), "lr_rel": lr_rel}, "matched"),
        Run(f"iwudi (kappa={PAPER_KAPPA_IWUDI:.3g})", "iwudi", ZOO_MATCHED.params("iwudi"), "matched"),
        Run(f"swudi (kappa={PAPER_KAPPA_SWUDI:.3g})", "swudi", ZOO_MATCHED.params("swudi"), "matched"),
        Run(f"filtered (tikhonov, alpha={1 / t128:.3g})", "filtered", {"filter": "tikhonov", "alpha": 1 / t128},
            "matched"),
    ]
    return runs


def calibrate_wudi_lr(base, experts, *, kappa_target: float = PAPER_KAPPA_IWUDI, steps: int = 300,
                      grid=LR_REL_GRID, device="cpu") -> dict:
    """Scale-matched WUDI learning rate: the ``lr_rel`` whose Adam run acts like ``kappa_target``.

    Adam moves each entry by about ``lr`` per step, so ``lr`` only means something relative to
    the size of the task-vector entries: per layer ``lr = lr_rel * RMS(tau)``. For every
    ``lr_rel`` of the grid, run ``steps`` Adam steps per layer, read the empirical filter factors
    off the result and fit ``1 - exp(-lambda t_eff)`` (:func:`fit_effective_time`); the layer's
    effective scale-free time is ``kappa_eff = t_eff N / d_in``. The paper found WUDI-300 close
    to the exponential filter at ``t = 300`` (``kappa ~ 3`` on CLIP ViT-B/32), so the returned
    ``lr_rel`` interpolates (log-log) where the median ``kappa_eff`` crosses ``kappa_target``.
    Also reports ``kappa_eff`` of the paper's absolute ``lr = 1e-5``.
    """
    problems = list(iter_layer_problems(base, experts, device=device))

    def median_kappa(lr_of_layer) -> tuple[float, float]:
        kappas, r2s = [], []
        for p in problems:
            n_live = live_count(p.taus)
            if n_live == 0:
                continue
            theta0 = p.taus.sum(0)
            theta = adam_wudi(p.C, p.D, theta0, lr=lr_of_layer(p), steps=steps).final
            f = empirical_filter_factors(theta, theta0, p.D, p.eig)
            x = p.D @ p.eig.vectors / p.eig.values.clamp_min(1e-8) - theta0 @ p.eig.vectors
            t_eff, r2 = fit_effective_time(f, p.eig.values, weights=x.pow(2).sum(0))
            kappas.append(t_eff * n_live / p.C.shape[0])
            r2s.append(r2)
        return float(np.median(kappas)), float(np.median(r2s))

    rms = {p.name: float(p.taus.pow(2).mean().sqrt()) for p in problems}
    curve = []
    for lr_rel in grid:
        k, r2 = median_kappa(lambda p: lr_rel * rms[p.name])
        curve.append({"lr_rel": lr_rel, "kappa_eff": k, "r2": r2})
    paper_k, paper_r2 = median_kappa(lambda p: PAPER.params("wudi")["lr"])
    xs = np.log([c["lr_rel"] for c in curve])
    ys = np.log([max(c["kappa_eff"], 1e-12) for c in curve])
    order = np.argsort(ys)
    lr_rel = float(np.exp(np.interp(math.log(kappa_target), ys[order], xs[order])))
    return {"lr_rel": lr_rel, "kappa_target": kappa_target, "curve": curve,
            "paper_lr_kappa_eff": paper_k, "paper_lr_r2": paper_r2,
            "tau_rms_median": float(np.median(list(rms.values())))}


def _score(state_dict, zoo, data, expert_acc, device) -> dict:
    acc = evaluate_backbone(state_dict, zoo, data, device=device)
    return {"avg_acc": average_accuracy(acc), "norm_acc": normalized_accuracy(acc, expert_acc), "per_task": acc}


def run_seed(seed: int, *, device="cpu", quick: bool = False, progress: bool = True, log=print,
             zoo_root=None, config=None, zoo=None) -> dict:
    """All merges, scores and sweeps of one expert seed (see the module docstring).

    ``zoo_root`` and ``config`` (a :class:`~swudi_lab.zoo.ZooConfig`) select the zoo; the default
    is the shipped offline zoo (or pass an opened ``zoo``). ``quick`` scores on 300 test images per task and runs short sweeps (a smoke run).
    """
    from .zoo import build_zoo

    t_start = time.perf_counter()
    if zoo is None:
        zoo = build_zoo(root=zoo_root, seed=seed, config=config, progress=progress)
    base = zoo.base_state_dict()
    experts = {t: zoo.expert_state_dict(t) for t in zoo.tasks}
    data = zoo.test_data(max_per_task=300 if quick else None)
    sweep_data = zoo.test_data(max_per_task=300 if quick else SWEEP_IMAGES)
    expert_acc = {t: evaluate_backbone(experts[t], zoo, {t: data[t]}, device=device)[t] for t in zoo.tasks}
    sweep_expert_acc = {t: evaluate_backbone(experts[t], zoo, {t: sweep_data[t]}, device=device)[t] for t in zoo.tasks}
    base_acc = evaluate_backbone(base, zoo, data, device=device)
    out = {"seed": seed, "tasks": zoo.tasks, "experts": expert_acc, "base": base_acc, "methods": {}, "sweeps": {}}
    log(f"[seed {seed}] base-with-heads {average_accuracy(base_acc):.1f}%, experts {average_accuracy(expert_acc):.1f}%")

    alpha = 1.0 / len(zoo.tasks)
    response = own_response(base, experts, zoo, data, alphas=(alpha,), device=device)
    out["own_response"] = {"alpha": alpha, "acc": {t: r[alpha] for t, r in response.items()}}
    out["cross_effect"] = cross_effect(base, experts, zoo, data, device=device, base_acc=base_acc)
    d = disentanglement([out])
    log(f"[seed {seed}] experts alone: tau_t / {len(zoo.tasks)} keeps {d['own_share']['mean']:.1f}% of task t's gain; "
        f"tau_s costs the other tasks {-d['cross_off_diagonal']['mean']:.1f} points on average")

    calib = calibrate_wudi_lr(base, experts, grid=LR_REL_GRID[1:5:2] if quick else LR_REL_GRID, device=device)
    out["wudi_calibration"] = calib
    log(f"[seed {seed}] WUDI lr scale-matched: lr_rel = {calib['lr_rel']:.3g} (paper lr 1e-5 acts like "
        f"kappa_eff = {calib['paper_lr_kappa_eff']:.3g}; tau RMS ~ {calib['tau_rms_median']:.2e})")

    runs = demo_runs(calib["lr_rel"])
    for run in runs:
        with measure(device) as m:
            merged = merge(base, experts, run.method, progress=False, device=device, **run.params)
        row = _score(merged.state_dict, zoo, data, expert_acc, device)
        row.update(method=run.method, params=run.params, setting=run.setting, seconds=m.seconds, peak_mb=m.peak_mb)
        if run.method == "swudi_a":
            row["ranks"] = {r["name"]: {"k": r["k"], "d_in": r["shape"][1]} for r in merged.report.solver_rows}
        out["methods"][run.label] = row
        log(f"[seed {seed}] {run.label:<34} {row['avg_acc']:6.2f}%  ({m.seconds:.2f} s)")

    sweeps = out["sweeps"]

    def score(state_dict):  # sweeps: a fixed subset of each test split, normalized by the experts on it
        return _score(state_dict, zoo, sweep_data, sweep_expert_acc, device)

    steps = WUDI_STEPS[:2] if quick else WUDI_STEPS
    for label, lr_args in (("paper lr", {"lr": PAPER.params("wudi")["lr"]}), ("matched lr", {"lr_rel": calib["lr_rel"]})):
        curve = []
        for s in steps:
            merged = merge(base, experts, "wudi", progress=False, device=device, steps=s, **lr_args)
            curve.append({"steps": s, **score(merged.state_dict)})
        sweeps.setdefault("wudi_steps", {})[label] = curve

    kappas = KAPPAS[1::2] if quick else KAPPAS
    ratios = RATIOS[::3] if quick else RATIOS
    kappa_rules = {f"{k:g}": (lambda d, n, k=k: exponential(kappa_time(k, d, n))) for k in kappas}
    kappa_rules["closed_form"] = per_layer(pseudoinverse())
    merged = filter_sweep(base, experts, kappa_rules, device=device)
    sweeps["kappa"] = [{"kappa": k, **score(merged[f"{k:g}"])} for k in kappas]
    sweeps["closed_form"] = score(merged["closed_form"])

    ratio_rules = {f"{r:g}": (lambda d, n, r=r: swudi(kappa_time(PAPER_KAPPA_SWUDI, d, n), ratio=r)) for r in ratios}
    merged = filter_sweep(base, experts, ratio_rules, device=device)
    sweeps["ratio"] = [{"ratio": r, **score(merged[f"{r:g}"])} for r in ratios]
    sweeps["images_per_task"] = min(len(y) for _, y in sweep_data.values())
    out["seconds"] = time.perf_counter() - t_start
    return out


def _agg(values) -> dict:
    mu, sd = mean_std(values)
    return {"mean": mu, "std": sd}


def disentanglement(per_seed: list[dict]) -> dict:
    """Mean ± std over seeds of the experts-alone diagnostics of :func:`run_seed`.

    ``own_share``: share of the gain (%) that ``theta0 + tau_t / N`` keeps, averaged over tasks;
    ``cross_off_diagonal``: mean of ``acc_t(theta0 + tau_s) - acc_t(theta0)`` over ``s != t``
    (points); ``cross_effect``: the whole matrix ``{s: {t: mean ± std}}`` (diagonal: the gains).
    """
    tasks = per_seed[0]["tasks"]
    share = [recovered_gain(r["own_response"]["acc"], r["base"], r["experts"]) for r in per_seed]
    off = [float(np.mean([r["cross_effect"][s][t] for s in tasks for t in tasks if s != t])) if len(tasks) > 1
           else float("nan") for r in per_seed]
    return {"alpha": per_seed[0]["own_response"]["alpha"], "own_share": _agg(share), "cross_off_diagonal": _agg(off),
            "cross_effect": {s: {t: _agg([r["cross_effect"][s][t] for r in per_seed]) for t in tasks} for s in tasks}}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean ± std over seeds of every number in the per-seed results."""
    first = per_seed[0]
    tasks = first["tasks"]
    summary = {"seeds": [r["seed"] for r in per_seed], "tasks": tasks, "methods": {}, "sweeps": {}}
    for key in ("experts", "base"):
        summary[key] = {"avg_acc": _agg([average_accuracy(r[key]) for r in per_seed]),
                        "per_task": {t: _agg([r[key][t] for r in per_seed]) for t in tasks}}
    for label, row in first["methods"].items():
        rows = [r["methods"][label] for r in per_seed]
        summary["methods"][label] = {
            "method": row["method"], "params": row["params"], "setting": row["setting"],
            "avg_acc": _agg([x["avg_acc"] for x in rows]), "norm_acc": _agg([x["norm_acc"] for x in rows]),
            "per_task": {t: _agg([x["per_task"][t] for x in rows]) for t in tasks},
            "seconds": _agg([x["seconds"] for x in rows]), "peak_mb": _agg([x["peak_mb"] for x in rows]),
        }
        if "ranks" in row:
            summary["methods"][label]["ranks"] = row["ranks"]  # seed 0's (the ranks are per layer)

    def curve(rows_per_seed, xkey):
        return [{xkey: pts[0][xkey], "avg_acc": _agg([p["avg_acc"] for p in pts]),
                 "norm_acc": _agg([p["norm_acc"] for p in pts])} for pts in zip(*rows_per_seed)]

    sw = summary["sweeps"]
    sw["wudi_steps"] = {lab: curve([r["sweeps"]["wudi_steps"][lab] for r in per_seed], "steps")
                        for lab in first["sweeps"]["wudi_steps"]}
    sw["kappa"] = curve([r["sweeps"]["kappa"] for r in per_seed], "kappa")
    sw["ratio"] = curve([r["sweeps"]["ratio"] for r in per_seed], "ratio")
    sw["closed_form"] = {"avg_acc": _agg([r["sweeps"]["closed_form"]["avg_acc"] for r in per_seed]),
                         "norm_acc": _agg([r["sweeps"]["closed_form"]["norm_acc"] for r in per_seed])}
    summary["wudi_calibration"] = [r["wudi_calibration"] for r in per_seed]
    summary["disentanglement"] = disentanglement(per_seed)
    return summary


def _pm(agg: dict, digits: int = 2) -> str:
    return f"{agg['mean']:.{digits}f} ± {agg['std']:.{digits}f}"


def format_table(summary: dict) -> str:
    """The method table: method, setting, average / normalized accuracy, per task, seconds, peak MB."""
    tasks = summary["tasks"]
    head = ["method", "setting", "avg acc %", "norm acc %"] + [t[:8] for t in tasks] + ["merge s", "peak MB"]
    rows = [["experts", "", _pm(summary["experts"]["avg_acc"]), "100"]
            + [f"{summary['experts']['per_task'][t]['mean']:.1f}" for t in tasks] + ["", ""],
            ["base + heads", "", _pm(summary["base"]["avg_acc"]), ""]
            + [f"{summary['base']['per_task'][t]['mean']:.1f}" for t in tasks] + ["", ""]]
    for label, m in summary["methods"].items():
        rows.append([label, m["setting"], _pm(m["avg_acc"]), _pm(m["norm_acc"], 1)]
                    + [f"{m['per_task'][t]['mean']:.1f}" for t in tasks]
                    + [f"{m['seconds']['mean']:.2f}", f"{m['peak_mb']['mean']:.0f}"])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    sep = "-" * len(line(head))
    return "\n".join([line(head), sep, *(line(r) for r in rows[:2]), sep, *(line(r) for r in rows[2:])])


def write_csv(summary: dict, path: Path) -> None:
    tasks = summary["tasks"]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "setting", "avg_acc", "avg_acc_std", "norm_acc", "norm_acc_std", "seconds", "peak_mb"]
                   + tasks)
        for label, m in summary["methods"].items():
            w.writerow([label, m["setting"], m["avg_acc"]["mean"], m["avg_acc"]["std"], m["norm_acc"]["mean"],
                        m["norm_acc"]["std"], m["seconds"]["mean"], m["peak_mb"]["mean"]]
                       + [m["per_task"][t]["mean"] for t in tasks])


def _cached_seed(seed: int, cache: Path, key: str, fresh: bool = False, **kw) -> dict:
    """``run_seed`` with its result cached in ``cache`` under ``key`` (zoo manifest + settings);
    ``fresh`` recomputes and overwrites the cached result."""
    path = cache / f"seed{seed}.json"
    if path.is_file() and not fresh:
        cached = json.loads(path.read_text())
        if cached.get("cache_key") == key:
            kw["log"](f"[seed {seed}] reusing {path} (delete it, or pass fresh=True, to recompute)")
            return cached["result"]
    result = run_seed(seed, **kw)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"cache_key": key, "result": result}))
    return result


RESULTS_FORMAT = 2  # bump when run_seed's results gain or change a field: older cached seeds are recomputed


def _cache_key(zoo, quick: bool, device) -> str:
    """Key of a seed's cached results: the zoo's manifest (hashes of every file) and the demo settings."""
    import hashlib

    from . import __version__

    manifest = json.dumps(zoo.manifest, sort_keys=True)
    settings = [RESULTS_FORMAT, __version__, quick, str(device), WUDI_STEPS, KAPPAS, RATIOS, LR_REL_GRID, SWEEP_IMAGES, sorted(METHODS)]
    return hashlib.sha256((manifest + repr(settings)).encode()).hexdigest()


def run_demo(seeds=(0, 1, 2), *, out_dir=None, device="cpu", quick: bool = False,
             progress: bool = True, log=print, zoo_root=None, config=None, fresh: bool = False) -> dict:
    """Run every seed, aggregate, print the table and write summary.json, summary.csv, report.html
    into ``out_dir`` (default: :func:`~swudi_lab.config.paths.demo_results_dir`, ``results/demo``).

    Each seed's results are cached in ``<out_dir>/seeds/`` keyed by the zoo's manifest and the
    demo settings, so adding a seed or re-running reuses the others (``fresh=True`` recomputes).
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one expert seed")
    out_dir = Path(out_dir) if out_dir is not None else paths.demo_results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    from .zoo import build_zoo

    per_seed = []
    for s in seeds:
        zoo = build_zoo(root=zoo_root, seed=s, config=config, progress=progress)  # built or verified once
        kw = dict(device=device, quick=quick, progress=progress, log=log, zoo=zoo)
        per_seed.append(_cached_seed(s, out_dir / "seeds", _cache_key(zoo, quick, device), fresh=fresh, **kw))
    summary = aggregate(per_seed)
    summary["device"] = str(device)
    summary["quick"] = quick
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out_dir / "per_seed.json", json.dumps(per_seed, indent=1))
    write_csv(summary, out_dir / "summary.csv")
    from .report_html import write_report

    table = format_table(summary)
    write_report(per_seed, out_dir / "report.html", table=table)
    d = summary["disentanglement"]
    log("")
    log(table)
    log(f"\nexperts alone (mean ± std over seeds): tau_t / {len(summary['tasks'])} keeps {_pm(d['own_share'], 1)} % of task "
        f"t's gain; tau_s moves the other tasks by {_pm(d['cross_off_diagonal'], 1)} points (see report.html)")
    log(f"\nwrote {out_dir}/summary.json, summary.csv, report.html")
    return summary
