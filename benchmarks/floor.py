"""swudi_lab's one-eigh methods against a straightforward implementation and the floor, side by side (issue 21).

    python benchmarks/floor.py                       # 1 block of each model's shapes, 3 repeats, scaled to 12 blocks
    python benchmarks/floor.py --blocks 12 --repeats 1
    python benchmarks/floor.py --quick               # the smallest layers only, for a smoke run

Layers: CLIP ViT-B/16 and ViT-B/32 as the ``hf_clip`` profile merges them: per block ``q_proj``, ``k_proj``,
``v_proj``, ``out_proj`` (768 x 768), ``fc1`` (3072 x 768), ``fc2`` (768 x 3072), and the position embedding
(197 x 768 for B/16, 50 x 768 for B/32). The 12 blocks have the same shapes in both models, so ``--blocks``
blocks are measured once and scaled by 12 / blocks for both; each model adds its position embedding. 8
experts, random task vectors (low-rank plus noise, entries ~1e-3) of those shapes, generated per layer
outside the measurement.

Per layer, on the same matrices, in one process and interleaved (the order rotates every repeat):

- ``swudi_lab``: the registry functions the engine calls (``swudi``, ``swudi_a``, ``closed_form``), diagnostics
  (proxy loss before and after, K, eigenvalue summary) included;
- ``straightforward``: the same formulas as a reader of the paper writes them (:func:`straightforward`):
  the per-expert Gram stack ``G_i = tau_i^T tau_i`` (N x d_in x d_in), ``C = sum G_i / n_i``,
  ``D = sum tau_i G_i / n_i``, ``torch.linalg.eigh``, and four dense products for
  ``theta_f = theta0 - (theta0 V) F V^T + (D V) diag(f / lambda) V^T``; no diagnostics;
- ``floor``: the minimal products plus one eigh (:func:`floor`): C, D in the cheaper association, the
  eigendecomposition by the fastest exact routine, ``[D; theta0] V_K`` and ``(.) V_K^T`` over the
  method's own K kept columns.

``seconds``: per layer the minimum over ``--repeats`` (the machine is shared), summed over the layers,
timed with glibc's allocator reusing freed blocks as in a long merge (``M_MMAP_THRESHOLD`` 32 MB);
``peak MB``: the largest per-layer peak above the memory in use at entry (:func:`swudi_lab.evaluate.measure`,
peak RSS on CPU), from one more pass per implementation and layer with every block above 64 KB
mapped fresh and the free heap pages handed back first, so that RSS follows what is alive. The ratios against the targets of issue 21 (>= 1.5x faster than straightforward,
<= 1.2x the floor, <= 0.5x its peak memory) are printed for each method, and the eigendecomposition
candidates (``torch.linalg.eigh``, swudi_lab's tridiagonal route, ``scipy.linalg.eigh`` drivers) are timed on the d_in x d_in C of
every shape. Then the low-rank table of ``benchmarks/lora.py`` (8 rank-16 LoRA adapters on ViT-B/16
and Llama-3-8B shapes, dense path against low-rank path; ``--no-lora`` skips it). Results also go to
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import swudi_lab  # noqa: F401
import torch

from swudi_lab.config import paths
from swudi_lab.evaluate import measure
from swudi_lab.files import atomic_write_text
from swudi_lab.merge import get_method, resolve_params
from swudi_lab.merge.engine import _no_tf32
from swudi_lab.spectral.filters import swudi_count
from swudi_lab.spectral.linalg import eigenpairs, tridiagonal_eigenpairs, tridiagonal_eigh

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora  # noqa: E402  (benchmarks/lora.py, the low-rank table)

BLOCK = [("q_proj", 768, 768), ("k_proj", 768, 768), ("v_proj", 768, 768), ("out_proj", 768, 768),
         ("fc1", 3072, 768), ("fc2", 768, 3072)]
POSITION = {"ViT-B/16": ("position_embedding", 197, 768), "ViT-B/32": ("position_embedding", 50, 768)}
FULL_BLOCKS = 12
METHODS = {"swudi": {}, "swudi_a": {}, "closed_form": {}}
TARGETS = {"x faster than straightforward": 1.5, "x the floor": 1.2, "memory vs straightforward": 0.5}


def task_vectors(layer: int, d_out: int, d_in: int, n: int = 8, rank: int = 16, dtype=torch.float32) -> torch.Tensor:
    """(n, d_out, d_in) low-rank-plus-noise task vectors, deterministic per layer."""
    g = torch.Generator().manual_seed(layer)
    signal = torch.randn(n, d_out, rank, generator=g, dtype=dtype) @ torch.randn(n, rank, d_in, generator=g,
                                                                               dtype=dtype) / rank
    return 1e-3 * (signal + 0.1 * signal.std() * torch.randn(n, d_out, d_in, generator=g, dtype=dtype))


# ----------------------------------------------------------------------------- the straightforward implementation


def _descending_eigh(C):
    lam, V = torch.linalg.eigh(C)
    return lam.flip(0), V.flip(1)


def straightforward(taus: torch.Tensor, method: str, t: float = 1300.0, ratio: float = 0.65) -> torch.Tensor:
    """The formulas of the paper as written: Gram stack, ``tau_i G_i``, one eigh, four dense products.

    ``method``: ``swudi`` (``f = (1 - exp(-lambda t)) 1[k <= K]``, ``K = max(1, floor(ratio d_in + 0.999))``),
    ``swudi_a`` (``f = 1[k <= K]``, ``K = ceil((sum sqrt lambda)^2 / sum lambda)``) or ``closed_form``
    (``f = 1`` above ``max(1e-8, d eps lambda_max)``). Returns ``theta_f`` (sum init).
    """
    n = (taus * taus).sum(dim=(1, 2))
    G = taus.transpose(1, 2) @ taus  # (N, d_in, d_in)
    C = (G / n[:, None, None]).sum(0)
    C = 0.5 * (C + C.T)
    D = (taus @ G / n[:, None, None]).sum(0)
    lam, V = _descending_eigh(C)
    lam = lam.clamp_min(0)
    d = lam.numel()
    tol = max(1e-8, d * torch.finfo(lam.dtype).eps * float(lam[0]))
    if method == "swudi":
        K = max(1, math.floor(ratio * d + 0.999))
        f = -torch.expm1(-lam * t)
        f[K:] = 0
        f_over = torch.where(lam > 0, f / lam.clamp_min(torch.finfo(lam.dtype).tiny), torch.full_like(lam, t))
        f_over[K:] = 0
    else:
        if method == "swudi_a":
            s = lam.clamp_min(1e-8)
            K = min(d, max(1, math.ceil(float(s.sqrt().sum() ** 2 / s.sum()))))
        else:
            K = d
        f = torch.zeros_like(lam)
        f[:K] = 1
        f_over = torch.where(lam > tol, f / lam.clamp_min(tol), torch.zeros_like(lam))
    theta0 = taus.sum(0)
    return theta0 - ((theta0 @ V) * f) @ V.T + ((D @ V) * f_over) @ V.T


# ----------------------------------------------------------------------------- the floor


def floor(taus: torch.Tensor, K: int, f: torch.Tensor, f_over: torch.Tensor) -> torch.Tensor:
    """The minimal work of a one-eigh merge with K kept directions: the norms, ``C`` and ``D`` (one
    Gram matrix at a time, symmetric ones by BLAS ``syrk``, D in the cheaper association), one
    ``eigh`` by the fastest exact routine measured with only the K kept eigenvectors formed
    (:func:`swudi_lab.spectral.linalg.eigenpairs`), ``[D; theta0] V_K`` as one product and
    ``theta0 + coeff V_K^T``; no diagnostics. ``f``,
    ``f_over`` (K,) are given (computing them is not the floor's work)."""
    from scipy.linalg import blas

    syrk = blas.dsyrk if taus.dtype == torch.float64 else blas.ssyrk
    N, d_out, d_in = taus.shape
    C = taus.new_zeros(d_in, d_in)
    M = taus.new_zeros(2 * d_out, d_in)
    D = M[:d_out]
    for t in taus:
        w = 1.0 / float(torch.dot(t.reshape(-1), t.reshape(-1)))
        if d_in <= d_out:
            G = torch.from_numpy(syrk(1.0, t.numpy().T, trans=0))
            G = G + G.triu(1).T
            C.add_(G, alpha=w)
            D.addmm_(t, G, alpha=w)
        else:
            syrk(w, t.numpy().T, beta=1.0, c=C.numpy().T, trans=0, overwrite_c=1)
            E = torch.from_numpy(syrk(1.0, t.numpy().T, trans=1))
            D.addmm_(E + E.triu(1).T, t, alpha=w)
    if d_in > d_out:
        C = C.tril() + C.tril(-1).T
    torch.sum(taus, 0, out=M[d_out:])
    Vk = eigenpairs(C).leading(K)  # the K leading eigenvectors (only those back-transformed on the tridiagonal route)
    P = M @ Vk
    coeff = P[:d_out] * f_over - P[d_out:] * f
    return torch.addmm(M[d_out:], coeff, Vk.T)


# ----------------------------------------------------------------------------- measurement


MEMORY_PASS_BYTES = 64 * 1024  # glibc mmaps every block above it: RSS follows what is alive
TIMING_PASS_BYTES = 32 * 1024 * 1024  # glibc's own dynamic threshold tops out here on 64-bit
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, or ``None`` elsewhere (the thresholds are then the allocator's own)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def _mmap_threshold(nbytes: int):
    """glibc's ``M_MMAP_THRESHOLD`` for the block (nothing elsewhere). Low, freed memory goes back to the
    OS at once, so the peak RSS above entry is the block's own; high, blocks are reused as in a long
    run (with the low one every large temporary is a fresh mmap and its pages fault in: ~20 % on the
    768 x 768 layers for every implementation)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, nbytes)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, TIMING_PASS_BYTES)


def _timed(fn, taus):
    with _no_tf32(), torch.no_grad(), measure("cpu") as m:
        fn(taus)
    return m.seconds, m.peak_mb


def run(layers, repeats: int, log=print) -> dict:
    """Per (implementation, layer): min seconds over repeats and max peak MB."""
    impls = {}
    for name, params in METHODS.items():
        m = get_method(name)
        p = resolve_params(m, params)
        impls[f"swudi_lab {name}"] = lambda taus, m=m, p=p: m.fn(taus, name="bench", **p)
        impls[f"straightforward {name}"] = lambda taus, name=name: straightforward(taus, name)
    results = {}
    for li, (label, d_out, d_in) in enumerate(layers):
        taus = task_vectors(li, d_out, d_in)
        # each method's own K and factors on the kept columns, for its floor (outside the measurement)
        for name in METHODS:
            m = get_method(name)
            _, info = m.fn(taus, name="bench", **resolve_params(m, METHODS[name]))
            K = info["k"]
            f, f_over = torch.ones(K), torch.full((K,), 1.0 / max(info["lam_max"], 1e-8))  # any factors: not timed
            impls[f"floor {name}"] = lambda taus, K=K, f=f, f_over=f_over: floor(taus, K, f, f_over)
        order = list(impls)
        with _mmap_threshold(MEMORY_PASS_BYTES):  # one pass for the peaks: every large block fresh from the OS
            for key in order:
                lora._release()  # free heap pages back to the OS: what the block reuses faults in anew
                results.setdefault(key, {})[label] = [math.inf, _timed(impls[key], taus)[1]]
        with _mmap_threshold(TIMING_PASS_BYTES):  # the timed passes: the allocator as a long-running merge sees it
            for r in range(repeats):
                order = order[1:] + order[:1]
                for key in order:
                    cur = results[key][label]
                    cur[0] = min(cur[0], _timed(impls[key], taus)[0])
        log(f"  {label:<22} ({d_out} x {d_in}): " + ", ".join(f"{k} {results[k][label][0]:.2f}s" for k in impls))
        del taus
    return results


def eigh_candidates(dims, repeats: int) -> list[dict]:
    """Seconds of each exact symmetric eigensolver on a (d, d) C of task-vector type, float32, CPU."""
    import numpy as np
    import scipy.linalg as sl

    rows = []
    for d in dims:
        taus = task_vectors(999, 768 if d > 768 else 2304, d)
        C = torch.einsum("nij,nik->jk", taus, taus)
        C = 0.5 * (C + C.T)
        Cn = np.ascontiguousarray(C.numpy())
        cands = {"torch.linalg.eigh": lambda: torch.linalg.eigh(C),
                 "swudi_lab tridiagonal": lambda: tridiagonal_eigh(C),
                 "swudi_lab tridiagonal, top 65% vectors": lambda: tridiagonal_eigenpairs(C).leading(swudi_count(d, 0.65)),
                 "scipy evd": lambda: sl.eigh(Cn, driver="evd", check_finite=False),
                 "scipy evr": lambda: sl.eigh(Cn, driver="evr", check_finite=False),
                 "scipy evr top 65%": lambda: sl.eigh(Cn, driver="evr", check_finite=False,
                                                      subset_by_index=(d - swudi_count(d, 0.65), d - 1))}
        best = {}
        for _ in range(repeats):
            for k, fn in cands.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best.get(k, math.inf), time.perf_counter() - t0)
        rows.append({"d": d, **best})
    return rows


def summarize(results: dict, blocks: int) -> list[dict]:
    """Per model and method: seconds (12 blocks + position embedding), peak MB, the three ratios."""
    rows = []
    for model, (pos_label, _, _) in POSITION.items():
        pos = f"{pos_label} {model}"
        for name in METHODS:
            tot = {}
            for impl in ("swudi_lab", "straightforward", "floor"):
                per = results[f"{impl} {name}"]
                block = sum(per[label][0] for label in per if not label.startswith(pos_label))
                tot[impl] = (block * FULL_BLOCKS / blocks + per[pos][0],
                             max(v[1] for lab, v in per.items() if not lab.startswith(pos_label) or lab == pos))
            ours, sf, fl = tot["swudi_lab"], tot["straightforward"], tot["floor"]
            rows.append({"model": model, "method": name, "swudi_lab_s": ours[0], "straightforward_s": sf[0],
                         "floor_s": fl[0], "swudi_lab_mb": ours[1], "straightforward_mb": sf[1], "floor_mb": fl[1],
                         "x faster than straightforward": sf[0] / ours[0], "x the floor": ours[0] / fl[0],
                         "memory vs straightforward": ours[1] / sf[1] if sf[1] > 0 else float("nan")})
    return rows


def table(rows: list[dict]) -> str:
    ok = lambda key, v: ("yes" if (v >= TARGETS[key] if key.startswith("x faster") else v <= TARGETS[key]) else "NO")  # noqa: E731
    head = ("| model | method | swudi_lab s | straightforward s | floor s | swudi_lab MB | straightforward MB | "
            "x faster than straightforward (>= 1.5) | x the floor (<= 1.2) | memory vs straightforward (<= 0.5) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['swudi_lab_s']:.2f} | {r['straightforward_s']:.2f} | "
                     f"{r['floor_s']:.2f} | {r['swudi_lab_mb']:.0f} | {r['straightforward_mb']:.0f} | "
                     + " | ".join(f"{r[k]:.2f} {ok(k, r[k])}" for k in TARGETS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=1, help="blocks measured (scaled to 12)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per layer and implementation (min taken)")
    ap.add_argument("--quick", action="store_true", help="only the 768 x 768 and position layers, 1 repeat")
    ap.add_argument("--out", default=None, help="JSON output (default: results/bench/floor.json)")
    ap.add_argument("--no-lora", action="store_true", help="skip the low-rank (LoRA) table of benchmarks/lora.py")
    ap.add_argument("--dense-budget", type=float, default=lora.DENSE_BUDGET_S,
                    help="LoRA table: skip a dense run estimated above this many seconds (default %(default)s)")
    args = ap.parse_args(argv)
    block = BLOCK[:1] if args.quick else BLOCK
    layers = [(f"{lab} b{b}", o, i) for b in range(args.blocks) for lab, o, i in block]
    layers += [(f"{lab} {model}", o, i) for model, (lab, o, i) in POSITION.items()]
    repeats = 1 if args.quick else args.repeats
    load = os.getloadavg()
    print(f"CPU, {torch.get_num_threads()} torch threads, float32, 8 experts, {args.blocks} of 12 blocks "
          f"(x{FULL_BLOCKS / args.blocks:g}), {repeats} repeats, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    results = run(layers, repeats)
    rows = summarize(results, args.blocks)
    eig = eigh_candidates([768] if args.quick else [768, 3072], repeats)
    load_end = os.getloadavg()
    print()
    print(table(rows))
    print()
    print("| d | " + " | ".join(k for k in eig[0] if k != "d") + " |")
    print("|" + "---|" * len(eig[0]))
    for e in eig:
        print(f"| {e['d']} | " + " | ".join(f"{v:.3f} s" for k, v in e.items() if k != "d") + " |")
    lora_rows = None
    if not args.no_lora:  # issue 21 section 3: LoRA experts, dense path against low-rank path, in the same run
        print("\nLoRA experts (benchmarks/lora.py): SWUDI on 8 rank-16 adapters, dense path against low-rank path")
        lora_rows = lora.run(repeats, shapes=lora.SHAPES[:1] if args.quick else None, dense_budget_s=args.dense_budget)
        print()
        print(lora.table(lora_rows))
        load_end = os.getloadavg()
    print(f"\nload average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    out = Path(args.out) if args.out else paths.bench_results_dir() / "floor.json"
    meta = {"threads": torch.get_num_threads(), "blocks": args.blocks, "repeats": repeats, "torch": torch.__version__,
            "load_start": load, "load_end": load_end, "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    atomic_write_text(out, json.dumps({"meta": meta, "rows": rows, "eigh": eig, "lora": lora_rows,
                                       "per_layer": {k: {lab: v for lab, v in per.items()} for k, per in results.items()}},
                                      indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
