"""Peak memory of a streaming merge of ViT-B/32-shaped HF checkpoints from disk.

Builds (once, under ``--root``) a base and ``--experts`` experts as ``transformers.CLIPVisionModel``
folders at the real CLIP ViT-B/32 vision shapes (random weights: width 768, 12 layers, patch 32,
88 M parameters, ~350 MB per file), then merges them with ``swudi-lab merge`` semantics
(:func:`swudi_lab.merge.merge_files`, HF directory out) in a fresh process and reports that
process's peak resident memory (``ru_maxrss``) beside the size of one expert file and the
interpreter's own footprint after the imports. The engine reads one tensor at a time from each
file, so the peak should stay under twice one expert's size plus the interpreter.

    python benchmarks/hf_memory.py [--experts 8] [--method swudi] [--root /tmp/swudi_hf_memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
           image_size=224, patch_size=32, hidden_act="quick_gelu", projection_dim=512)


def build(root: Path, n_experts: int) -> tuple[Path, list[Path]]:
    import torch

    import swudi_lab.torchvision_compat  # noqa: F401
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    base_dir, experts = root / "base", [root / f"expert{i}" for i in range(n_experts)]
    if (root / "done.json").is_file() and json.loads((root / "done.json").read_text()) == {"experts": n_experts}:
        return base_dir, experts
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**B32))
    model.save_pretrained(base_dir)
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for i, d in enumerate(experts):
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.is_floating_point():
                    v.add_(1e-3 * torch.randn(v.shape, generator=g))
        model.save_pretrained(d)
        model.load_state_dict(state)
    (root / "done.json").write_text(json.dumps({"experts": n_experts}))
    return base_dir, experts


CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
import swudi_lab.torchvision_compat
from swudi_lab.merge import merge_files
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
base, out, method = sys.argv[1], sys.argv[2], sys.argv[3]
experts = json.loads(sys.argv[4])
merge_files(base, experts, out, method, device="cpu", progress=False, preset="clip-vit-b32")
print(json.dumps({"idle_kb": idle, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - t0}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--method", default="swudi")
    ap.add_argument("--root", default="/tmp/swudi_hf_memory")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    root = Path(args.root)
    t0 = time.perf_counter()
    base, experts = build(root, args.experts)
    print(f"checkpoints ready in {time.perf_counter() - t0:.0f} s under {root}")
    out = root / f"merged_{args.method}"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(base), str(out), args.method,
                           json.dumps([str(e) for e in experts]), str(args.threads)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    one = (experts[0] / "model.safetensors").stat().st_size / 2**20
    idle, peak = r["idle_kb"] / 1024, r["peak_kb"] / 1024
    print(f"{args.experts} experts x {one:.0f} MB ({args.method}, {r['seconds']:.0f} s): peak RSS {peak:.0f} MB; "
          f"interpreter after imports {idle:.0f} MB; peak - interpreter = {peak - idle:.0f} MB = "
          f"{(peak - idle) / one:.2f} x one expert file (target < 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
