"""The eight TA8 tasks of the CLIP model-merging benchmark, in one registry.

Each :class:`TaskSpec` carries what every other part of :mod:`swudi_lab.hub` needs about a task:
the fine-tuned expert's hub id (per model family), the test set's hub id, config and split with
the parquet path patterns of that split, the class names in label order and the CLIP prompt
templates (data in :mod:`swudi_lab.hub.task_data`).

Model families name the published CLIP ViTs: ``clip-vit-base-patch32`` (aliases ``clip-vit-b32``,
``b32``), ``clip-vit-base-patch16`` (``clip-vit-b16``, ``b16``), ``clip-vit-large-patch14``
(``clip-vit-l14``, ``l14``). The experts follow FusionBench's naming,
``tanganke/<family>_<task>``; the base model is ``openai/<family>``.

Pure data and string work: no optional package is imported here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..registry import Registry
from .task_data import CLASSNAMES, TEMPLATES

__all__ = ["TaskSpec", "ModelFamily", "TASKS", "FAMILIES", "TA8", "get_task", "get_family",
           "base_model_id", "expert_id", "expert_ids", "prompts_hash", "render_prompts"]

EXPERT_OWNER = "tanganke"


@dataclass(frozen=True)
class ModelFamily:
    """A published CLIP ViT: ``name`` as in the hub ids, its base model and its image size."""

    name: str
    base_id: str
    image_size: int = 224

    def expert_id(self, task: "TaskSpec | str") -> str:
        return f"{EXPERT_OWNER}/{self.name}_{get_task(task).id}"


FAMILIES = Registry("model family")
_ALIASES: dict[str, str] = {}
for _name, _aliases in (("clip-vit-base-patch32", ("clip-vit-b32", "b32", "ViT-B-32")),
                        ("clip-vit-base-patch16", ("clip-vit-b16", "b16", "ViT-B-16")),
                        ("clip-vit-large-patch14", ("clip-vit-l14", "l14", "ViT-L-14"))):
    FAMILIES.add(_name, ModelFamily(_name, f"openai/{_name}"))
    _ALIASES.update(dict.fromkeys(_aliases, _name))


def get_family(family: "ModelFamily | str" = "clip-vit-base-patch32") -> ModelFamily:
    """The :class:`ModelFamily` named ``family`` (full name or alias); a ``ValueError`` lists the known ones."""
    if isinstance(family, ModelFamily):
        return family
    name = _ALIASES.get(family, family)
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {FAMILIES.names()} "
                         f"(aliases: {', '.join(_ALIASES)})")
    return FAMILIES[name]


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    ``test_patterns`` are the repository paths (``fnmatch`` patterns, relative to the dataset root)
    of the test split's parquet files; a local folder in the same layout is read with the same
    patterns. ``templates`` are ``str.format`` strings with one ``{}``.
    """

    id: str
    title: str
    dataset_id: str
    config: str
    split: str
    data_dir: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def test_patterns(self) -> tuple[str, ...]:
        # the hub's two layouts: "<dir>/test-00000-of-00001.parquet" (push_to_hub) and
        # "<dir>/test/0000.parquet" (the parquet converter)
        return (f"{self.data_dir}/{self.split}-*.parquet", f"{self.data_dir}/{self.split}/*.parquet")

    def prompts(self) -> list[list[str]]:
        """``prompts()[k][t]``: template ``t`` filled with class ``k``."""
        return render_prompts(self.classnames, self.templates)

    def expert_id(self, family: "ModelFamily | str" = "clip-vit-base-patch32") -> str:
        return get_family(family).expert_id(self)

    def prompts_hash(self) -> str:
        return prompts_hash(self.classnames, self.templates)


def render_prompts(classnames, templates) -> list[list[str]]:
    """``[k][t]``: template ``t`` (a ``str.format`` string or a callable) filled with class ``k``."""
    return [[t.format(c) if isinstance(t, str) else t(c) for t in templates] for c in classnames]


def prompts_hash(classnames, templates) -> str:
    """SHA-256 (hex) of the class names and the prompts they make; templates are strings or callables.

    Hashing the rendered prompts covers both kinds of template and is exactly what the head depends on.
    """
    rendered = render_prompts(classnames, templates)
    blob = json.dumps({"classnames": list(classnames), "prompts": rendered}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


TASKS = Registry("task")


def _task(id, title, dataset_id, config="default", data_dir="data"):
    TASKS.add(id, TaskSpec(id, title, dataset_id, config, "test", data_dir, CLASSNAMES[id], TEMPLATES[id]))


_task("sun397", "SUN397", "tanganke/sun397")
_task("stanford-cars", "Stanford Cars", "tanganke/stanford_cars")
_task("resisc45", "RESISC45", "tanganke/resisc45")
_task("eurosat", "EuroSAT", "tanganke/eurosat")
_task("svhn", "SVHN", "ufldl-stanford/svhn", config="cropped_digits", data_dir="cropped_digits")
_task("gtsrb", "GTSRB", "tanganke/gtsrb")
_task("mnist", "MNIST", "ylecun/mnist", config="mnist", data_dir="mnist")
_task("dtd", "DTD", "tanganke/dtd")

TA8: tuple[str, ...] = tuple(TASKS)
"""The eight task ids in the benchmark's order."""

_TASK_ALIASES = {"cars": "stanford-cars", "stanford_cars": "stanford-cars"}


def get_task(task: "TaskSpec | str") -> TaskSpec:
    """The :class:`TaskSpec` of ``task`` (an id, ``cars``/``stanford_cars`` for Stanford Cars)."""
    if isinstance(task, TaskSpec):
        return task
    return TASKS.lookup(_TASK_ALIASES.get(task, task))


def base_model_id(family: "ModelFamily | str" = "clip-vit-base-patch32") -> str:
    """``openai/<family>``: the pre-trained CLIP the experts were fine-tuned from."""
    return get_family(family).base_id


def expert_id(task: "TaskSpec | str", family: "ModelFamily | str" = "clip-vit-base-patch32") -> str:
    """``tanganke/<family>_<task>``: the published fine-tuned vision tower for ``task``."""
    return get_family(family).expert_id(task)


def expert_ids(family: "ModelFamily | str" = "clip-vit-base-patch32", tasks=TA8) -> dict[str, str]:
    """``{task id: expert hub id}`` for ``tasks`` (default: all eight), in order."""
    return {get_task(t).id: expert_id(t, family) for t in tasks}
