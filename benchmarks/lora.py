"""LoRA experts: SWUDI on the dense path against the low-rank path, time and peak memory per layer.

8 rank-16 adapters, ``tau_i = s B_i A_i`` with ``s = alpha / r = 2``, on the layer shapes of ViT-B/16
(768 x 768 attention, fc1 3072 x 768, fc2 768 x 3072) and of Llama-3-8B (q/o_proj 4096 x 4096,
gate/up_proj 14336 x 4096, i.e. d_out = 14336, d_in = 4096, and down_proj 4096 x 14336), float32 on the CPU
with the torch threads the process has (``OMP_NUM_THREADS=1`` for one).

- ``low-rank``: the registered ``swudi`` method on the :class:`~swudi_lab.spectral.LowRankTasks` (what the
  engine hands it for adapter experts): ``lowrank_operator`` (the span of the A_i rows, m <= 128), one
  m x m ``eigh``, the estimate in coordinates and the d_out x d_in output, diagnostics included.
- ``dense``: densify ``tau_i`` (inside the measurement: the dense path needs the (N, d_out, d_in) stack)
  and call the same method on it: ``layer_operator`` (C, D, L(0) from d_in x d_in or d_out x d_out Grams),
  a d_in x d_in ``eigh``, the estimate.

``seconds``: the minimum over ``repeats`` (the dense path of the Llama shapes once); ``peak MB``: the
largest peak RSS above the memory in use at entry (:func:`swudi_lab.evaluate.measure`; freed heap pages are
handed back first, ``malloc_trim``; the memory ratio's denominator is floored at 1 MB). A dense run whose
estimated time (from a 1024 x 1024 product and ``eigh`` timed first, scaled by its FLOPs) is above
``dense_budget_s`` (180 s) is skipped with the estimate as its reason (the 14336 x 14336 ``eigh`` of
down_proj on one thread). ``rel. diff`` is ``||theta_lowrank - theta_dense|| / ||theta_dense||`` of the two
float32 merges: it is the dense float32 path's own error (its d_in - m round-off "null" eigenvalues get
``f / lambda ~ t`` times round-off ``D q_k``); against a float64 merge the low-rank float32 one is ~1e-6 off,
the dense float32 one ~3e-5 (768 x 768 and 3072 x 768). ``python benchmarks/lora.py`` prints the table;
``run`` / ``table`` are its two halves.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import time

import torch

from swudi_lab.evaluate import measure
from swudi_lab.merge import get_method, resolve_params
from swudi_lab.merge.engine import _no_tf32
from swudi_lab.spectral import LowRankTasks

N_EXPERTS, RANK, ALPHA = 8, 16, 32.0
SHAPES = [("ViT-B/16", "q/k/v/out_proj", 768, 768), ("ViT-B/16", "fc1", 3072, 768), ("ViT-B/16", "fc2", 768, 3072),
          ("Llama-3-8B", "q/o_proj", 4096, 4096), ("Llama-3-8B", "gate/up_proj", 14336, 4096),
          ("Llama-3-8B", "down_proj", 4096, 14336)]
DENSE_BUDGET_S = 180.0


def adapters(d_out: int, d_in: int, n: int = N_EXPERTS, r: int = RANK, seed: int = 0) -> LowRankTasks:
    """n random rank-r adapters of one layer (B entries ~1e-2, A rows ~unit: task-vector entries ~1e-3)."""
    g = torch.Generator().manual_seed(seed)
    B = [torch.randn(d_out, r, generator=g) * 1e-2 for _ in range(n)]
    A = [torch.randn(r, d_in, generator=g) / math.sqrt(d_in) for _ in range(n)]
    return LowRankTasks(B, A, [ALPHA / r] * n)


def _rate() -> tuple[float, float]:
    """(product FLOP/s, seconds of a 1024 x 1024 eigh) on this CPU, float32, now."""
    a = torch.randn(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    a @ a
    flops = 2 * 1024**3 / (time.perf_counter() - t0)
    s = a @ a.T
    t0 = time.perf_counter()
    torch.linalg.eigh(s)
    return flops, time.perf_counter() - t0


def dense_estimate(d_out: int, d_in: int, n: int, flops: float, eigh1024: float) -> float:
    """Seconds the dense path should take: per expert two (d_out d_in min(d_out, d_in)) products (C and D),
    the estimate's two (d_out d_in^2) products, and a d_in x d_in eigh (scaled as d_in^3)."""
    small = min(d_out, d_in)
    work = n * 2 * 2 * d_out * d_in * small + 2 * 2 * 2 * d_out * d_in * d_in
    return work / flops + eigh1024 * (d_in / 1024) ** 3


def _release() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the next measurement's peak RSS
    above entry counts its own allocations, not pages a previous run left in the heap."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak is then a lower bound
        pass


def _timed(fn):
    _release()
    with _no_tf32(), torch.no_grad(), measure("cpu") as m:
        out = fn()
    return m.seconds, m.peak_mb, out


def run(repeats: int = 3, log=print, *, shapes=None, n: int = N_EXPERTS, r: int = RANK,
        dense_budget_s: float = DENSE_BUDGET_S) -> list[dict]:
    """One row per layer shape: seconds and peak MB of the low-rank and the dense path, their ratios,
    the relative difference of the two merges, or the reason the dense path was skipped."""
    method = get_method("swudi")
    params = resolve_params(method, {})
    flops, eigh1024 = _rate()
    log(f"CPU, {torch.get_num_threads()} torch threads, float32, {n} adapters of rank {r}, "
        f"{flops / 1e9:.0f} GFLOP/s, eigh(1024) {eigh1024:.2f} s")
    rows = []
    for model, layer, d_out, d_in in shapes or SHAPES:
        tasks = adapters(d_out, d_in, n, r)
        row = {"model": model, "layer": layer, "d_out": d_out, "d_in": d_in, "n": n, "r": r}
        low = [math.inf, 0.0]
        theta_low = None
        for _ in range(repeats):
            s, mb, (theta_low, info) = _timed(lambda: method.fn(tasks, name=layer, **params))
            low = [min(low[0], s), max(low[1], mb)]
        row.update(lowrank_s=low[0], lowrank_mb=low[1], m=info.get("subspace"), k=info["k"])
        est = dense_estimate(d_out, d_in, n, flops, eigh1024)
        row["dense_estimate_s"] = est
        if est > dense_budget_s:
            row["dense_skipped"] = (f"estimated {est:.0f} s > {dense_budget_s:.0f} s (a {d_in} x {d_in} eigh and "
                                    f"{n} Gram products on {torch.get_num_threads()} thread(s))")
            log(f"  {model} {layer} ({d_out} x {d_in}): low-rank {low[0]:.3f} s {low[1]:.0f} MB; dense skipped: "
                f"{row['dense_skipped']}")
        else:
            dense = [math.inf, 0.0]
            reps = repeats if est * repeats <= 30 else 1
            for _ in range(reps):
                s, mb, (theta_dense, _) = _timed(lambda: method.fn(tasks.dense(), name=layer, **params))
                dense = [min(dense[0], s), max(dense[1], mb)]
            row.update(dense_s=dense[0], dense_mb=dense[1], dense_repeats=reps,
                       time_ratio=dense[0] / low[0], memory_ratio=dense[1] / max(low[1], 1.0),
                       rel_diff=float((theta_low - theta_dense).norm() / theta_dense.norm()))
            log(f"  {model} {layer} ({d_out} x {d_in}): low-rank {low[0]:.3f} s {low[1]:.0f} MB, dense {dense[0]:.2f} s "
                f"{dense[1]:.0f} MB ({row['time_ratio']:.0f}x time, {row['memory_ratio']:.1f}x memory)")
            del theta_dense
        rows.append(row)
        del tasks, theta_low
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table, ratios dense / low-rank."""
    out = ["| model | layer | d_out x d_in | m | low-rank s | dense s | time dense/low-rank | low-rank MB | dense MB | "
           "memory dense/low-rank | rel. diff |", "|" + "---|" * 11]
    for r in rows:
        head = f"| {r['model']} | {r['layer']} | {r['d_out']} x {r['d_in']} | {r.get('m')} | {r['lowrank_s']:.3f} |"
        if "dense_skipped" in r:
            out.append(head + f" skipped: {r['dense_skipped']} | | {r['lowrank_mb']:.1f} | | | |")
        else:
            out.append(head + f" {r['dense_s']:.2f} | {r['time_ratio']:.0f}x | {r['lowrank_mb']:.1f} | {r['dense_mb']:.0f} | "
                       f"{r['memory_ratio']:.1f}x | {r['rel_diff']:.1e} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="measurements per path (min taken; dense Llama once)")
    ap.add_argument("--dense-budget", type=float, default=DENSE_BUDGET_S,
                    help="skip a dense run estimated above this many seconds")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    t0 = time.perf_counter()
    rows = run(args.repeats, dense_budget_s=args.dense_budget)
    print()
    print(table(rows))
    end = os.getloadavg()
    print(f"\n{time.perf_counter() - t0:.0f} s in all; load average {load[0]:.2f} at the start, {end[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
