"""Which regime a zoo's merges live in: share of the experts' gain kept against the number of
tasks merged, and against a global scale on the merged task vector; and how each expert alone
acts on its own task and on the others.

* **Number of tasks.** Interference grows with N: with N = 1 every method of the registry
  returns the expert itself (the closed form ``D C^+`` is ``tau`` projected on its own row space,
  i.e. ``tau``), and each added task vector takes room in the same layers. Random subsets of N
  tasks are merged.
* **Scale.** Every method but ``average`` has a ``scale`` parameter multiplying the merged task
  vector (``theta0 + scale * (theta - theta0)``, docs/design.md). WUDI's loss and its filters keep each
  expert's task vector at full size along its own directions; task arithmetic's paper scale is
  0.3 (of the sum) and averaging is task arithmetic at 1/N. If shrinking the spectral merges helps,
  the zoo's experts are in a regime where the full task vectors do not add up (interference-limited).

Both tables report the share of the gain kept,

    recovered = (acc_merged - acc_base) / (acc_expert - acc_base)      (mean over the merged tasks)

next to the usual normalized accuracy ``acc_merged / acc_expert``, which the base's own accuracy
inflates (a merge that returns the base scores ``acc_base / acc_expert``, not 0).

Two more tables look at the experts one at a time and tell *why* a zoo is in its regime. Merging
works when the experts are *weight-disentangled* (Ortiz-Jimenez et al., NeurIPS 2023): adding
``tau_s`` leaves task t's outputs alone for ``s != t``, and a fraction of ``tau_t`` already gives
most of task t's gain (CLIP's fine-tuned experts overshoot; averaging keeps 1/N of each task vector
and still recovers a large share of the gain).

* **Own response.** Task t's accuracy at ``theta0 + alpha tau_t`` for a few ``alpha`` (the share of
  the gain at ``alpha = 1/N`` is what averaging can keep at best without interference).
* **Cross effect.** ``acc_t(theta0 + tau_s) - acc_t(theta0)`` for every pair: the diagonal is each
  expert's gain, the off-diagonal entries what one expert alone does to the other tasks (0 for
  disentangled experts; negative entries are damage that a merge of the full task vectors carries
  along). ``--cross`` also prints the task vectors' pairwise cosines: small cosines with a large
  cross effect mean interference through the network's function, not overlapping weights.

A last table asks *what* a merge of all the tasks loses: the features, or their alignment with the
fixed heads.

* **Heads vs probes.** For the base, the experts and each merge: the mean accuracy through the
  fixed task heads next to that of a linear probe fitted on the model's own features of each task's
  training split (:func:`swudi_lab.evaluate.probe_accuracy`), and the share of the gain each keeps
  (the probe's share is measured between the base's and the experts' probe accuracies). A merge
  that keeps much of the probe gain but little of the head gain kept what the experts learned and
  lost its alignment with the heads. The probe uses task data: it is a diagnostic, not a merge.

    python benchmarks/merge_regime.py --seed 0 --sizes 1 2 4 8 --subsets 3 --scales 0.125 0.25 0.5 1 \
        --alphas 0.125 0.25 0.5 1 --cross --probe
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swudi_lab.config.presets import ZOO_MATCHED  # noqa: E402
from swudi_lab import evaluate as E  # noqa: E402
from swudi_lab.evaluate import average_accuracy, evaluate_backbone, normalized_accuracy, recovered_gain  # noqa: E402
from swudi_lab.merge import merge  # noqa: E402

_KAPPA_IWUDI, _KAPPA_SWUDI = ZOO_MATCHED.params("iwudi")["kappa"], ZOO_MATCHED.params("swudi")["kappa"]
RUNS = {  # label: (registry method, parameters); the spectral times scale-matched through kappa (preset zoo-matched)
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {}),
    "closed_form": ("closed_form", {}),
    f"iwudi (kappa={_KAPPA_IWUDI:.3g})": ("iwudi", ZOO_MATCHED.params("iwudi")),
    f"swudi (kappa={_KAPPA_SWUDI:.3g})": ("swudi", ZOO_MATCHED.params("swudi")),
    "swudi_a": ("swudi_a", {}),
}


def subsets(tasks, size: int, count: int, seed: int = 0) -> list[tuple[str, ...]]:
    """``count`` distinct random subsets of ``size`` tasks (all of them when there are fewer)."""
    every = list(itertools.combinations(tasks, size))
    if len(every) <= count:
        return every
    pick = np.random.default_rng(seed).choice(len(every), size=count, replace=False)
    return [every[i] for i in sorted(pick)]


class Scorer:
    """One zoo's test data, base and experts (loaded once), their accuracies, and merge-and-score."""

    def __init__(self, zoo, images: int | None = 300, device="cpu"):
        self.zoo, self.device = zoo, device
        self.data = zoo.test_data(max_per_task=images)
        self.base = zoo.base_state_dict()
        self.experts = {t: zoo.expert_state_dict(t) for t in zoo.tasks}
        self.base_acc = evaluate_backbone(self.base, zoo, self.data, device=device)
        self.expert_acc = {t: evaluate_backbone(e, zoo, {t: self.data[t]}, device=device)[t] for t, e in self.experts.items()}

    def merged(self, tasks, method: str, params: dict) -> tuple[dict, float]:
        """The merged state dict of the experts of ``tasks`` (a registry method) and its seconds."""
        experts = {t: self.experts[t] for t in tasks}
        t0 = time.perf_counter()
        state = merge(self.base, experts, method, device=self.device, progress=False, **params).state_dict
        return state, time.perf_counter() - t0

    def __call__(self, tasks, method: str, params: dict) -> dict:
        """Merge the experts of ``tasks`` with a registry method; score the merge on those tasks."""
        state, seconds = self.merged(tasks, method, params)
        acc = evaluate_backbone(state, self.zoo, {t: self.data[t] for t in tasks}, device=self.device)
        return {"tasks": list(tasks), "avg_acc": average_accuracy(acc), "norm_acc": normalized_accuracy(acc, self.expert_acc),
                "recovered": recovered_gain(acc, self.base_acc, self.expert_acc), "seconds": seconds}


def run_sizes(score: Scorer, sizes=(1, 2, 4, 8), n_subsets: int = 3, runs=RUNS, log=print) -> list[dict]:
    """One row per (size, subset, method)."""
    rows = []
    for size in sizes:
        for subset in subsets(score.zoo.tasks, size, n_subsets):
            rows += [{"size": size, "method": label, **score(subset, m, p)} for label, (m, p) in runs.items()]
            log(f"N={size} {'+'.join(subset)} done")
    return rows


def run_scales(score: Scorer, scales=(0.125, 0.25, 0.5, 1.0), runs=RUNS, log=print) -> list[dict]:
    """One row per (scale, method) on all the zoo's tasks; ``average`` (no scale) is skipped."""
    rows = []
    for s in scales:
        rows += [{"scale": s, "method": label, **score(score.zoo.tasks, m, {**p, "scale": s})}
                 for label, (m, p) in runs.items() if m != "average"]
        log(f"scale={s:g} done")
    return rows


def own_response(score: Scorer, alphas=(0.125, 0.25, 0.5, 1.0)) -> list[dict]:
    """One row per (task, alpha): task t's accuracy at ``theta0 + alpha tau_t`` and the share of its gain."""
    response = E.own_response(score.base, score.experts, score.zoo, score.data, alphas, device=score.device)
    return [{"task": t, "alpha": a, "acc": acc, "recovered": recovered_gain({t: acc}, score.base_acc, score.expert_acc)}
            for t, by_alpha in response.items() for a, acc in by_alpha.items()]


def cross_effect(score: Scorer) -> dict[str, dict[str, float]]:
    """``effect[s][t] = acc_t(theta0 + tau_s) - acc_t(theta0)`` (points): expert s alone, scored on every task t."""
    return E.cross_effect(score.base, score.experts, score.zoo, score.data, device=score.device, base_acc=score.base_acc)


def task_vector_cosines(score: Scorer) -> list[float]:
    """Cosine of every pair of task vectors over the 2-D matrices (near 0: the weights barely overlap)."""
    flat = {t: torch.cat([(e[k].double() - w0.double()).flatten() for k, w0 in score.base.items() if w0.ndim == 2])
            for t, e in score.experts.items()}
    tasks = list(flat)
    return [float(torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=0))
            for i, a in enumerate(tasks) for b in tasks[i + 1:]]


def heads_and_probes(score: Scorer, runs=RUNS, train_images: int | None = None, log=print) -> list[dict]:
    """One row per model (base, experts, each merge of all the tasks): mean accuracy through the fixed
    heads and through a linear probe on its own features, and the share of the gain each keeps."""
    zoo, tasks = score.zoo, score.zoo.tasks
    train = {t: tuple(a[:train_images] for a in zoo.train_data(t)) for t in tasks}

    def probe(state, on):
        return E.probe_accuracy(state, zoo, {t: train[t] for t in on}, {t: score.data[t] for t in on}, device=score.device)

    base_probe = probe(score.base, tasks)
    expert_probe = {t: probe(e, [t])[t] for t, e in score.experts.items()}

    def row(model, head, prb):
        return {"model": model, "head": average_accuracy(head), "probe": average_accuracy(prb),
                "head_kept": recovered_gain(head, score.base_acc, score.expert_acc),
                "probe_kept": recovered_gain(prb, base_probe, expert_probe), "per_task_probe": prb}

    rows = [row("base", score.base_acc, base_probe), row("experts (each on its own task)", score.expert_acc, expert_probe)]
    for label, (m, p) in runs.items():
        state, _ = score.merged(tasks, m, p)
        rows.append(row(f"{label}, all {len(tasks)} tasks", evaluate_backbone(state, zoo, score.data, device=score.device),
                        probe(state, tasks)))
        log(f"probe {label} done")
    return rows


def probe_table(rows: list[dict]) -> str:
    out = ["| model | head acc | probe acc | head: gain kept % | probe: gain kept % |", "|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['head']:.1f} | {r['probe']:.1f} | {r['head_kept']:.1f} | {r['probe_kept']:.1f} |"
            for r in rows]
    return "\n".join(out)


def response_table(rows: list[dict]) -> str:
    """Own-task accuracy (share of the gain) per task and alpha, with the mean share per alpha."""
    alphas = sorted({r["alpha"] for r in rows})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    head = f"{'task':<14s}" + "".join(f"{f'alpha={a:g}':>16s}" for a in alphas)
    lines = ["own response: acc_t(theta0 + alpha tau_t) % (share of the gain %)", head, "-" * len(head)]
    cell = {(r["task"], r["alpha"]): r for r in rows}
    for t in tasks:
        lines.append(f"{t:<14s}" + "".join(f"{cell[t, a]['acc']:8.1f} ({cell[t, a]['recovered']:4.0f})" for a in alphas))
    lines.append(f"{'mean share':<14s}" + "".join(f"{np.nanmean([cell[t, a]['recovered'] for t in tasks]):>16.1f}" for a in alphas))
    return "\n".join(lines)


def cross_table(effect: dict[str, dict[str, float]]) -> str:
    """The cross-effect matrix (rows: scored task t, columns: added expert s) and its off-diagonal mean."""
    tasks = list(effect)
    lines = ["cross effect: acc_t(theta0 + tau_s) - acc_t(theta0), points (rows t, columns s; diagonal = gain)",
             f"{'':<14s}" + "".join(f"{s[:7]:>8s}" for s in tasks)]
    lines += [f"{t:<14s}" + "".join(f"{effect[s][t]:8.1f}" for s in tasks) for t in tasks]
    off = [effect[s][t] for s in tasks for t in tasks if s != t]
    if off:
        lines.append(f"off-diagonal: mean {np.mean(off):.1f}, worst {min(off):.1f} points")
    return "\n".join(lines)


def table(rows: list[dict], column: str = "size") -> str:
    """Mean over rows of the recovered gain (and normalized accuracy): one line per method, one column per ``column`` value."""
    values = sorted({r[column] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = f"{'method':<24s}" + "".join(f"{f'{column}={v:g}':>18s}" for v in values)
    lines = ["recovered gain % (normalized accuracy %)" + (", mean over subsets" if column == "size" else ""),
             head, "-" * len(head)]
    for m in methods:
        cells = []
        for v in values:
            sel = [r for r in rows if r["method"] == m and r[column] == v]
            rec, norm = np.mean([r["recovered"] for r in sel]), np.mean([r["norm_acc"] for r in sel])
            cells.append(f"{rec:8.1f} ({norm:5.1f})")
        lines.append(f"{m:<24s}" + "".join(f"{c:>18s}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="zoo expert seed")
    p.add_argument("--root", default=None, help="a zoo built there, any recipe (default: data/zoo, built if missing)")
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8], help="numbers of tasks (none: skip)")
    p.add_argument("--subsets", type=int, default=3, help="random task subsets per size")
    p.add_argument("--scales", type=float, nargs="*", default=[0.125, 0.25, 0.5, 1.0], help="scales (none: skip)")
    p.add_argument("--alphas", type=float, nargs="*", default=[], help="own-response scales of each expert (none: skip)")
    p.add_argument("--cross", action="store_true", help="print the cross-effect matrix and the task-vector cosines")
    p.add_argument("--probe", action="store_true", help="heads vs linear probes for the base, the experts and each merge")
    p.add_argument("--probe-train", type=int, default=0, help="training images per task for the probes (0: all)")
    p.add_argument("--images", type=int, default=300, help="test images per task (0: the whole split)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from swudi_lab.zoo import build_zoo, load_zoo

    # --root: a zoo already built there, whatever its recipe (e.g. `swudi-lab zoo build --root DIR --lr 3e-4`);
    # by default the demo's zoo, built or reused with the default recipe
    zoo = load_zoo(a.root, seed=a.seed) if a.root else build_zoo(seed=a.seed)
    score = Scorer(zoo, a.images or None, a.device)
    if a.sizes:
        print(table(run_sizes(score, a.sizes, a.subsets), "size"))
    if a.scales:
        print(table(run_scales(score, a.scales), "scale"))
    if a.alphas:
        print(response_table(own_response(score, a.alphas)))
    if a.cross:
        print(cross_table(cross_effect(score)))
        cos = task_vector_cosines(score)
        print(f"task-vector cosines (2-D matrices), {len(cos)} pairs: min {min(cos):.3f}, mean {np.mean(cos):.3f}, max {max(cos):.3f}")
    if a.probe:
        print(probe_table(heads_and_probes(score, train_images=a.probe_train or None)))

if __name__ == "__main__":
    main()
