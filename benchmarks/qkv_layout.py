"""How much merging in timm's layout (fused ``qkv``) changes a WUDI-family merge of HF CLIP experts.

An HF CLIP checkpoint keeps ``q_proj``, ``k_proj`` and ``v_proj`` as three (D, D) matrices; timm fuses
them into one (3D, D) ``attn.qkv``. The WUDI family solves one problem per 2-D matrix with the
interference operator ``C = sum_i tau_i^T tau_i / n_i`` (``n_i = ||tau_i||_F^2``): on the fused
matrix there is one ``C`` (and one ``n_i`` per expert) for q, k and v together instead of three, so
the solution differs on attention. Everything else converts 1:1 and merges the same, except a
routing difference of the engine: HF's position embedding is a 2-D (T, D) tensor and is solved like
a weight matrix, timm's is (1, T, D) and gets the mean of the task vectors.

Stand-in: a random-init HF ``CLIPVisionModel`` (transformers, no download) and N experts =
base + seeded perturbations, per matrix a low-rank signal plus a little noise, with a random
per-matrix size (log-uniform over a factor ``--spread``, as fine-tuning moves q, k and v by different
amounts); small Gaussian perturbations for vectors. The same experts are merged in HF layout and,
converted with :mod:`swudi_lab.hub.convert`, in timm layout; the timm merge is converted back and
compared per matrix with

    rel.W   = ||A - B|| / ||A||          (A, B: the HF-layout and timm-layout merged weights)
    rel.tau = ||A - B|| / ||A - W0||     (the same, relative to the merged task vector)

and the WUDI loss ``sum_i ||(theta - tau_i) tau_i^T||^2 / n_i`` of both merges under both problems
(q, k, v separately, and fused), summed over the layers.

    python benchmarks/qkv_layout.py                      # ~10-30 s on one CPU thread
    python benchmarks/qkv_layout.py --width 384 --depth 6 --heads 6 --methods swudi
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import swudi_lab  # noqa: F401  (torchvision shim before transformers)
from swudi_lab.hub import require
from swudi_lab.hub.convert import hf_to_timm, timm_to_hf
from swudi_lab.merge import merge
from swudi_lab.spectral import wudi_loss

# Each method with the paper's CLIP ViT-B/32 settings (the preset's, where it has them).
METHODS = {"swudi": dict(preset="clip-vit-b32"), "closed_form": {}, "iwudi": dict(preset="clip-vit-b32")}


def make_models(width=256, depth=4, heads=8, n_experts=4, rank=8, spread=4.0, size=0.05, seed=0, shared=False):
    """``(base, experts)``: HF ``CLIPVisionModel`` state dicts (bare layout) of the stand-in.

    ``shared``: an expert's q, k and v perturbations of a layer share their input directions (the
    right factor of the low-rank signal), the case most favourable to the fused layout.
    """
    transformers = require("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth,
                                        num_attention_heads=heads, image_size=64, patch_size=16,
                                        hidden_act="quick_gelu")
    torch.manual_seed(seed)
    base = {k: v.detach().clone() for k, v in transformers.CLIPVisionModel(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    experts = []
    for _ in range(n_experts):
        e, inputs = {}, {}
        for k, w in base.items():
            scale = size * float(w.float().pow(2).mean().sqrt()) * spread ** (torch.rand((), generator=g).item() - 0.5)
            if w.ndim == 2:
                d_out, d_in = w.shape
                r = min(rank, d_out, d_in)
                u, v = torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g)
                if shared and _kind(k) in ("q", "k", "v"):
                    v = inputs.setdefault(k.rsplit(".self_attn.", 1)[0], v)
                tau = u @ v / r ** 0.5 + 0.1 * torch.randn(d_out, d_in, generator=g)
                tau = tau * scale / float(tau.pow(2).mean().sqrt())
            else:
                tau = scale * torch.randn(w.shape, generator=g)
            e[k] = w + tau.to(w.dtype)
        experts.append(e)
    return base, experts


def _kind(key: str) -> str:
    for x in ("q", "k", "v"):
        if f"self_attn.{x}_proj.weight" in key:
            return x
    return "pos_embed" if key == "embeddings.position_embedding.weight" else "other"


def compare(base, experts, method: str, **params) -> dict:
    """Merge in both layouts; per-key relative differences and the WUDI losses of both merges."""
    t0 = time.perf_counter()
    a = merge(base, experts, method, progress=False, device="cpu", **params).state_dict
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused = merge(hf_to_timm(base), [hf_to_timm(e) for e in experts], method, progress=False, device="cpu",
                  **params).state_dict
    t_timm = time.perf_counter() - t0
    b = timm_to_hf(fused, prefix="")
    rows = {}
    for k in a:
        d = (a[k] - b[k]).double().norm().item()
        rows[k] = dict(kind=_kind(k), rel_w=d / max(a[k].double().norm().item(), 1e-300),
                       rel_tau=d / max((a[k] - base[k]).double().norm().item(), 1e-300))
    # WUDI losses summed over the layers: the separate (HF) problem and the fused (timm) one
    losses = {"sep": [0.0, 0.0], "fused": [0.0, 0.0]}
    depth = sum(1 for k in base if k.endswith("self_attn.q_proj.weight"))
    for i in range(depth):
        keys = [f"encoder.layers.{i}.self_attn.{x}_proj.weight" for x in "qkv"]
        taus = {k: torch.stack([e[k] - base[k] for e in experts]).double() for k in keys}
        for j, m in enumerate((a, b)):
            thetas = {k: (m[k] - base[k]).double() for k in keys}
            losses["sep"][j] += sum(float(wudi_loss(thetas[k], taus[k])) for k in keys)
            losses["fused"][j] += float(wudi_loss(torch.cat([thetas[k] for k in keys]),
                                                  torch.cat([taus[k] for k in keys], dim=1)))
    return dict(method=method, rows=rows, losses=losses, seconds=(t_hf, t_timm))


def table(res: dict) -> str:
    rows, out = res["rows"], []
    out.append(f"{res['method']}  (merge: HF layout {res['seconds'][0]:.1f} s, timm layout {res['seconds'][1]:.1f} s)")
    out.append(f"  {'tensor':<42} {'rel.W':>10} {'rel.tau':>10}")
    for k, r in rows.items():
        if r["kind"] in "qkv":
            out.append(f"  {k:<42} {r['rel_w']:>10.2e} {r['rel_tau']:>10.2e}")
    for kind, label in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
        sel = [r for r in rows.values() if r["kind"] == kind]
        out.append(f"  {label + ' mean over layers':<42} {sum(r['rel_w'] for r in sel) / len(sel):>10.2e} "
                   f"{sum(r['rel_tau'] for r in sel) / len(sel):>10.2e}")
    other = [r for r in rows.values() if r["kind"] == "other"]
    out.append(f"  {'every other tensor (max; ' + str(len(other)) + ' tensors)':<42} "
               f"{max(r['rel_w'] for r in other):>10.2e} {max(r['rel_tau'] for r in other):>10.2e}")
    pe = next(r for r in rows.values() if r["kind"] == "pos_embed")
    out.append(f"  {'position embedding (solver vs mean route)':<42} {pe['rel_w']:>10.2e} {pe['rel_tau']:>10.2e}")
    s, f = res["losses"]["sep"], res["losses"]["fused"]
    out.append("  WUDI loss on q,k,v (sum over layers)   HF-layout merge   timm-layout merge   other/own")
    out.append(f"    separate problems (HF's)           {s[0]:>15.4e}   {s[1]:>17.4e}   {s[1] / s[0]:>8.2f}x")
    out.append(f"    fused problem (timm's)             {f[0]:>15.4e}   {f[1]:>17.4e}   {f[0] / f[1]:>8.2f}x")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--rank", type=int, default=8, help="rank of each matrix perturbation's signal")
    p.add_argument("--spread", type=float, default=4.0, help="per-matrix sizes log-uniform over this factor")
    p.add_argument("--shared", action="store_true",
                   help="q, k, v perturbations of an expert's layer share their input directions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, experts = make_models(args.width, args.depth, args.heads, args.experts, args.rank, args.spread,
                                seed=args.seed, shared=args.shared)
    print(f"stand-in: HF CLIP vision, width {args.width}, depth {args.depth}, {args.heads} heads, "
          f"{args.experts} experts (rank-{args.rank} + noise per matrix, sizes spread x{args.spread}"
          f"{', q/k/v input directions shared' if args.shared else ''}), seed {args.seed}")
    for m in args.methods:
        print()
        print(table(compare(base, experts, m, **METHODS[m])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
