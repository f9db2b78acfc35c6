"""SWUDI-A's rank rules side by side on the offline zoo: the rank K each rule keeps per layer type,
and the accuracy of the merges of the main rules.

Every rule of ``swudi_lab.spectral.RANK_RULES`` runs on every merged 2-D layer of the zoo
(``iter_layer_problems``: the same C, D and eigendecomposition the merge uses, float32) with the
layer's full context (``rank_context``: ``||D q_k||^2``, ``||theta0 q_k||^2``, ``N d_out``, ``d_out``).
The first table gives K / d_in per layer type (mean over the blocks, and the range). The second
merges the zoo with ``swudi_a`` for each main rule (f = 1 on the kept directions) and scores it
through the fixed task heads, next to a few reference merges (the paper's SWUDI, the preset
``swudi-plus``, OptMerge at its published lr).

    python benchmarks/rank_rules.py                  # shipped seed 0, whole test splits (8 x 1000 images)
    python benchmarks/rank_rules.py --images 300     # 300 test images per task (faster)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swudi_lab import evaluate as E  # noqa: E402
from swudi_lab.merge import iter_layer_problems, merge  # noqa: E402
from swudi_lab.spectral import RANK_RULES, choose_rank, rank_context  # noqa: E402
from swudi_lab.viz.merging import LAYER_TYPES  # noqa: E402
from swudi_lab.config import paths  # noqa: E402
from swudi_lab.zoo import load_zoo  # noqa: E402

MAIN_RULES = ("participation_sqrt", "participation", "stable_rank", "entropy", "entropy_sq", "participation_sqrt_c2",
              "cumvar_0.9", "d_aware_participation_sqrt", "loss_elbow", "wudi_risk", "gavish_donoho",
              "gavish_donoho_authors", "none")
REFERENCES = {  # label: (method, parameters, preset)
    "swudi (t 1300, r 0.65)": ("swudi", {}, None),
    "swudi (preset swudi-plus)": ("swudi", {}, "swudi-plus"),
    "optmerge (lr 1e-5, 300 steps)": ("optmerge", {}, None),
}


def layer_kind(name: str) -> str:
    return next((k for k in LAYER_TYPES if f".{k}." in name), "other")


def rank_table(base, experts, rules) -> tuple[dict, dict]:
    """``(ranks[rule][layer] = K, d_in[layer])`` over every merged 2-D layer."""
    ranks, d_in = {r: {} for r in rules}, {}
    for p in iter_layer_problems(base, experts, device="cpu"):
        ctx = rank_context(p.taus, eig=p.eig, D=p.D)
        d_in[p.name] = p.C.shape[0]
        for r in rules:
            ranks[r][p.name] = choose_rank(p.eig.values, r, **ctx)
    return ranks, d_in


def format_rank_table(ranks: dict, d_in: dict) -> str:
    kinds = [k for k in LAYER_TYPES if any(layer_kind(n) == k for n in d_in)]
    widths = {k: f"{k} (d_in {sorted({d_in[n] for n in d_in if layer_kind(n) == k})[0]})" for k in kinds}
    lines = [f"{'rule':<28s}" + "".join(f"{widths[k]:>24s}" for k in kinds) + f"{'all':>8s}",
             "-" * (28 + 24 * len(kinds) + 8)]
    for rule, per_layer in ranks.items():
        cells = []
        for k in kinds:
            share = [per_layer[n] / d_in[n] for n in per_layer if layer_kind(n) == k]
            cells.append(f"{np.mean(share):.2f} [{min(share):.2f}-{max(share):.2f}]")
        total = np.mean([per_layer[n] / d_in[n] for n in per_layer])
        lines.append(f"{rule:<28s}" + "".join(f"{c:>24s}" for c in cells) + f"{total:8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="expert seed of the zoo (default 0, the shipped one)")
    ap.add_argument("--root", default=None, help="zoo cache directory (default: swudi_lab.config.paths.zoo_dir())")
    ap.add_argument("--images", type=int, default=None, help="test images per task (default: whole test splits)")
    ap.add_argument("--rules", nargs="*", default=None, help="rules scored for accuracy (default: the main ones)")
    ap.add_argument("--no-references", action="store_true", help="skip the reference merges")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)  # a small ViT: one thread is fastest on a shared CPU
    zoo = load_zoo(args.root, seed=args.seed)
    base = zoo.base_state_dict()
    experts = {t: zoo.expert_state_dict(t) for t in zoo.tasks}

    t0 = time.perf_counter()
    ranks, d_in = rank_table(base, experts, list(RANK_RULES))
    print(f"K / d_in per layer type, every rank rule (seed {args.seed}, {len(d_in)} layers, "
          f"{len(experts)} experts; mean over the blocks [min-max]; {time.perf_counter() - t0:.1f} s)\n")
    print(format_rank_table(ranks, d_in))

    data = zoo.test_data(max_per_task=args.images)
    n_images = sum(len(y) for _, y in data.values())
    expert_acc = E.reference_rows(zoo)["experts"] if args.images is None else {
        t: E.evaluate_backbone(experts[t], zoo, {t: data[t]}, device=args.device)[t] for t in zoo.tasks}
    base_acc = E.evaluate_backbone(base, zoo, data, device=args.device)
    print(f"\nAccuracy of the SWUDI-A merges ({n_images} test images; base with heads "
          f"{E.average_accuracy(base_acc):.2f} %, experts {E.average_accuracy(expert_acc):.2f} %)\n")
    print(f"{'merge':<40s} {'K / d_in':>9s} {'avg acc %':>10s} {'norm acc %':>11s} {'merge s':>8s}")
    runs = {f"swudi_a ({r})": ("swudi_a", {"rank_rule": r}, None) for r in (args.rules or MAIN_RULES)}
    if not args.no_references:
        runs.update(REFERENCES)
    for label, (method, params, preset) in runs.items():
        t0 = time.perf_counter()
        res = merge(base, experts, method, preset=preset, device=args.device, progress=False, **params)
        seconds = time.perf_counter() - t0
        rows = [r for r in res.report.rows if r.get("route") == "solver"]
        share = np.mean([r["k"] / r["shape"][1] for r in rows]) if "k" in rows[0] else float("nan")
        if method == "swudi_a":  # the merge keeps the ranks of the table
            assert all(r["k"] == ranks[params["rank_rule"]][r["name"]] for r in rows), label
        acc = E.evaluate_backbone(res.state_dict, zoo, data, device=args.device)
        k_text = f"{share:9.2f}" if np.isfinite(share) else f"{'-':>9s}"
        print(f"{label:<40s} {k_text} {E.average_accuracy(acc):10.2f} "
              f"{E.normalized_accuracy(acc, expert_acc):11.2f} {seconds:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
