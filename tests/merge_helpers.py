"""Small synthetic checkpoints shared by the merge tests (not a test module)."""

import torch


def make_checkpoints(n_experts=3, seed=0, dtype=torch.float32, heads=True, shapes=None):
    """Base + experts with a 2-D weight, a 1-D bias, a 3-D embedding, an int buffer and (optionally) heads.

    Task vectors are low-rank plus noise, so C has a spread spectrum.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"blocks.0.fc.weight": (24, 16), "blocks.0.fc.bias": (24,), "blocks.1.proj.weight": (16, 24),
                        "pos_embed": (1, 5, 16)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base["norm.num_batches_tracked"] = torch.tensor(7)
    if heads:
        base["head.weight"] = torch.randn(5, 16, generator=g)
        base["head.bias"] = torch.zeros(5)
    experts = []
    for i in range(n_experts):
        e = {}
        for k, v in base.items():
            if not v.is_floating_point():
                e[k] = v.clone()
            elif k.startswith("head."):
                e[k] = torch.randn((3 + i,) + tuple(v.shape[1:]), generator=g)  # task-specific class count
            elif v.ndim == 2:
                r = 3
                low = torch.randn(v.shape[0], r, generator=g) @ torch.randn(r, v.shape[1], generator=g)
                e[k] = v + 0.1 * low / r + 0.01 * torch.randn(v.shape, generator=g)
            else:
                e[k] = v + 0.05 * torch.randn(v.shape, generator=g)
        experts.append(e)
    cast = lambda sd: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}  # noqa: E731
    return cast(base), [cast(e) for e in experts]


def task_stack(n=4, d_out=24, d_in=16, rank=3, seed=0, dtype=torch.float64):
    """(n, d_out, d_in) low-rank-plus-noise task vectors."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, d_out, rank, generator=g, dtype=dtype) @ torch.randn(n, rank, d_in, generator=g, dtype=dtype)
    return 0.1 * low / rank + 0.01 * torch.randn(n, d_out, d_in, generator=g, dtype=dtype)


def cached_repo(cache, repo: str, src, names) -> None:
    """A snapshot in an HF hub cache, as huggingface_hub lays it out, so that offline reads find it."""
    import shutil
    from pathlib import Path

    folder = Path(cache) / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for n in names:
        shutil.copy(Path(src) / n, snap / n)
