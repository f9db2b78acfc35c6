"""``make demo`` and ``make study``: the end-to-end merge on the offline ViT zoo, fast or in full.

One code path, two :class:`Profile` s. For every expert seed: build or reuse the zoo
(:mod:`swudi_lab.zoo`), merge its eight experts with every method of the registry, score each merged
backbone with every task's own head on the whole test splits (:mod:`swudi_lab.evaluate`), and run
the sweeps that test the paper's claims on our zoo. Design and notation: ``docs/design.md``.

* methods at the **paper's defaults** (t = 300 / 1300, lr = 1e-5, ...) and at **scale-matched**
  values: the same scale-free time ``kappa = t N / d_in`` as the paper's CLIP ViT-B/32 layers
  (d_in = 768, N = 8), and a WUDI learning rate relative to the task-vector entries, so that 300
  Adam steps act like the exponential filter at the paper's kappa (:func:`calibrate_wudi_lr`);
* accuracy against kappa, one ``eigh`` per layer serving the whole sweep;
* (study) WUDI at 100 / 300 / 1000 / 3000 Adam steps against the closed form (semiconvergence);
* (study) accuracy against the SWUDI ratio r (SWUDI-A's per-layer ranks are in both);
* (study) each expert alone, before any merge (weight disentanglement,
  :func:`~swudi_lab.evaluate.own_response` and :func:`~swudi_lab.evaluate.cross_effect`): the share of
  task t's gain that ``tau_t / N`` keeps (what averaging can keep at best) and what ``tau_s`` alone
  does to every other task.

``demo`` (``make demo``, :func:`run_demo`): the shipped seed 0, the method table on the whole test
splits and the kappa sweep (on 300 images per task), WUDI's matched lr from the preset ``zoo-matched``
(``lr_rel`` = 0.038, calibrated on this zoo): a few minutes on a 2-core CPU. ``study`` (``make study``, :func:`run_study`): seeds 0, 1, 2, every sweep,
WUDI's lr recalibrated per seed, mean ± std: the README's table.

Seeds are aggregated as mean ± std. Outputs (``results/demo/`` or ``results/study/``, under
``$SWUDI_LAB_RESULTS``): ``summary.json`` (``{"methods": {label: {"avg_acc", "norm_acc", "per_task",
"seconds", "peak_mb", ...}}, "experts": ..., "base": ..., "sweeps": ..., "disentanglement": ...}``; the
demo has no ``disentanglement`` and only the kappa sweep), ``summary.csv`` and ``report.html`` (plotly).
Progress: a bar per phase on a terminal, one line per phase with its time in a log
(:mod:`swudi_lab.progress`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
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
from .progress import Progress, progress_mode
from .spectral import exponential, kappa_time, live_count, pseudoinverse, swudi
from .spectral.iterative import adam_wudi, empirical_filter_factors, fit_effective_time

__all__ = ["Run", "Profile", "PROFILES", "profile", "demo_runs", "calibrate_wudi_lr", "run_seed", "run_demo", "run_study",
           "format_table"]

# The paper's setting (CLIP ViT-B/32, d_in = 768, N = 8) and its scale-free times, from the presets.
PAPER_KAPPA_IWUDI = ZOO_MATCHED.params("iwudi")["kappa"]  # 3.125
PAPER_KAPPA_SWUDI = ZOO_MATCHED.params("swudi")["kappa"]  # 13.54
ZOO_D_IN = 128  # width of the zoo's ViT: the filtered method's matched ridge is set on it

WUDI_STEPS = (100, 300, 1000, 3000)
KAPPAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
RATIOS = (0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
LR_REL_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SWEEP_IMAGES = 500  # test images per task for the sweeps (the method table uses the whole split)
QUICK_IMAGES = 300  # --quick: test images per task, for the table and the sweeps (a smoke run)
DEMO_SWEEP_IMAGES = 300  # the fast demo's kappa sweep (9 merges): the table keeps the whole splits
PROFILES = ("demo", "study")


@dataclass(frozen=True)
class Profile:
    """What a run computes per seed. ``demo`` and ``study`` differ only in these settings.

    ``calibrate``: recalibrate WUDI's matched ``lr_rel`` per seed on ``lr_rel_grid``
    (:func:`calibrate_wudi_lr`), else take the preset's (``zoo-matched``). Empty ``wudi_steps`` /
    ``ratios`` skip that sweep; ``experts_alone`` adds the own-response and cross-effect diagnostics.
    ``test_images`` / ``sweep_images``: images per task for the method table and the sweeps
    (``None``: the whole test split).
    """

    name: str
    seeds: tuple[int, ...]
    calibrate: bool
    lr_rel_grid: tuple[float, ...]
    wudi_steps: tuple[int, ...]
    kappas: tuple[float, ...]
    ratios: tuple[float, ...]
    experts_alone: bool
    test_images: int | None
    sweep_images: int | None


def profile(name: str = "demo", quick: bool = False) -> Profile:
    """The settings of ``name`` (``"demo"`` or ``"study"``); ``quick`` is the smoke run of either
    (300 test images per task, shorter grids)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
    images = dict(test_images=QUICK_IMAGES if quick else None, sweep_images=QUICK_IMAGES if quick else SWEEP_IMAGES)
    kappas = KAPPAS[1::2] if quick else KAPPAS
    if name == "demo":
        return Profile("demo", (0,), calibrate=False, lr_rel_grid=(), wudi_steps=(), kappas=kappas, ratios=(),
                       experts_alone=False, test_images=images["test_images"], sweep_images=DEMO_SWEEP_IMAGES)
    return Profile("study", (0, 1, 2), calibrate=True, lr_rel_grid=LR_REL_GRID[1:5:2] if quick else LR_REL_GRID,
                   wudi_steps=WUDI_STEPS[:2] if quick else WUDI_STEPS, kappas=kappas,
                   ratios=RATIOS[::3] if quick else RATIOS, experts_alone=True, **images)


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
                      grid=LR_REL_GRID, device="cpu", tick=None) -> dict:
    """Scale-matched WUDI learning rate: the ``lr_rel`` whose Adam run acts like ``kappa_target``.

    Adam moves each entry by about ``lr`` per step, so ``lr`` only means something relative to
    the size of the task-vector entries: per layer ``lr = lr_rel * RMS(tau)``. For every
    ``lr_rel`` of the grid, run ``steps`` Adam steps per layer, read the empirical filter factors
    off the result and fit ``1 - exp(-lambda t_eff)`` (:func:`fit_effective_time`); the layer's
    effective scale-free time is ``kappa_eff = t_eff N / d_in``. The paper found WUDI-300 close
    to the exponential filter at ``t = 300`` (``kappa ~ 3`` on CLIP ViT-B/32), so the returned
    ``lr_rel`` interpolates (log-log) where the median ``kappa_eff`` crosses ``kappa_target``.
    Also reports ``kappa_eff`` of the paper's absolute ``lr = 1e-5``. ``tick()``, when given, is
    called after each of the ``len(grid) + 1`` runs (progress).
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
        if tick is not None:
            tick()
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


def _backbone(state_dict, zoo):
    model = zoo.make_backbone()
    model.load_state_dict(dict(state_dict))  # strict: a merged backbone has exactly the base's tensors
    return model


def _accuracy(state_dict, zoo, data, device, tick=None) -> dict:
    """``{task: accuracy}`` of one backbone on ``data``, task by task (``tick()`` after each task)."""
    model, acc = _backbone(state_dict, zoo), {}
    for t in data:
        acc[t] = evaluate_backbone(model, zoo, {t: data[t]}, device=device)[t]
        if tick is not None:
            tick()
    return acc


def _score(state_dict, zoo, data, expert_acc, device, tick=None) -> dict:
    acc = _accuracy(state_dict, zoo, data, device, tick)
    return {"avg_acc": average_accuracy(acc), "norm_acc": normalized_accuracy(acc, expert_acc), "per_task": acc}


def _run_progress(progress: bool | str, log) -> Progress:
    """A run's progress: :func:`~swudi_lab.progress.progress_mode` of ``progress``, one line per phase when it is false."""
    return Progress(progress_mode(progress) if progress else "lines", log)


def _zoo_progress(progress: bool | str, rep: Progress) -> bool | str:
    """The zoo build's progress: the run's mode, silent when the run has no progress (its lines only)."""
    return progress if isinstance(progress, str) else (rep.mode if progress else False)


def _as_profile(prof: str | Profile, quick: bool) -> Profile:
    return prof if isinstance(prof, Profile) else profile(prof, quick)


def run_seed(seed: int, *, profile: str | Profile = "demo", device="cpu", quick: bool = False,
             progress: bool | str = True, log=print, zoo_root=None, config=None, zoo=None) -> dict:
    """All merges, scores and sweeps of one expert seed that ``profile`` asks for (see the module docstring).

    ``zoo_root`` and ``config`` (a :class:`~swudi_lab.zoo.ZooConfig`) select the zoo; the default
    is the shipped offline zoo (or pass an opened ``zoo``). ``quick``: the profile's smoke run.
    ``progress``: bars on a terminal, else one line per phase through ``log``
    (:func:`~swudi_lab.progress.progress_mode`; ``False`` keeps the lines, ``"off"`` silences them).
    """
    from .zoo import build_zoo

    prof = _as_profile(profile, quick)
    rep = _run_progress(progress, log)
    tag = f"[seed {seed}]"
    t_start = time.perf_counter()
    if zoo is None:
        zoo = build_zoo(root=zoo_root, seed=seed, config=config, progress=_zoo_progress(progress, rep))
    base = zoo.base_state_dict()
    experts = {t: zoo.expert_state_dict(t) for t in zoo.tasks}
    n = len(zoo.tasks)
    with rep.phase(f"{tag} base and experts on every task", total=3 * n, unit="task") as ph:
        data = zoo.test_data(max_per_task=prof.test_images)
        sweep_data = zoo.test_data(max_per_task=prof.sweep_images)
        expert_acc = {t: _accuracy(experts[t], zoo, {t: data[t]}, device, ph.update)[t] for t in zoo.tasks}
        sweep_expert_acc = {t: _accuracy(experts[t], zoo, {t: sweep_data[t]}, device, ph.update)[t] for t in zoo.tasks}
        base_acc = _accuracy(base, zoo, data, device, ph.update)
        ph.done(f"base-with-heads {average_accuracy(base_acc):.1f}%, experts {average_accuracy(expert_acc):.1f}%")
    out = {"seed": seed, "tasks": zoo.tasks, "experts": expert_acc, "base": base_acc, "methods": {}, "sweeps": {}}

    if prof.experts_alone:
        with rep.phase(f"{tag} experts alone: own response and cross effect", total=2 * n, unit="expert") as ph:
            alpha = 1.0 / n
            response = {}
            for t in zoo.tasks:
                response.update(own_response(base, {t: experts[t]}, zoo, data, alphas=(alpha,), device=device))
                ph.update()
            out["own_response"] = {"alpha": alpha, "acc": {t: r[alpha] for t, r in response.items()}}
            out["cross_effect"] = {}
            for s in zoo.tasks:
                out["cross_effect"].update(cross_effect(base, {s: experts[s]}, zoo, data, device=device, base_acc=base_acc))
                ph.update()
            d = disentanglement([out])
            ph.done(f"tau_t / {n} keeps {d['own_share']['mean']:.1f}% of task t's gain; "
                    f"tau_s costs the other tasks {-d['cross_off_diagonal']['mean']:.1f} points on average")

    if prof.calibrate:
        with rep.phase(f"{tag} WUDI lr scale-matched (calibration)", total=len(prof.lr_rel_grid) + 1, unit="lr") as ph:
            calib = calibrate_wudi_lr(base, experts, grid=prof.lr_rel_grid, device=device, tick=ph.update)
            ph.done(f"lr_rel = {calib['lr_rel']:.3g} (paper lr 1e-5 acts like kappa_eff = "
                    f"{calib['paper_lr_kappa_eff']:.3g}; tau RMS ~ {calib['tau_rms_median']:.2e})")
    else:
        calib = {"lr_rel": ZOO_MATCHED.params("wudi")["lr_rel"], "source": f"preset {ZOO_MATCHED.name}"}
    out["wudi_calibration"] = calib

    for run in demo_runs(calib["lr_rel"]):
        with rep.phase(f"{tag} {run.label}", total=1 + n, unit="step") as ph:
            with measure(device) as m:
                merged = merge(base, experts, run.method, progress=False, device=device, **run.params)
            ph.update()
            row = _score(merged.state_dict, zoo, data, expert_acc, device, ph.update)
            row.update(method=run.method, params=run.params, setting=run.setting, seconds=m.seconds, peak_mb=m.peak_mb)
            if run.method == "swudi_a":
                row["ranks"] = {r["name"]: {"k": r["k"], "d_in": r["shape"][1]} for r in merged.report.solver_rows}
            out["methods"][run.label] = row
            ph.done(f"{row['avg_acc']:.2f}% (merge {m.seconds:.2f} s)")

    sweeps = out["sweeps"]

    def score(state_dict):  # sweeps: a fixed subset of each test split, normalized by the experts on it
        return _score(state_dict, zoo, sweep_data, sweep_expert_acc, device)

    if prof.wudi_steps:
        lrs = (("paper lr", {"lr": PAPER.params("wudi")["lr"]}), ("matched lr", {"lr_rel": calib["lr_rel"]}))
        with rep.phase(f"{tag} sweep: WUDI vs Adam steps {list(prof.wudi_steps)}", total=len(lrs) * len(prof.wudi_steps),
                       unit="merge") as ph:
            for label, lr_args in lrs:
                curve = []
                for st in prof.wudi_steps:
                    merged = merge(base, experts, "wudi", progress=False, device=device, steps=st, **lr_args)
                    curve.append({"steps": st, **score(merged.state_dict)})
                    ph.update()
                sweeps.setdefault("wudi_steps", {})[label] = curve
            ph.done(", ".join(f"{lab} {c[-1]['avg_acc']:.1f}% at {c[-1]['steps']}" for lab, c in sweeps["wudi_steps"].items()))

    def rule_sweep(what, key, shown, values, make_rule, extra=None):
        """One phase: ``make_rule(v, d, n)`` for every ``v`` of ``values`` (plus the named ``extra`` rules) merged
        by :func:`filter_sweep` from one eigh per layer, then scored; fills ``sweeps[key]`` with ``{key: v, **scores}``
        and ``sweeps[name]`` for each extra rule; ``shown`` names the swept value in the phase's closing note."""
        rules = {f"{v:g}": (lambda d, n, v=v: make_rule(v, d, n)) for v in values} | (extra or {})
        with rep.phase(f"{tag} sweep: accuracy vs {what} (one eigh per layer)", total=len(rules) + 1, unit="merge") as ph:
            merged = filter_sweep(base, experts, rules, device=device)
            ph.update()
            sweeps[key] = []
            for v in values:
                sweeps[key].append({key: v, **score(merged[f"{v:g}"])})
                ph.update()
            for name in extra or {}:
                sweeps[name] = score(merged[name])
                ph.update()
            best = max(sweeps[key], key=lambda r: r["avg_acc"])
            ph.done(f"best {best['avg_acc']:.1f}% at {shown} {best[key]:g}"
                    + "".join(f"; {name.replace('_', ' ')} {sweeps[name]['avg_acc']:.1f}%" for name in extra or {}))

    rule_sweep("kappa", "kappa", "kappa", prof.kappas, lambda k, d, n: exponential(kappa_time(k, d, n)),
               extra={"closed_form": per_layer(pseudoinverse())})
    if prof.ratios:
        rule_sweep("SWUDI ratio", "ratio", "r =", prof.ratios,
                   lambda r, d, n: swudi(kappa_time(PAPER_KAPPA_SWUDI, d, n), ratio=r))
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

    sw = summary["sweeps"]  # the sweeps the profile ran (the demo: kappa and the closed form)
    if "wudi_steps" in first["sweeps"]:
        sw["wudi_steps"] = {lab: curve([r["sweeps"]["wudi_steps"][lab] for r in per_seed], "steps")
                            for lab in first["sweeps"]["wudi_steps"]}
    sw["kappa"] = curve([r["sweeps"]["kappa"] for r in per_seed], "kappa")
    if "ratio" in first["sweeps"]:
        sw["ratio"] = curve([r["sweeps"]["ratio"] for r in per_seed], "ratio")
    sw["closed_form"] = {"avg_acc": _agg([r["sweeps"]["closed_form"]["avg_acc"] for r in per_seed]),
                         "norm_acc": _agg([r["sweeps"]["closed_form"]["norm_acc"] for r in per_seed])}
    summary["wudi_calibration"] = [r["wudi_calibration"] for r in per_seed]
    if "cross_effect" in first:
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


def _cache_file(cache: Path, seed: int, prof: Profile) -> Path:
    return cache / (f"seed{seed}.json" if prof.name == "study" else f"{prof.name}-seed{seed}.json")


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # missing or unreadable: recomputed
        return None
    return cached["result"] if isinstance(cached, dict) and cached.get("cache_key") == key else None


def _cached_seed(seed: int, cache: Path, key: str, fresh: bool = False, *, prof: Profile, legacy: Path | None = None,
                 **kw) -> dict:
    """``run_seed`` with its result cached in ``cache`` under ``key`` (zoo manifest + settings);
    ``fresh`` recomputes and overwrites the cached result. ``legacy``: another cache directory whose
    file of this seed is reused (and copied into ``cache``) when its key matches."""
    path = _cache_file(cache, seed, prof)
    if not fresh:
        for where in (path, legacy and _cache_file(legacy, seed, prof)):
            if where and (result := _read_cache(where, key)) is not None:
                kw["log"](f"[seed {seed}] reusing {where} (delete it, or pass fresh=True, to recompute)")
                if where != path:
                    atomic_write_text(path, json.dumps({"cache_key": key, "result": result}))
                return result
    result = run_seed(seed, profile=prof, **kw)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"cache_key": key, "result": result}))
    return result


RESULTS_FORMAT = 2  # bump when run_seed's results gain or change a field: older cached seeds are recomputed


def _cache_key(zoo, quick: bool, device, prof: str | Profile = "study") -> str:
    """Key of a seed's cached results: the zoo's manifest (hashes of every file) and the run's settings.

    The study's key is the one ``make demo`` used when it ran the full study, so those cached seeds
    stay valid; any other profile adds its name and settings (and the preset lr_rel it uses)."""
    import hashlib

    from . import __version__

    prof = _as_profile(prof, quick)
    manifest = json.dumps(zoo.manifest, sort_keys=True)
    settings = [RESULTS_FORMAT, __version__, quick, str(device), WUDI_STEPS, KAPPAS, RATIOS, LR_REL_GRID, SWEEP_IMAGES, sorted(METHODS)]
    if prof.name != "study":
        settings = [prof.name, sorted(asdict(prof).items()), ZOO_MATCHED.params("wudi")["lr_rel"], *settings]
    return hashlib.sha256((manifest + repr(settings)).encode()).hexdigest()


def default_out_dir(prof: str | Profile = "demo") -> Path:
    """``results/demo`` (:func:`~swudi_lab.config.paths.demo_results_dir`) or ``results/study``, under ``$SWUDI_LAB_RESULTS``."""
    name = prof.name if isinstance(prof, Profile) else prof
    return paths.demo_results_dir() if name == "demo" else paths.results_dir() / name


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


STUDY_COMMAND = "make study   (or: swudi-lab study)"
STUDY_TIME = "about 27 min on a 2-core CPU once the zoo is built, 53 the first time"


def run_demo(seeds=None, *, profile: str | Profile = "demo", out_dir=None, device="cpu", quick: bool = False,
             progress: bool | str = True, log=print, zoo_root=None, config=None, fresh: bool = False) -> dict:
    """Run every seed of ``profile`` (default: its own seeds, ``(0,)`` for the demo, ``(0, 1, 2)`` for the
    study), aggregate, print the table and write summary.json, summary.csv, report.html into ``out_dir``
    (default :func:`default_out_dir`: ``results/demo`` or ``results/study``). Ends with the measured
    wall time (and, for the demo, what it cannot tell and the study's command).

    Each seed's results are cached in ``<out_dir>/seeds/`` keyed by the zoo's manifest and the
    profile's settings, so adding a seed or re-running reuses the others (``fresh=True`` recomputes);
    the study also reuses seeds cached in ``results/demo/seeds/`` by the former full ``make demo``.
    ``progress``: see :func:`run_seed`.
    """
    t_start = time.perf_counter()
    prof = _as_profile(profile, quick)
    seeds = prof.seeds if seeds is None else tuple(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one expert seed")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(prof)
    out_dir.mkdir(parents=True, exist_ok=True)
    legacy = paths.demo_results_dir() / "seeds" if prof.name == "study" else None
    from .zoo import build_zoo

    rep = _run_progress(progress, log)
    zoo_progress = _zoo_progress(progress, rep)
    per_seed = []
    for s in seeds:
        with rep.phase(f"[seed {s}] zoo: build or verify") as ph:
            zoo = build_zoo(root=zoo_root, seed=s, config=config, progress=zoo_progress)  # built or verified once
            ph.done(f"{len(zoo.tasks)} experts in {zoo.dir}")
        kw = dict(device=device, quick=quick, progress=progress, log=log, zoo=zoo)
        per_seed.append(_cached_seed(s, out_dir / "seeds", _cache_key(zoo, quick, device, prof), fresh=fresh, prof=prof,
                                     legacy=legacy if out_dir / "seeds" != legacy else None, **kw))
    with rep.phase("report: summary.json, summary.csv, report.html") as ph:
        summary = aggregate(per_seed)
        summary["device"] = str(device)
        summary["quick"] = quick
        summary["profile"] = prof.name
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
        atomic_write_text(out_dir / "per_seed.json", json.dumps(per_seed, indent=1))
        write_csv(summary, out_dir / "summary.csv")
        from .report_html import write_report

        table = format_table(summary)
        note = _demo_note(len(seeds)) if prof.name == "demo" else ""
        write_report(per_seed, out_dir / "report.html", table=table, title=f"swudi_lab {prof.name}", note=note)
        ph.done(f"in {out_dir}")
    log("")
    log(table)
    if "disentanglement" in summary:
        d = summary["disentanglement"]
        log(f"\nexperts alone (mean ± std over seeds): tau_t / {len(summary['tasks'])} keeps {_pm(d['own_share'], 1)} % of "
            f"task t's gain; tau_s moves the other tasks by {_pm(d['cross_off_diagonal'], 1)} points (see report.html)")
    log(f"\nwrote {out_dir}/summary.json, summary.csv, report.html")
    wall = time.perf_counter() - t_start
    log(f"{prof.name} done in {_minutes(wall)} (wall time, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
        f"{', quick' if quick else ''}).")
    if note:
        log(note)
    return summary


def _demo_note(n_seeds: int) -> str:
    one = "One expert seed" if n_seeds == 1 else f"{n_seeds} expert seeds"
    return (f"{one}, no step or ratio sweep: differences under about a point between methods need the study "
            f"(three seeds, mean ± std, every sweep; {STUDY_TIME}): {STUDY_COMMAND}")


def run_study(seeds=None, **kw) -> dict:
    """:func:`run_demo` with the ``study`` profile (seeds 0, 1, 2 by default): the README's table."""
    return run_demo(seeds, profile="study", **kw)
