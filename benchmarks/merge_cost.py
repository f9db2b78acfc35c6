"""Time and peak memory of every merge method on ViT-B/16-shaped layers, side by side.

    python benchmarks/merge_cost.py                         # auto device, 12 blocks, everything measured
    python benchmarks/merge_cost.py --device cpu --ref-blocks 1 --iter-steps 30   # the CPU table
    python benchmarks/merge_cost.py --quick                 # 1 block, for a smoke run

Layers: ``--blocks`` blocks of qkv (2304 x 768), proj (768 x 768), fc1 (3072 x 768) and
fc2 (768 x 3072), 8 experts, low-rank-plus-noise task vectors (rank ``--rank`` signal plus 10%
noise), generated deterministically per layer outside the measurement. Each method's per-layer
rule (the registry function the engine calls) runs on every layer inside
:func:`swudi_lab.evaluate.measure`: ``seconds`` is the sum over layers, ``peak MB`` the largest
per-layer peak above the memory in use at entry (CPU: peak RSS; CUDA: max allocated), which is
what a streaming merge needs. The ``floor`` row is the Gram products and ``eigh`` alone
(``interference_operator`` + ``eigh``), which every spectral method must pay.

Scaling (stated in the ``how`` column): with ``--blocks B < 12`` every time is multiplied by
12 / B (blocks are identical in shape). With ``--ref-blocks R`` the ``wudi --reference`` row is
measured on R blocks and scaled by 12 / R. With ``--iter-steps S < 300`` the Adam rows (``wudi``,
``wudi --reference``) are measured at 0 and at S steps per layer and extrapolated linearly to
300 steps (``t(300) = t(0) + 300 (t(S) - t(0)) / S``; Adam's per-step cost is constant and its
state is allocated at the first step, so the peak memory is the measured one).

Results are printed as one table and written to ``--out`` (JSON). On CPU the script re-executes
itself once with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed buffers go back to the OS and
peak RSS is not hidden by memory the allocator kept from earlier layers (harmless on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import swudi_lab  # noqa: F401  (before anything that may import timm)
import torch

from swudi_lab.config import paths
from swudi_lab.evaluate import measure
from swudi_lab.files import atomic_write_text
from swudi_lab.merge import get_method, resolve_device, resolve_params
from swudi_lab.merge.engine import _no_tf32
from swudi_lab.spectral import eigh, interference_operator

BLOCK = [("qkv", 2304, 768), ("proj", 768, 768), ("fc1", 3072, 768), ("fc2", 768, 3072)]
FULL_BLOCKS, FULL_STEPS = 12, 300

# (row label, registry method, parameters); "floor" is the Gram products + eigh only
ROWS = [
    ("floor", None, {}),
    ("average", "average", {}),
    ("task_arithmetic", "task_arithmetic", {}),
    ("ties", "ties", {}),
    ("wudi --reference", "wudi", {"reference": True}),
    ("wudi", "wudi", {}),
    ("closed_form", "closed_form", {}),
    ("iwudi", "iwudi", {}),
    ("filtered tikhonov", "filtered", {"filter": "tikhonov", "alpha": 1e-3}),
    ("swudi", "swudi", {}),
    ("swudi_a", "swudi_a", {}),
]


def task_vectors(block: int, layer: int, d_out: int, d_in: int, n: int, rank: int, device, dtype) -> torch.Tensor:
    """(n, d_out, d_in) low-rank-plus-noise task vectors, deterministic per (block, layer)."""
    g = torch.Generator(device=device).manual_seed(1000 * block + layer)
    kw = dict(generator=g, device=device, dtype=dtype)
    signal = torch.randn(n, d_out, rank, **kw) @ torch.randn(n, rank, d_in, **kw) / rank
    taus = signal + 0.1 * signal.std() * torch.randn(n, d_out, d_in, **kw)
    return taus * 1e-3  # fine-tuning deltas are small


def floor_fn(taus: torch.Tensor):
    C, D = interference_operator(taus)
    return eigh(C)


def run_row(fn, blocks: int, args, device, dtype) -> tuple[float, float]:
    """Sum of seconds and max peak MB of ``fn(taus)`` over ``blocks`` blocks of layers."""
    seconds, peak = 0.0, 0.0
    for b in range(blocks):
        for li, (_, d_out, d_in) in enumerate(BLOCK):
            taus = task_vectors(b, li, d_out, d_in, args.n_experts, args.rank, device, dtype)
            with _no_tf32(), torch.no_grad(), measure(device) as m:
                fn(taus)
            seconds += m.seconds
            peak = max(peak, m.peak_mb)
            del taus
    return seconds, peak


def method_fn(name: str, params: dict):
    m = get_method(name)
    p = resolve_params(m, params)
    return lambda taus: m.fn(taus, name="bench", **p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--blocks", type=int, default=FULL_BLOCKS, help="blocks measured (times scaled to 12)")
    ap.add_argument("--ref-blocks", type=int, default=None, help="blocks for wudi --reference (default --blocks)")
    ap.add_argument("--iter-steps", type=int, default=FULL_STEPS, help="Adam steps measured (extrapolated to 300)")
    ap.add_argument("--quick", action="store_true", help="1 block, 30 Adam steps")
    ap.add_argument("--n-experts", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16, help="rank of each task vector's signal part")
    ap.add_argument("--methods", nargs="+", default=None, help="only these rows (labels of the table)")
    ap.add_argument("--out", default=None, help="JSON output (default: results/bench/merge_cost.json, $SWUDI_LAB_RESULTS)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.quick:
        args.blocks, args.iter_steps = 1, min(args.iter_steps, 30)
    ref_blocks = min(args.ref_blocks or args.blocks, args.blocks)
    rows = [r for r in ROWS if args.methods is None or r[0] in args.methods]

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{args.dtype}, {args.n_experts} experts, blocks {args.blocks} (reference {ref_blocks}), "
          f"Adam steps measured {args.iter_steps}", flush=True)
    task_vectors(0, 0, 8, 8, 2, 2, device, dtype)  # warm up the device
    results = []
    for label, name, params in rows:
        blocks = ref_blocks if label == "wudi --reference" else args.blocks
        scale = FULL_BLOCKS / blocks
        how = [] if blocks == FULL_BLOCKS else [f"{blocks} of 12 blocks x{scale:g}"]
        t_start = time.perf_counter()
        if name is None:
            seconds, peak = run_row(floor_fn, blocks, args, device, dtype)
        elif name == "wudi" and args.iter_steps < FULL_STEPS:
            s = args.iter_steps
            t0, _ = run_row(method_fn(name, {**params, "steps": 0}), blocks, args, device, dtype)
            ts, peak = run_row(method_fn(name, {**params, "steps": s}), blocks, args, device, dtype)
            seconds = t0 + FULL_STEPS * (ts - t0) / s
            how.append(f"{s} steps -> 300")
        else:
            seconds, peak = run_row(method_fn(name, params), blocks, args, device, dtype)
        results.append({"method": label, "device": str(device), "seconds": seconds * scale, "peak_mb": peak,
                        "how": ", ".join(how) or "measured", "wall_s": time.perf_counter() - t_start})
        print(f"  {label:<18} {seconds * scale:10.2f} s  {peak:9.1f} MB  ({results[-1]['how']})", flush=True)

    by = {r["method"]: r for r in results}
    ref, fast, floor = by.get("wudi --reference"), by.get("wudi"), by.get("floor")
    for r in results:
        r["x_vs_reference"] = ref["seconds"] / r["seconds"] if ref else None
        r["x_vs_wudi"] = fast["seconds"] / r["seconds"] if fast else None
        r["mem_vs_reference"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 0 else None
        r["x_floor"] = r["seconds"] / floor["seconds"] if floor else None
    print()
    print(table(results))
    out = Path(args.out) if args.out else paths.bench_results_dir() / "merge_cost.json"
    meta = {"device": str(device), "dtype": args.dtype, "n_experts": args.n_experts, "rank": args.rank,
            "blocks": args.blocks, "ref_blocks": ref_blocks, "iter_steps": args.iter_steps,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    atomic_write_text(out, json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {out}")
    return 0


def _f(v, fmt) -> str:
    return "" if v is None else format(v, fmt)


def table(results: list[dict]) -> str:
    """Markdown table: method, device, seconds, how, peak MB, speed-ups, memory ratio, x floor."""
    head = "| method | device | seconds | how | peak MB | x faster vs `wudi --reference` | x faster vs `wudi` | memory vs reference | x floor |"
    lines = [head, "|" + "---|" * 9]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['device']} | {r['seconds']:.2f} | {r['how']} | {r['peak_mb']:.1f} | "
            f"{_f(r['x_vs_reference'], '.1f')} | {_f(r['x_vs_wudi'], '.2f')} | {_f(r['mem_vs_reference'], '.3f')} | "
            f"{_f(r['x_floor'], '.2f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.exit(main())
