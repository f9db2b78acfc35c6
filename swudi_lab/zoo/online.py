"""The Colab / online recipe: a hub-pretrained timm ViT and torchvision datasets.

Same pipeline as the offline zoo -- :func:`~swudi_lab.zoo.build.build_zoo` with the same
prototype heads, fine-tuning, manifest, cache and evaluation -- only the two sources differ:

* backbone: ``timm.create_model(name, pretrained=True, num_classes=0)`` (e.g.
  ``vit_small_patch16_224``, ``vit_base_patch32_clip_224.openai``) -- :class:`HubBackboneConfig`;
* tasks: torchvision datasets (``tv:mnist``, ``tv:svhn``, ``tv:eurosat``, ``tv:gtsrb``,
  ``tv:dtd``, ``tv:cifar10``), subsampled with a fixed seed (balanced where possible) and
  resized to the model's input size, as uint8 ``(N, S, S, 3)`` arrays.

Usage (Colab, GPU)::

    from swudi_lab.zoo import online, build_zoo
    cfg = online.online_config("vit_small_patch16_224", n_train=2000, n_test=1000, steps=300)
    zoo = build_zoo("data/zoo_online", seed=0, config=cfg, device="cuda")

Offline tests inject stand-ins through
:data:`MODEL_FACTORY` and :data:`DATASET_FACTORY` (a tiny ViT and a fake dataset), so the same code
path runs without any download.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..config import paths
from .tasks import balanced_labels, task_seed

__all__ = [
    "HubBackboneConfig",
    "TORCHVISION_TASKS",
    "MODEL_FACTORY",
    "DATASET_FACTORY",
    "online_config",
    "create_hub_backbone",
    "dataset_split",
    "is_online_task",
]

# task name -> (torchvision class name, kwargs for the train split, kwargs for the test split)
TORCHVISION_TASKS = {
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "eurosat": ("EuroSAT", {}, {}),  # single split: disjoint seeded halves
    "gtsrb": ("GTSRB", {"split": "train"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
}


@dataclass(frozen=True)
class HubBackboneConfig:
    """A timm hub model used as backbone (features = ``num_classes=0`` output)."""

    name: str = "vit_small_patch16_224"
    pretrained: bool = True
    img_size: int = 224


def _timm_create(name: str, pretrained: bool, **kw):
    import swudi_lab.torchvision_compat  # noqa: F401
    import timm

    return timm.create_model(name, pretrained=pretrained, **kw)


def _torchvision_dataset(task: str, split: str, root: str, download: bool = True):
    import swudi_lab.torchvision_compat  # noqa: F401
    import torchvision

    cls_name, train_kw, test_kw = TORCHVISION_TASKS[task]
    cls = getattr(torchvision.datasets, cls_name)
    kw = train_kw if split == "train" else test_kw
    return cls(root=root, download=download, **kw)


# Injectable factories (tests replace them with offline stand-ins):
#   MODEL_FACTORY(name, pretrained, num_classes=0) -> nn.Module returning (B, D) features
#   DATASET_FACTORY(task, split, root) -> a map-style dataset of (PIL image or array, int label)
MODEL_FACTORY = _timm_create
DATASET_FACTORY = _torchvision_dataset


def is_online_task(name: str) -> bool:
    return isinstance(name, str) and name.startswith("tv:")


def create_hub_backbone(config: HubBackboneConfig):
    model = MODEL_FACTORY(config.name, config.pretrained, num_classes=0)
    return model


def _to_uint8(img, size: int) -> np.ndarray:
    from PIL import Image

    if not isinstance(img, Image.Image):
        a = np.asarray(img)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = np.moveaxis(a, 0, -1)
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.uint8)


def _labels_of(ds) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "_samples"):
        v = getattr(ds, attr, None)
        if v is not None:
            if attr == "_samples":
                return np.asarray([s[1] for s in v])
            return np.asarray(v)
    return np.asarray([ds[i][1] for i in range(len(ds))])


@functools.lru_cache(maxsize=32)
def dataset_split(task: str, split: str, n: int, data_seed: int = 0, img_size: int = 224, root: str | None = None):
    """``n`` images of torchvision task ``tv:<name>``'s split as uint8 ``(n, S, S, 3)`` plus labels.

    A fixed seeded, class-balanced subsample (as balanced as the split allows). Datasets with a
    single split (EuroSAT) are cut into disjoint seeded train/test halves.
    """
    name = task[3:] if is_online_task(task) else task
    if name not in TORCHVISION_TASKS and DATASET_FACTORY is _torchvision_dataset:
        raise ValueError(f"unknown torchvision task {task!r}; known: {', '.join('tv:' + k for k in TORCHVISION_TASKS)}")
    root = root or str(paths.downloads_dir())
    single = name in TORCHVISION_TASKS and not TORCHVISION_TASKS[name][1]
    ds = DATASET_FACTORY(name, "train" if single else split, root)
    labels = _labels_of(ds).astype(np.int64)
    rng = np.random.default_rng(task_seed("tv:" + name, split, data_seed))
    pool = np.arange(len(labels))
    if single:
        halves = np.random.default_rng(task_seed("tv:" + name, "halves", data_seed)).permutation(len(labels))
        cut = len(labels) // 2
        pool = np.sort(halves[:cut] if split == "train" else halves[cut:])
    k = int(labels.max()) + 1
    by_class = [rng.permutation(pool[labels[pool] == c]) for c in range(k)]
    want = balanced_labels(n, k, rng)
    idx, used = [], [0] * k
    for c in want:  # take the next unused image of class c; fall back to any class with images left
        order = [c] + [j for j in range(k) if j != c]
        for j in order:
            if used[j] < len(by_class[j]):
                idx.append(by_class[j][used[j]])
                used[j] += 1
                break
    idx = np.asarray(idx[:n])
    x = np.stack([_to_uint8(ds[int(i)][0], img_size) for i in idx])
    y = labels[idx]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def online_config(model: str = "vit_small_patch16_224", tasks=("mnist", "svhn", "eurosat", "gtsrb", "dtd", "cifar10"),
                  img_size: int = 224, n_train: int = 2000, n_test: int = 1000, steps: int = 300, lr: float = 1e-5,
                  batch_size: int = 32, head_scale: float = 30.0, **kw):
    """A :class:`~swudi_lab.zoo.build.ZooConfig` for the hub model and torchvision tasks (GPU)."""
    from .build import ZooConfig
    from .train import FinetuneRecipe

    names = tuple(t if is_online_task(t) else "tv:" + t for t in tasks)
    return ZooConfig(
        backbone=HubBackboneConfig(model, True, img_size),
        tasks=names,
        n_train=n_train,
        n_test=n_test,
        finetune=FinetuneRecipe(steps=steps, batch_size=batch_size, lr=lr, warmup=max(1, steps // 10),
                                head_scale=head_scale, shift=0, prototype_images=min(n_train, 1000)),
        pretrained=None,
        check_targets=False,
        **kw,
    )
