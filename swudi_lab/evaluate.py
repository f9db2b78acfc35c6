"""Evaluation of merged backbones the way the merging literature does it, plus time/memory.

A merged backbone ``theta`` is scored on every task ``i`` with *that task's own head*
(``logits = head_i(backbone(x))``) on that task's fixed test split:

* ``acc_i``                 -- top-1 accuracy in percent,
* ``average``               -- ``mean_i acc_i``,
* ``normalized accuracy``   -- ``mean_i (acc_i(merged) / acc_i(expert_i))`` in percent,
  where ``expert_i`` is the fine-tuned expert evaluated on its own task,
* ``recovered gain``        -- ``mean_i (acc_i(merged) - acc_i(base)) / (acc_i(expert_i) - acc_i(base))``
  in percent: the share of the experts' gain a merge keeps (0 for the base, 100 for the experts;
  normalized accuracy credits the base with ``acc(base) / acc(expert)``).

Two diagnostics look at the experts one at a time, before any merge (weight disentanglement,
Ortiz-Jimenez et al., NeurIPS 2023: merging works when adding ``tau_s`` leaves task t alone):

* ``own_response``  -- ``acc_t(theta0 + alpha tau_t)`` for a few ``alpha``: how much of its gain a
  task keeps from a fraction of its own task vector (averaging keeps ``1/N`` of each);
* ``cross_effect``  -- ``acc_t(theta0 + tau_s) - acc_t(theta0)`` for every pair: the diagonal is each
  expert's gain, the off-diagonal entries what one expert alone does to the other tasks.

A third one separates what a backbone *knows* from what its fixed heads *read*:

* ``probe_accuracy`` -- accuracy of a linear probe fitted on the backbone's own features of each
  task's training split (a ridge, i.e. Tikhonov, least-squares fit to one-hot labels; closed form).
  It uses task data, so it is a diagnostic, never a merge: a merge whose probe accuracy is high
  but whose head accuracy is low kept the features and lost their alignment with the heads.

Images reach a backbone through :func:`to_tensor` (uint8 ``(N, H, W, 3)`` -> normalized float
``(N, 3, H, W)``) and :func:`features` (a backbone's features of a batch of images); the zoo trains
with the same two. This module reads a zoo only through the object passed in (``zoo.heads``,
``zoo.make_backbone()``, ``zoo.test_data()``, ``zoo.manifest``): it imports nothing above it.

Reference rows: the base backbone with the task heads and each expert on its own task
(a zoo's ``manifest["accuracy"]``, ``zoo.expert_accuracy``).

``measure(device)`` is the one timing / peak-memory helper the whole project uses::

    with measure("cpu") as m:
        merged = merge(...)
    print(m.seconds, m.peak_mb)

CPU: peak resident memory above the resident memory at entry (the kernel's high-water mark is
reset by writing ``5`` to ``/proc/self/clear_refs``; ``VmHWM`` is read from ``/proc/self/status``).
Where that is unavailable (not Linux, no permission) the peak falls back to ``ru_maxrss``
(which cannot be reset; ``peak_mb`` is then the growth of the all-time peak, possibly 0) and
``m.exact_peak`` is False. CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the memory allocated at entry (tensor memory only).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from .merge.io import load_state_dict  # safetensors, or torch.load(weights_only=True)

__all__ = [
    "Measurement",
    "measure",
    "to_tensor",
    "features",
    "evaluate_backbone",
    "average_accuracy",
    "normalized_accuracy",
    "recovered_gain",
    "own_response",
    "cross_effect",
    "RidgeProbe",
    "ridge_probe",
    "probe_accuracy",
    "mean_std",
]


# ----------------------------------------------------------------------------- time / memory


@dataclass
class Measurement:
    """Filled by :func:`measure` at exit: wall ``seconds`` and ``peak_mb`` above entry."""

    device: str = "cpu"
    seconds: float = float("nan")
    peak_mb: float = float("nan")
    exact_peak: bool = True
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # compact, for notebooks and logs
        return f"Measurement(device={self.device!r}, seconds={self.seconds:.3f}, peak_mb={self.peak_mb:.1f})"


def _read_status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_kb() -> float | None:
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024.0 if sys.platform == "darwin" else float(r)  # macOS reports bytes
    except Exception:  # pragma: no cover - platform specific
        return None


@contextlib.contextmanager
def measure(device: str | torch.device = "cpu") -> Iterator[Measurement]:
    """Time a block and record its peak memory above the memory in use at entry.

    Parameters
    ----------
    device : "cpu", "cuda", "cuda:k" or a torch.device. For CUDA the device is synchronized
        at entry and exit so that ``seconds`` covers the queued kernels.

    Yields a :class:`Measurement` whose ``seconds`` and ``peak_mb`` (MiB) are set at exit
    (also when the block raises).
    """
    dev = torch.device(device)
    m = Measurement(device=str(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start_alloc = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        try:
            yield m
        finally:
            torch.cuda.synchronize(dev)
            m.seconds = time.perf_counter() - t0
            m.peak_mb = max(0.0, (torch.cuda.max_memory_allocated(dev) - start_alloc) / 2**20)
        return

    exact = _reset_hwm()
    start_rss = _read_status_kb("VmRSS")
    if exact and start_rss is not None:
        start_peak = None
    else:
        exact = False
        start_peak = _ru_maxrss_kb()
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - t0
        hwm = _read_status_kb("VmHWM") if exact else None
        if exact and hwm is not None:
            m.peak_mb = max(0.0, (hwm - start_rss) / 1024.0)
        else:
            now = _ru_maxrss_kb()
            m.peak_mb = max(0.0, (now - start_peak) / 1024.0) if (now is not None and start_peak is not None) else float("nan")
            m.exact_peak = False


# ----------------------------------------------------------------------------- images and features

MEAN, STD = 0.5, 0.25  # the zoo's input normalization: (x / 255 - MEAN) / STD


def to_tensor(x) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` normalized as ``(x/255 - 0.5)/0.25``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, copy=not x.flags.writeable or not x.flags.c_contiguous))
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return ((x - MEAN) / STD).contiguous()


@torch.no_grad()
def features(backbone: torch.nn.Module, x, device="cpu", batch_size: int = 500) -> torch.Tensor:
    """Backbone features ``(N, D)`` of uint8 images ``(N, H, W, 3)`` (eval mode, float32, on CPU)."""
    was = backbone.training
    backbone.eval()
    out = []
    xt = to_tensor(x)
    for i in range(0, len(xt), batch_size):
        out.append(backbone(xt[i : i + batch_size].to(device)).float().cpu())
    backbone.train(was)
    return torch.cat(out)


# ----------------------------------------------------------------------------- accuracy


def _resolve_backbone(backbone_or_state_dict, zoo_or_heads, device):
    if isinstance(backbone_or_state_dict, torch.nn.Module):
        return backbone_or_state_dict.to(device)
    if isinstance(backbone_or_state_dict, (str, os.PathLike)):
        backbone_or_state_dict = load_state_dict(backbone_or_state_dict)
    if not isinstance(backbone_or_state_dict, Mapping):
        raise TypeError(
            "evaluate_backbone expects an nn.Module, a state dict or a safetensors path, "
            f"got {type(backbone_or_state_dict).__name__}"
        )
    make_backbone = getattr(zoo_or_heads, "make_backbone", None)
    if make_backbone is None:
        raise ValueError(
            "a state dict needs a Zoo (its make_backbone() builds the backbone) as `zoo_or_heads`; "
            "with a plain heads dict pass an nn.Module backbone instead"
        )
    model = make_backbone()
    missing, unexpected = model.load_state_dict(dict(backbone_or_state_dict), strict=False)
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the zoo backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device)


def _resolve_heads(zoo_or_heads) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    heads = getattr(zoo_or_heads, "heads", zoo_or_heads)
    if not isinstance(heads, Mapping):
        raise TypeError("zoo_or_heads must be a Zoo or a dict task -> (weight, bias)")
    out = {}
    for task, h in heads.items():
        if isinstance(h, torch.nn.Linear):
            out[task] = (h.weight.detach(), None if h.bias is None else h.bias.detach())
        elif isinstance(h, (tuple, list)):
            w, b = (h[0], h[1] if len(h) > 1 else None)
            out[task] = (torch.as_tensor(w), None if b is None else torch.as_tensor(b))
        else:
            out[task] = (torch.as_tensor(h), None)
    return out


def _input_size(model: torch.nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None:
        return None
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _tasks_split(tasks_data, task):
    """``tasks_data[task]`` as ``(images, labels)``."""
    d = tasks_data[task]
    if isinstance(d, (tuple, list)) and len(d) == 2:
        return d[0], d[1]
    raise TypeError(f"task {task!r}: data must be a pair (images, labels), got {type(d).__name__}")


@torch.no_grad()
def evaluate_backbone(
    backbone_or_state_dict,
    zoo_or_heads,
    tasks_data=None,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
    tasks: Sequence[str] | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (percent) of ``head_t(backbone(x))`` on each task's test split.

    Parameters
    ----------
    backbone_or_state_dict : nn.Module (features ``(B, D)``), a backbone state dict, or a path
        to a safetensors file. State dicts need a Zoo as ``zoo_or_heads`` (its ``make_backbone()``).
    zoo_or_heads : a Zoo (uses ``zoo.heads``) or a dict ``task -> (weight (K, D), bias (K,) | None)``.
    tasks_data : dict ``task -> (x uint8/float (M, H, W, 3) or (M, 3, H, W), y (M,))``; default:
        ``zoo.test_data()``.
    tasks : subset/order of tasks (default: all tasks with data).

    Raises ValueError when a head's class count does not match the task's labels, when the
    head's input width differs from the feature width, or when the images do not have the
    backbone's input size.
    """
    device = torch.device(device)
    if tasks_data is None:
        if not hasattr(zoo_or_heads, "test_data"):
            raise ValueError("tasks_data is required unless zoo_or_heads is a Zoo")
        tasks_data = zoo_or_heads.test_data()
    model = _resolve_backbone(backbone_or_state_dict, zoo_or_heads, device)
    heads = _resolve_heads(zoo_or_heads)
    was_training = model.training
    model.eval()
    order = list(tasks) if tasks is not None else list(tasks_data.keys())
    size = _input_size(model)
    results: dict[str, float] = {}
    try:
        for task in order:
            if task not in heads:
                raise ValueError(f"no head for task {task!r} (heads for: {sorted(heads)})")
            x, y = _tasks_split(tasks_data, task)
            y = torch.as_tensor(np.array(y) if not torch.is_tensor(y) else y).long()
            w, b = _task_head(heads, task, y, device)
            results[task] = _top1(model, _task_images(x, task, size), y, w, b, task, device, batch_size)
    finally:
        model.train(was_training)
    return results


def _task_head(heads, task: str, y: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``heads[task]`` as float32 on ``device``, checked against the labels ``y``."""
    w, b = heads[task]
    w = w.to(device=device, dtype=torch.float32)
    b = None if b is None else b.to(device=device, dtype=torch.float32)
    n_cls = int(y.max()) + 1 if y.numel() else 0
    if w.ndim != 2:
        raise ValueError(f"task {task!r}: head weight must be 2-D (classes, features), got shape {tuple(w.shape)}")
    if n_cls > w.shape[0]:
        raise ValueError(
            f"task {task!r}: head has {w.shape[0]} classes but the labels go up to {n_cls - 1} "
            f"({n_cls} classes) -- wrong head for this task?"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"task {task!r}: head bias shape {tuple(b.shape)} does not match weight {tuple(w.shape)}")
    return w, b


def _task_images(x, task: str, size: tuple[int, int] | None) -> torch.Tensor:
    """A task's images as the backbone's float ``(M, 3, H, W)`` input (converted unless they already are)."""
    xt = to_tensor(x) if not (torch.is_tensor(x) and x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3) else x
    if xt.ndim != 4 or xt.shape[1] != 3:
        raise ValueError(f"task {task!r}: images must be (M, H, W, 3) or (M, 3, H, W), got {tuple(x.shape)}")
    if size is not None and tuple(xt.shape[-2:]) != size:
        raise ValueError(
            f"task {task!r}: images are {tuple(xt.shape[-2:])} but the backbone expects {size}"
        )
    return xt


def _top1(model, xt: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, task: str, device,
          batch_size: int) -> float:
    """Top-1 accuracy (percent) of ``features @ w.T + b`` in batches of ``batch_size``."""
    correct = 0
    for i in range(0, len(y), batch_size):
        feats = model(xt[i : i + batch_size].to(device))
        if feats.ndim != 2 or feats.shape[1] != w.shape[1]:
            raise ValueError(
                f"task {task!r}: backbone features have shape {tuple(feats.shape)} but the head expects "
                f"{w.shape[1]} features"
            )
        logits = feats.float() @ w.T
        if b is not None:
            logits = logits + b
        correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    return 100.0 * correct / max(1, len(y))


def own_response(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]], zoo, tasks_data,
                 alphas: Sequence[float] = (0.125, 0.25, 0.5, 1.0), device: str | torch.device = "cpu"
                 ) -> dict[str, dict[float, float]]:
    """``{t: {alpha: acc_t(theta0 + alpha tau_t)}}`` for every expert ``t``, scored on task t only.

    ``theta0 + alpha tau_t`` is ``torch.lerp(theta0, theta_t, alpha)``: exactly the base at 0 and the
    expert at 1. ``zoo`` supplies the backbone config and the heads (as in :func:`evaluate_backbone`).
    """
    out = {}
    for t, expert in experts.items():
        out[t] = {}
        for a in alphas:
            state = {k: torch.lerp(w0, expert[k].to(w0.dtype), float(a)) for k, w0 in base.items()}
            out[t][a] = evaluate_backbone(state, zoo, {t: tasks_data[t]}, device=device)[t]
    return out


def cross_effect(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]], zoo, tasks_data,
                 device: str | torch.device = "cpu", base_acc: Mapping[str, float] | None = None
                 ) -> dict[str, dict[str, float]]:
    """``{s: {t: acc_t(theta0 + tau_s) - acc_t(theta0)}}`` in points, for every expert s and task t with data.

    The diagonal is each expert's gain on its own task; off the diagonal, what one expert alone does
    to the other tasks (0 for weight-disentangled experts). ``base_acc`` skips re-scoring the base.
    """
    base_acc = base_acc if base_acc is not None else evaluate_backbone(base, zoo, tasks_data, device=device)
    out = {}
    for s, expert in experts.items():
        acc = evaluate_backbone(expert, zoo, tasks_data, device=device)
        out[s] = {t: acc[t] - base_acc[t] for t in acc}
    return out


@dataclass
class RidgeProbe:
    """A linear probe: ``scores = [(f - mean) / std, 1] @ weight`` (``weight``: ``(D+1, K)``, float64)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor

    def design(self, features: torch.Tensor) -> torch.Tensor:
        """``A``: the standardized features with a constant column appended, ``(n, D+1)``."""
        g = (features.double() - self.mean) / self.std
        return torch.cat([g, torch.ones(len(g), 1, dtype=g.dtype)], 1)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (self.design(features) @ self.weight).argmax(1)


def ridge_probe(train_features: torch.Tensor, train_labels, n_classes: int, alpha: float = 1e-2) -> RidgeProbe:
    """A linear probe fitted in closed form.

    Features are standardized with the training mean and standard deviation and a constant column is
    appended (``A``, ``n x (D+1)``); ``weight`` solves the Tikhonov normal equation
    ``(A^T A + alpha n I) W = A^T Y``, ``Y`` the one-hot labels (float64). ``alpha`` is relative to
    the number of images, so it means the same on any training-set size.
    """
    f = train_features.double()
    y = torch.tensor(np.asarray(train_labels)).long()
    if len(y) != len(f):
        raise ValueError(f"{len(f)} feature rows but {len(y)} labels")
    if int(y.max()) >= n_classes:
        raise ValueError(f"labels go up to {int(y.max())} but n_classes is {n_classes}")
    probe = RidgeProbe(f.mean(0), f.std(0).clamp_min(1e-6), torch.empty(0))
    a = probe.design(f)
    rhs = a.T @ torch.nn.functional.one_hot(y, n_classes).double()
    probe.weight = torch.linalg.solve(a.T @ a + alpha * len(a) * torch.eye(a.shape[1], dtype=a.dtype), rhs)
    return probe


def probe_accuracy(backbone_or_state_dict, zoo, train_data: Mapping, test_data: Mapping, alpha: float = 1e-2,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """Top-1 accuracy (percent) of a :func:`ridge_probe` per task, fitted on ``train_data[t]``'s
    features of this backbone and scored on ``test_data[t]``'s (every task of ``test_data``; classes
    ``0..max label``). ``zoo`` supplies the backbone config of a state dict (``None`` with an
    ``nn.Module``); data as in :func:`evaluate_backbone` (``task -> (x uint8 (M, H, W, 3), y)``)."""
    model = _resolve_backbone(backbone_or_state_dict, zoo, torch.device(device))
    out = {}
    for t in test_data:
        (xtr, ytr), (xte, yte) = _tasks_split(train_data, t), _tasks_split(test_data, t)
        n_classes = int(max(np.max(ytr), np.max(yte))) + 1
        probe = ridge_probe(features(model, xtr, device), ytr, n_classes, alpha)
        pred = probe.predict(features(model, xte, device))
        out[t] = 100.0 * float((pred == torch.tensor(np.asarray(yte)).long()).double().mean())
    return out


def average_accuracy(acc: Mapping[str, float]) -> float:
    """``mean_t acc_t`` (percent)."""
    vals = list(acc.values())
    return float(sum(vals) / len(vals)) if vals else float("nan")


def normalized_accuracy(merged: Mapping[str, float], expert: Mapping[str, float], per_task: bool = False):
    """``mean_t merged_t / expert_t`` in percent (per task dict with ``per_task=True``)."""
    missing = set(merged) - set(expert)
    if missing:
        raise ValueError(f"no expert accuracy for tasks {sorted(missing)}")
    ratios = {t: 100.0 * merged[t] / expert[t] if expert[t] > 0 else float("nan") for t in merged}
    return ratios if per_task else average_accuracy(ratios)


def recovered_gain(merged: Mapping[str, float], base: Mapping[str, float], expert: Mapping[str, float]) -> float:
    """``mean_t (merged_t - base_t) / (expert_t - base_t)`` in percent, over tasks whose expert gained."""
    shares = [(merged[t] - base[t]) / (expert[t] - base[t]) for t in merged if expert[t] - base[t] > 0]
    return 100.0 * float(np.mean(shares)) if shares else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    mu = sum(vals) / len(vals)
    if len(vals) < 2:
        return mu, 0.0
    return mu, math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
