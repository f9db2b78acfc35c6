"""Training recipes of the zoo: pretraining, CLIP-like prototype heads, expert fine-tuning.

* :func:`pretrain` -- supervised classification of the 48-class pretraining mixture
  (:func:`swudi_lab.zoo.tasks.make_pretrain_data`, disjoint from the eight tasks) with its own
  linear head, discarded afterwards. Fixed recipe (:class:`PretrainRecipe`: seeds, steps), not
  wall-time based.
* :func:`prototype_heads` -- CLIP's heads are fixed class embeddings (from text). We emulate
  them with a fixed *prototype head* per task: ``p_k = normalize(mean_{x in class k}
  normalize(f_base(x)))`` and ``logits = s * cos(f(x), p_k)``. Stored as a plain linear head
  ``W = s * P`` (K x D), ``b = 0``: ``argmax_k W f`` equals ``argmax_k cos(f, p_k)`` because
  ``||f||`` is a positive per-sample constant, so evaluation uses an ordinary linear head.
* :func:`finetune` -- fine-tunes the *whole backbone* from the base with the head frozen
  (AdamW, small learning rate, a few hundred steps, warm-up + cosine), so each task lives in the
  backbone's task vector ``tau = W_expert - W_base``. A variant moves the attention projections
  only (``FinetuneRecipe(trainable="attention")``).

Functions take any backbone module and any ``(x uint8 (N,H,W,3), y)`` arrays, so the online
recipe (hub ViT, torchvision datasets) goes through the same code.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate import features, to_tensor

__all__ = [
    "PretrainRecipe",
    "FinetuneRecipe",
    "pretrain",
    "prototype_heads",
    "finetune",
    "task_vector_ratio",
]


@dataclass(frozen=True)
class PretrainRecipe:
    n_per_class: int = 5000  # training images per class (48 classes)
    n_val_per_class: int = 100
    steps: int = 14000  # 7.6 min on one H200 (about 8 h on 2 CPU threads); fewer steps give less mergeable experts (README)
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 1000
    label_smoothing: float = 0.1
    shift: int = 2  # random translation (pixels) as augmentation
    seed: int = 0
    data_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneRecipe:
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 40
    head_scale: float = 30.0  # s in logits = s * cos(f, p_k)
    shift: int = 1
    prototype_images: int = 500  # training images per task used to fit the prototypes
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, nesterov)
    head: str = "prototype"  # "prototype": s*cos(f, p_k); "centered": s*p_k.(f - mu)/rho (linear, see prototype_heads)
    trainable: str = "all"  # "all" or "attention" (only attn.qkv / attn.proj move; see trainable_parameters)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["trainable"] == "all":  # the default is left out, so zoos built before the option keep their keys
            del d["trainable"]
        return d


def _lr_at(step, steps, warmup, lr):
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


def _batch_indices(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Indices of ``steps`` mini-batches: a fresh permutation of ``range(n)`` whenever one runs out."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def _batches(x, y, batch_size: int, steps: int, shift: int, gen: torch.Generator, device):
    """``steps`` augmented mini-batches ``(xb, yb)`` on ``device``.

    The images move to ``device`` once (a GPU is not fed batch by batch from the CPU); the batch
    indices and the shifts are drawn on the CPU from ``gen``, so every device sees the same stream.
    """
    xt = to_tensor(x).to(device)
    yt = torch.as_tensor(np.array(y)).long().to(device)
    for idx in _batch_indices(len(yt), batch_size, steps, gen):
        idx = idx.to(device)
        yield _random_shift(xt[idx], shift, gen), yt[idx]


def _random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``shift`` pixels (reflect padding), per-sample offsets."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    off = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen).to(x.device)  # drawn on the CPU (see _batches)
    rows = (torch.arange(h, device=x.device)[None, :] + off[:, :1]).long()  # (b, h)
    cols = (torch.arange(w, device=x.device)[None, :] + off[:, 1:]).long()  # (b, w)
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def prototype_heads(backbone, x, y, n_classes: int, scale: float = 30.0, device="cpu", center: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed CLIP-like head from base features.

    ``center=False``: ``P[k] = normalize(mean_{i: y_i = k} normalize(f(x_i)))``, ``W = scale * P``, ``b = 0``
    (logits ``s cos(f, p_k)`` up to a positive per-sample factor).
    ``center=True``: ``mu = mean_i f(x_i)``, ``P[k] = normalize(mean_{y_i = k} (f(x_i) - mu))``,
    ``rho = mean_i ||f(x_i) - mu||``, ``W = (scale / rho) P``, ``b = -W mu`` (a nearest-centred-mean
    classifier whose logits are about ``s cos(f - mu, p_k)``). Raises if a class has no image.
    """
    f = features(backbone, x, device)
    y = torch.as_tensor(np.array(y)).long()
    counts = torch.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"prototype head: classes {torch.nonzero(counts == 0).flatten().tolist()} have no image")
    if center:
        mu = f.mean(0)
        g = f - mu
        rho = g.norm(dim=1).mean().clamp_min(1e-8)
        P = F.normalize(torch.zeros(n_classes, f.shape[1]).index_add_(0, y, g) / counts[:, None], dim=1)
        W = (scale / rho) * P
        return W.contiguous(), (-(W @ mu)).contiguous()
    f = F.normalize(f, dim=1)
    sums = torch.zeros(n_classes, f.shape[1]).index_add_(0, y, f)
    P = F.normalize(sums / counts[:, None], dim=1)
    return (scale * P).contiguous(), torch.zeros(n_classes)


TRAINABLE = ("all", "attention")


def trainable_parameters(model: torch.nn.Module, which: str = "all") -> list[torch.nn.Parameter]:
    """The parameters fine-tuning moves; the others get ``requires_grad=False``.

    ``"all"``: every parameter (the CLIP task-vector recipe). ``"attention"``: only the attention
    projections (``attn.qkv``, ``attn.proj``, weights and biases) -- fine-tuning the attention
    modules alone is reported to give more weight-disentangled task vectors (Jin et al., ICLR 2025).
    """
    if which not in TRAINABLE:
        raise ValueError(f"unknown trainable set {which!r}; choose from {', '.join(TRAINABLE)}")
    keep = []
    for name, p in model.named_parameters():
        p.requires_grad_(which == "all" or ".attn." in f".{name}")
        if p.requires_grad:
            keep.append(p)
    if not keep:
        raise ValueError(f"trainable={which!r} selects no parameter of {type(model).__name__}")
    return keep


def finetune(
    base_state: dict,
    make_module: Callable[[], torch.nn.Module],
    head: tuple[torch.Tensor, torch.Tensor],
    x,
    y,
    recipe: FinetuneRecipe = FinetuneRecipe(),
    seed: int = 0,
    device="cpu",
    progress=None,
) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of the backbone (``recipe.trainable``) with a frozen head; return its state dict.

    Loss: ``CE(s * normalize(f(x)) @ P^T + b, y)`` with ``(s P, b) = head`` fixed. ``seed``
    controls data order and augmentation. The returned tensors are float32 on CPU.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_module()
    model.load_state_dict(base_state)
    model.to(device).train()
    W, b = head
    scale = W.norm(dim=1).mean().clamp_min(1e-8)
    P = (W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(device)
    W_lin = W.to(device)
    b = b.to(device)
    params = trainable_parameters(model, recipe.trainable)
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r} (adamw or sgd)")
    for step, (xb, yb) in enumerate(_batches(x, y, recipe.batch_size, recipe.steps, recipe.shift, gen, device)):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe.steps, recipe.warmup, recipe.lr)
        if recipe.head == "centered":
            logits = model(xb) @ W_lin.T + b
        else:
            logits = scale * F.normalize(model(xb), dim=1) @ P.T + b
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, float(loss.detach()))
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def task_vector_ratio(base: dict, expert: dict, matrices_only: bool = True) -> float:
    """``||tau||_F / ||W0||_F`` over all (2-D, when ``matrices_only``) tensors: the RMS ratio."""
    num = den = 0.0
    for k, w0 in base.items():
        if matrices_only and w0.ndim != 2:
            continue
        num += float((expert[k].float() - w0.float()).pow(2).sum())
        den += float(w0.float().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else float("nan")


def pretrain(
    recipe: PretrainRecipe = PretrainRecipe(),
    config=None,
    device="cpu",
    log_file: str | None = None,
    progress: bool = True,
    eval_every: int = 1000,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Pretrain the backbone on the 48-class mixture; return ``(backbone_state, info)``.

    ``info`` holds the recipe, validation accuracy (percent, 48-way), seconds, and the loss log.
    The classification head used during pretraining is discarded.
    """
    from .model import BackboneConfig, make_backbone
    from .tasks import PRETRAIN_CLASSES, make_pretrain_data

    config = config or BackboneConfig()
    t0 = time.time()
    log = open(log_file, "a") if log_file else None

    def say(msg):
        line = f"[{time.time() - t0:8.1f}s] {msg}"
        if log:
            log.write(line + "\n")
            log.flush()
        if progress:
            print(line, flush=True)

    say(f"generating data: {recipe.n_per_class} x {PRETRAIN_CLASSES} train, {recipe.n_val_per_class} x {PRETRAIN_CLASSES} val")
    xtr, ytr = make_pretrain_data(recipe.n_per_class, "train", recipe.data_seed)
    xva, yva = make_pretrain_data(recipe.n_val_per_class, "val", recipe.data_seed)
    gen_seconds = time.time() - t0
    say(f"data ready ({gen_seconds:.1f}s)")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    backbone = make_backbone(config)
    head = torch.nn.Linear(backbone.embed_dim, PRETRAIN_CLASSES)
    model = torch.nn.Sequential(backbone, head).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr
    )
    history = []
    xv, yv = to_tensor(xva).to(device), torch.as_tensor(yva).long().to(device)  # converted once, scored at every eval

    @torch.no_grad()
    def val_acc():
        model.eval()
        correct = sum(int((model(xv[i : i + 1000]).argmax(1) == yv[i : i + 1000]).sum()) for i in range(0, len(yv), 1000))
        model.train()
        return 100.0 * correct / len(yv)

    run_loss = 0.0
    for step, (xb, yb) in enumerate(_batches(xtr, ytr, recipe.batch_size, recipe.steps, recipe.shift, gen, device)):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe.steps, recipe.warmup, recipe.lr)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss += loss.item()
        if (step + 1) % 100 == 0:
            say(f"step {step + 1}/{recipe.steps} loss {run_loss / 100:.4f}")
            history.append((step + 1, run_loss / 100))
            run_loss = 0.0
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < recipe.steps:
            say(f"step {step + 1} val acc {val_acc():.2f}")
    acc = val_acc()
    seconds = time.time() - t0
    say(f"done: val acc {acc:.2f} in {seconds:.1f}s")
    if log:
        log.close()
    state = {k: v.detach().float().cpu().contiguous() for k, v in backbone.state_dict().items()}
    info = {
        "recipe": recipe.to_dict(),
        "backbone": config.to_dict(),
        "val_accuracy": acc,
        "val_images": int(len(yva)),
        "classes": PRETRAIN_CLASSES,
        "seconds": seconds,
        "data_seconds": gen_seconds,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loss_history": history,
    }
    return state, info
