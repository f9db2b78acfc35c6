"""Offline expert zoo: eight procedural 32x32 tasks, a small timm ViT base and its experts.

    from swudi_lab.zoo import build_zoo, load_zoo
    zoo = load_zoo(seed=0)          # shipped seed 0 (materialized into data/zoo on first use)
    zoo = build_zoo(seed=1)         # other expert seeds, built on demand (cached)

See :mod:`.tasks` (data), :mod:`.model` (backbone), :mod:`.train` (pretraining, prototype heads,
fine-tuning), :mod:`.build` (cache, manifest, release pack) and :mod:`.online` (hub models and
torchvision datasets for Colab).
"""

from .build import (
    DEFAULT_PRETRAINED,
    Zoo,
    ZooCacheError,
    ZooConfig,
    build_pretrained,
    build_zoo,
    load_pretrained,
    load_zoo,
    materialize_release,
    write_release,
)
from .model import BackboneConfig, make_backbone
from .tasks import TASK_CLASSES, TASKS, make_split
from .train import FinetuneRecipe, PretrainRecipe, finetune, pretrain, prototype_heads, task_vector_ratio

__all__ = [
    "DEFAULT_PRETRAINED", "Zoo", "ZooCacheError", "ZooConfig", "build_pretrained", "build_zoo",
    "load_pretrained", "load_zoo", "materialize_release", "write_release", "BackboneConfig", "make_backbone",
    "TASK_CLASSES", "TASKS", "make_split", "FinetuneRecipe", "PretrainRecipe",
    "finetune", "pretrain", "prototype_heads", "task_vector_ratio",
]
