"""Build, cache, verify and ship the expert zoo.

Layout written by :func:`build_zoo` (``root`` defaults to :func:`swudi_lab.config.paths.zoo_dir`:
``$SWUDI_LAB_CACHE``, else the checkout's ``data/zoo``, git-ignored)::

    <root>/seed<k>/base.safetensors            backbone state dict of the pretrained base (float32)
    <root>/seed<k>/experts/<task>.safetensors  fine-tuned backbones, W_i = W_0 + tau_i (float32)
    <root>/seed<k>/heads.safetensors           fixed prototype heads: <task>.weight (K, D), <task>.bias (K,)
    <root>/seed<k>/manifest.json               config, seeds, accuracies, task-vector ratios, the spectral merges
                                               of all experts, the targets, sha256 of every file

Experts are defined through their task vectors stored in float16:
``W_i = W_0 + float32(float16(W_i^ft - W_0))``; the rounding (relative 5e-4 of ``tau``) is applied
to every seed, so a release pack (base + float16 task vectors, :func:`write_release`) rebuilds
the *identical* float32 files, verified by hash.

Every load verifies the sha256 of each file against the manifest. A corrupted, partial or
stale cache raises :class:`ZooCacheError` from :func:`load_zoo`; :func:`build_zoo` rebuilds it
instead (it never silently uses it). A shipped pretrained base whose hash does not match its
recipe file is refused (:class:`ZooCacheError`), since the experts would not be the documented ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import paths
from ..config.presets import ZOO_MATCHED
from ..evaluate import average_accuracy, evaluate_backbone, normalized_accuracy, recovered_gain
from ..files import atomic_dir, atomic_path, atomic_write_text, sha256_file
from ..merge import merge
from ..progress import Progress, progress_mode
from .model import BackboneConfig, make_backbone
from .tasks import TASK_CLASSES, TASKS
from .tasks import make_split as _offline_split
from .train import FinetuneRecipe, PretrainRecipe, finetune, pretrain, prototype_heads, task_vector_ratio

__all__ = [
    "DEFAULT_PRETRAINED",
    "ZooConfig",
    "Zoo",
    "ZooCacheError",
    "build_zoo",
    "load_zoo",
    "write_release",
    "build_pretrained",
    "task_split",
    "TARGET_MIN_GAIN",
    "TARGET_RATIO",
    "TARGET_MIN_RECOVERED",
]

DEFAULT_PRETRAINED = "vit_p4_w128_d4_mix48_gpu"
FORMAT = "swudi_lab.zoo/1"
TARGET_MIN_GAIN = 30.0  # points, experts over base-with-heads, averaged over tasks
TARGET_RATIO = (0.01, 0.10)  # ||tau||_F / ||W0||_F over the 2-D weights: "a few percent"
TARGET_MIN_RECOVERED = 50.0  # percent of the experts' gain the best spectral merge keeps: "most of the gain"


class ZooCacheError(RuntimeError):
    """A zoo directory, release pack or shipped base is missing, partial, stale or corrupted."""


def _write_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=float) + "\n")


def _save_tensors(tensors: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- task sources


def task_split(config, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A task's fixed split for ``config``: offline generators, or torchvision for ``tv:<name>``."""
    n = config.n_train if split == "train" else config.n_test
    from .online import dataset_split, is_online_task

    if is_online_task(task):
        return dataset_split(task, split, n, config.data_seed, getattr(config.backbone, "img_size", 224))
    return _offline_split(task, split, n, config.data_seed)


def n_classes(config, task: str) -> int:
    if task in TASK_CLASSES:
        return TASK_CLASSES[task]
    x, y = task_split(config, task, "train")
    return int(y.max()) + 1


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines a zoo (with the seed). ``pretrained``: name in ``<data>/pretrained/``
    (:func:`~swudi_lab.config.paths.pretrained_dir`), a path to a ``.safetensors`` file (its recipe
    ``.json`` beside it), or ``None`` for a randomly initialized base (micro zoos in tests)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tasks: tuple = TASKS
    n_train: int = 4000
    n_test: int = 1000
    data_seed: int = 0
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    pretrained: str | None = DEFAULT_PRETRAINED
    tau_dtype: str = "float16"
    threads: int | None = None
    check_targets: bool = True

    @classmethod
    def micro(cls, **kw) -> "ZooConfig":
        """A zoo that builds in seconds: tiny ViT, three tasks, few images, few steps."""
        base = dict(
            backbone=BackboneConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
            tasks=("flags", "orientation", "position"),
            n_train=60,
            n_test=30,
            finetune=FinetuneRecipe(steps=4, batch_size=16, lr=1e-3, warmup=1, prototype_images=60),
            pretrained=None,
            threads=1,
            check_targets=False,
        )
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["finetune"] = self.finetune.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ZooConfig":
        d = dict(d)
        if "name" in d["backbone"]:
            from .online import HubBackboneConfig

            d["backbone"] = HubBackboneConfig(**d["backbone"])
        else:
            d["backbone"] = BackboneConfig(**d["backbone"])
        d["finetune"] = FinetuneRecipe(**d["finetune"])
        d["tasks"] = tuple(d["tasks"])
        return cls(**d)

    def key(self) -> str:
        """Hash of what determines the weights (``threads``/``check_targets`` excluded)."""
        d = self.to_dict()
        d.pop("threads", None)
        d.pop("check_targets", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the Zoo object


class Zoo:
    """A verified zoo on disk: base, experts, heads and manifest of one seed."""

    def __init__(self, directory, manifest: dict):
        self.dir = Path(directory)
        self.manifest = manifest
        self.config = ZooConfig.from_dict(manifest["config"])
        self.seed = int(manifest["seed"])
        self.tasks: list[str] = list(manifest["tasks"])
        self.base_path = self.dir / "base.safetensors"
        self.expert_paths = {t: self.dir / "experts" / f"{t}.safetensors" for t in self.tasks}
        self.heads_path = self.dir / "heads.safetensors"
        raw = load_file(str(self.heads_path))
        self.heads = {t: (raw[f"{t}.weight"], raw[f"{t}.bias"]) for t in self.tasks}
        self.n_classes = {t: int(self.heads[t][0].shape[0]) for t in self.tasks}

    def __repr__(self) -> str:
        acc = self.manifest.get("accuracy", {})
        return (
            f"Zoo(dir={str(self.dir)!r}, seed={self.seed}, tasks={self.tasks}, "
            f"base={acc.get('avg_base', float('nan')):.1f}%, experts={acc.get('avg_expert', float('nan')):.1f}%)"
        )

    # weights
    def make_backbone(self) -> torch.nn.Module:
        return make_backbone(self.config.backbone)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.base_path))

    def expert_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.expert_paths[task]))

    def task_vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        base = self.base_state_dict()
        return {t: {k: v - base[k] for k, v in self.expert_state_dict(t).items()} for t in self.tasks}

    def load_backbone(self, state: dict | str | os.PathLike | None = None) -> torch.nn.Module:
        """A backbone module holding ``state`` (a state dict or safetensors path; default: the base)."""
        if state is None:
            state = self.base_state_dict()
        elif isinstance(state, (str, os.PathLike)):
            state = load_file(str(state))
        m = self.make_backbone()
        m.load_state_dict(state)
        return m.eval()

    # data
    def test_data(self, max_per_task: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Fixed test split of every task: ``task -> (uint8 (M, 32, 32, 3), int64 (M,))``."""
        out = {}
        for t in self.tasks:
            x, y = task_split(self.config, t, "test")
            out[t] = (x[:max_per_task], y[:max_per_task]) if max_per_task else (x, y)
        return out

    def train_data(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        return task_split(self.config, task, "train")

    @property
    def expert_accuracy(self) -> dict[str, float]:
        return dict(self.manifest["accuracy"]["expert"])


# ----------------------------------------------------------------------------- verification


def _verify_dir(directory: Path, config: ZooConfig | None = None) -> dict:
    mpath = directory / "manifest.json"
    if not mpath.is_file():
        raise ZooCacheError(f"zoo cache {directory}: manifest.json is missing (partial or no build)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooCacheError(f"zoo cache {directory}: manifest.json is corrupted ({e})") from e
    if manifest.get("format") != FORMAT or "files" not in manifest:
        raise ZooCacheError(f"zoo cache {directory}: manifest has an unknown format {manifest.get('format')!r}")
    expected = {"base.safetensors", "heads.safetensors"} | {f"experts/{t}.safetensors" for t in manifest.get("tasks", [])}
    missing_entries = expected - set(manifest["files"])
    if missing_entries:
        raise ZooCacheError(f"zoo cache {directory}: manifest lacks hashes for {sorted(missing_entries)}")
    for rel, digest in manifest["files"].items():
        p = directory / rel
        if not p.is_file():
            raise ZooCacheError(f"zoo cache {directory}: file {rel} is missing (partial build?)")
        got = sha256_file(p)
        if got != digest:
            raise ZooCacheError(f"zoo cache {directory}: file {rel} is corrupted (sha256 {got[:12]}... != manifest {digest[:12]}...)")
    if config is not None and manifest.get("config_key") != config.key():
        raise ZooCacheError(
            f"zoo cache {directory} was built with another config (key {manifest.get('config_key')} != {config.key()})"
        )
    if config is not None and config.pretrained is not None:  # same name, other weights: the base was rebuilt
        recipe = _pretrained_paths(config.pretrained)[1]
        want = json.loads(recipe.read_text()).get("sha256") if recipe.is_file() else None
        got = (manifest.get("pretrained") or {}).get("sha256")
        if want is not None and got != want:
            raise ZooCacheError(f"zoo cache {directory} was built on another pretrained base "
                                f"(sha256 {str(got)[:12]}... != {recipe.name} {want[:12]}...)")
    return manifest


def _seed_dir(root, seed: int) -> Path:
    return Path(root) / f"seed{int(seed)}"


def load_zoo(root=None, seed: int = 0, config: ZooConfig | None = None, release_root=None) -> Zoo:
    """Open the zoo of ``seed`` under ``root`` (default: :func:`~swudi_lab.config.paths.zoo_dir`),
    verifying every file's sha256.

    If the cache is absent and a release pack exists (``<data>/zoo_release/seed<k>``, default
    ``release_root``: :func:`~swudi_lab.config.paths.release_dir`), the float32 experts are materialized from it first (and verified).
    Raises :class:`ZooCacheError` on a missing, partial, corrupted or (with ``config``) stale cache.
    The release pack is used only for a directory that does not exist yet (or is empty) and, when
    ``config`` is given, only if it was built with that config.
    """
    d = _seed_dir(root if root is not None else paths.zoo_dir(), seed)
    fresh = not d.exists() or not any(d.iterdir())  # a partial directory is reported, never overwritten here
    if fresh:
        rel = _seed_dir(release_root if release_root is not None else paths.release_dir(), seed)
        if (rel / "manifest.json").exists():
            try:
                rel_key = json.loads((rel / "manifest.json").read_text()).get("config_key")
            except (OSError, json.JSONDecodeError) as e:
                raise ZooCacheError(f"release pack {rel}: unreadable manifest ({e})") from e
            if config is None or config.key() == rel_key:
                materialize_release(rel, d)
    return Zoo(d, _verify_dir(d, config))


# ----------------------------------------------------------------------------- pretrained base


def _pretrained_paths(pretrained: str) -> tuple[Path, Path]:
    p = Path(pretrained)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    d = paths.pretrained_dir()
    return d / f"{pretrained}.safetensors", d / f"{pretrained}.json"


def load_pretrained(pretrained: str) -> tuple[dict, dict]:
    """Load a shipped base and its recipe, refusing it if the sha256 does not match."""
    wpath, jpath = _pretrained_paths(pretrained)
    if not wpath.is_file() or not jpath.is_file():
        raise ZooCacheError(
            f"pretrained base {pretrained!r} not found ({wpath}, {jpath}); "
            "reproduce it with `swudi-lab zoo build --pretrain`"
        )
    info = json.loads(jpath.read_text())
    got = sha256_file(wpath)
    if got != info.get("sha256"):
        raise ZooCacheError(
            f"pretrained base {wpath} has sha256 {got[:12]}... but its recipe {jpath.name} says "
            f"{str(info.get('sha256'))[:12]}...: refusing to build experts on an unknown base "
            "(restore the file or rerun `swudi-lab zoo build --pretrain`)"
        )
    return load_file(str(wpath)), info


def build_pretrained(name: str = DEFAULT_PRETRAINED, recipe: PretrainRecipe = PretrainRecipe(), config: BackboneConfig = BackboneConfig(),
                     out_dir=None, device="cpu", progress: bool = True, log_file=None) -> dict:
    """Run :func:`~swudi_lab.zoo.train.pretrain` and write ``<out_dir>/<name>.safetensors`` + ``.json``.

    The json holds the exact recipe, the backbone config, sha256, validation accuracy and seconds.
    """
    out = Path(out_dir) if out_dir is not None else paths.pretrained_dir()
    state, info = pretrain(recipe, config, device=device, log_file=log_file, progress=progress)
    wpath = out / f"{name}.safetensors"
    _save_tensors(state, wpath)
    info = {"name": name, "sha256": sha256_file(wpath), "bytes": wpath.stat().st_size, **info}
    _write_json(info, out / f"{name}.json")
    return info


# ----------------------------------------------------------------------------- build


def _round_tau(base: dict, expert: dict, dtype: str) -> tuple[dict, dict]:
    """``(W0 + float32(tau_q), tau_q)`` with ``tau_q = dtype(W - W0)``: the stored expert and its task vector."""
    dt = getattr(torch, dtype or "float32")
    tau = {k: (expert[k] - base[k]).to(dt).contiguous() for k in base}
    return {k: (base[k] + tau[k].float()).contiguous() for k in base}, tau


def _evaluate(backbone_state, make, heads, data, tasks, device="cpu") -> dict:
    m = make()
    m.load_state_dict(backbone_state)
    return evaluate_backbone(m, heads, {t: data[t] for t in tasks}, tasks=tasks, device=device)


def _merge_check(base, experts, make, heads, data, tasks, base_acc, expert_acc, device="cpu") -> dict:
    """Merge all the experts with the paper's two methods (SWUDI at scale-matched kappa, SWUDI-A); score them.

    Returns ``label -> {"method", "params", "avg_acc", "norm_acc", "recovered", "per_task"}``
    (``recovered``: share of the experts' gain kept, :func:`~swudi_lab.evaluate.recovered_gain`).
    """
    kappa = ZOO_MATCHED.params("swudi")["kappa"]  # the paper's kappa only: the manifest records exactly these runs
    runs = {f"swudi (kappa={kappa:.3g})": ("swudi", {"kappa": kappa}), "swudi_a": ("swudi_a", {})}
    out = {}
    for label, (method, params) in runs.items():
        state = merge(base, experts, method, device=device, progress=False, **params).state_dict
        acc = _evaluate(state, make, heads, data, tasks, device)
        out[label] = {"method": method, "params": params, "avg_acc": average_accuracy(acc),
                      "norm_acc": normalized_accuracy(acc, expert_acc), "recovered": recovered_gain(acc, base_acc, expert_acc),
                      "per_task": acc}
    return out


def build_zoo(root=None, seed: int = 0, config: ZooConfig | None = None, progress: bool = True,
              force: bool = False, device="cpu") -> Zoo:
    """Build (or reuse) the zoo of ``seed``: base, 8 experts, fixed heads, manifest.

    Reuses ``<root>/seed<k>`` when it verifies and matches ``config``; a corrupted, partial or
    stale cache is reported (warning) and rebuilt. Seed 0 of the default config is materialized
    from the shipped release pack when there is one (no training). The build writes into a
    temporary directory and renames it into place, so an interrupted build leaves no partial
    cache behind.

    Steps: load the shipped base (hash-checked; random init when ``config.pretrained`` is None),
    fit the prototype heads on the base, fine-tune one expert per task (whole backbone, frozen
    head, expert seed ``seed``), evaluate base-with-heads and experts on the test splits, merge
    all experts with SWUDI (scale-matched kappa) and SWUDI-A and score the merges, and
    record the task-vector ratios ``||tau||_F / ||W0||_F`` and the three targets (gain, ratio,
    share of the gain the best spectral merge keeps).
    """
    config = config or ZooConfig()
    root = root if root is not None else paths.zoo_dir()
    d = _seed_dir(root, seed)
    if not force:
        try:
            return load_zoo(root, seed, config=config)
        except ZooCacheError as e:
            if d.exists():
                warnings.warn(f"{e}; rebuilding", stacklevel=2)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        return _build(root, seed, config, progress, device, d)
    finally:
        torch.set_num_threads(threads_before)


def _build(root, seed, config, progress, device, d) -> Zoo:
    """The build's steps, in order: base, data, heads, experts, merge check, targets, manifest.

    Each step is a phase of :class:`~swudi_lab.progress.Progress`: a bar on a terminal (each expert's
    fine-tuning steps), one line with its time in a log, nothing without ``progress``."""
    t_start = time.time()
    rep, tag = Progress(progress_mode(progress)), f"[zoo seed{seed}]"
    make = lambda: make_backbone(config.backbone)  # noqa: E731

    with rep.phase(f"{tag} base, data and heads") as ph:
        base, pre_info = _base_weights(config, make)
        train = {t: task_split(config, t, "train") for t in config.tasks}
        test = {t: task_split(config, t, "test") for t in config.tasks}
        classes = {t: n_classes(config, t) for t in config.tasks}
        heads = _fit_heads(base, make, config, train, classes, device)
        base_acc = _evaluate(base, make, heads, test, config.tasks, device)
        ph.done(f"{len(config.tasks)} tasks x {config.n_train} train / {config.n_test} test; base with heads: "
                + ", ".join(f"{t} {a:.1f}" for t, a in base_acc.items()))

    with atomic_dir(d) as tmp:  # built beside the target, renamed into place only when complete
        (tmp / "experts").mkdir(parents=True)
        (tmp / "task_vectors").mkdir(parents=True)
        _save_tensors(base, tmp / "base.safetensors")
        _save_tensors({f"{t}.{n}": v for t in config.tasks for n, v in zip(("weight", "bias"), heads[t])}, tmp / "heads.safetensors")
        experts, stats = _build_experts(tmp, seed, config, base, make, heads, train, test, base_acc, device, rep)
        with rep.phase(f"{tag} merge check") as ph:
            merges = _merge_check(base, experts, make, heads, test, config.tasks, base_acc, stats["accuracy"], device)
            ph.done("merges of all experts: " + ", ".join(f"{k} {v['avg_acc']:.1f}% (keeps {v['recovered']:.0f}% of the gain)"
                                                          for k, v in merges.items()))
        gain = {t: stats["accuracy"][t] - base_acc[t] for t in config.tasks}
        targets = _targets(gain, stats["ratio"], merges)
        manifest = _manifest(tmp, seed, config, classes, pre_info, base_acc, stats, gain, merges, targets, t_start)
        _write_json(manifest, tmp / "manifest.json")
    if rep.mode == "lines":  # a log's summary line (on a terminal the finished bars say it)
        rep.log(f"{tag} done: base {_mean(base_acc):.1f}% -> experts {_mean(stats['accuracy']):.1f}% "
                f"(gain {_mean(gain):+.1f}), tau/W {100 * _mean(stats['ratio']):.2f}% ({time.time() - t_start:.1f} s)")
    if config.check_targets:
        _warn_missed_targets(seed, targets)
    return load_zoo(root, seed, config=config)


def _mean(values: dict) -> float:
    return float(np.mean(list(values.values())))


def _base_weights(config, make) -> tuple[dict, dict]:
    """The base state dict and what the manifest records about it: the shipped base (hash-checked and
    fitted to the backbone config), or a random init (seed 1234) / the hub weights when ``config.pretrained`` is None."""
    if config.pretrained is None:
        base = {k: v.detach().float().cpu().clone().contiguous() for k, v in make_backbone(config.backbone, seed=1234).state_dict().items()}
        hub = getattr(config.backbone, "name", None)
        return base, {"name": hub, "sha256": None, "note": f"hub weights of {hub}" if hub else "random init (seed 1234)"}
    base, pre_info = load_pretrained(config.pretrained)
    if set(base) != set(make().state_dict()):
        raise ZooCacheError(f"pretrained base {config.pretrained!r} does not fit the backbone config {config.backbone}")
    return base, pre_info


def _fit_heads(base, make, config, train, classes, device) -> dict:
    """The fixed heads ``task -> (weight, bias)``, fitted on the base's features of the first
    ``prototype_images`` training images of each task."""
    rec = config.finetune
    base_model = make()
    base_model.load_state_dict(base)
    heads = {}
    for t in config.tasks:
        x, y = train[t]
        heads[t] = prototype_heads(base_model.to(device), x[: rec.prototype_images], y[: rec.prototype_images], classes[t],
                                   rec.head_scale, device=device, center=rec.head == "centered")
    base_model.cpu()
    return heads


def _expert_seed(seed: int, i: int) -> int:
    return 1000 * int(seed) + i


def _build_experts(tmp, seed, config, base, make, heads, train, test, base_acc, device, rep) -> tuple[dict, dict]:
    """Fine-tune one expert per task (expert seed ``1000 seed + i``), round its task vector to
    ``config.tau_dtype`` and write both into ``tmp``; score each expert on its own task.

    Returns ``(experts, stats)``: the stored expert state dicts, and ``stats`` with the per-task
    ``accuracy``, ``ratio`` (2-D matrices), ``ratio_all`` (every tensor) and ``seconds``.
    """
    experts, stats = {}, {"accuracy": {}, "ratio": {}, "ratio_all": {}, "seconds": {}}
    for i, t in enumerate(config.tasks):
        with rep.phase(f"[zoo seed{seed}] expert {t}", total=config.finetune.steps) as ph:
            experts[t] = _build_expert(tmp, seed, i, t, config, base, make, heads, train, test, device, stats, ph)
            ph.done(f"{stats['accuracy'][t]:.1f}% (base {base_acc[t]:.1f}%), tau/W {100 * stats['ratio'][t]:.2f}%")
    return experts, stats


def _build_expert(tmp, seed, i, t, config, base, make, heads, train, test, device, stats, ph) -> dict:
    """Fine-tune, round, write and score the expert of task ``t`` (the ``i``-th); fills ``stats``."""
    t0 = time.time()
    x, y = train[t]
    tick = (lambda step, loss: ph.update()) if ph.mode == "bars" else None  # no per-step sync otherwise
    ex = finetune(base, make, heads[t], x, y, config.finetune, seed=_expert_seed(seed, i), device=device, progress=tick)
    ex, tau = _round_tau(base, ex, config.tau_dtype)
    _save_tensors(ex, tmp / "experts" / f"{t}.safetensors")
    _save_tensors(tau, tmp / "task_vectors" / f"{t}.safetensors")
    stats["accuracy"][t] = _evaluate(ex, make, heads, test, [t], device)[t]
    stats["ratio"][t] = task_vector_ratio(base, ex, matrices_only=True)
    stats["ratio_all"][t] = task_vector_ratio(base, ex, matrices_only=False)
    stats["seconds"][t] = time.time() - t0
    return ex


def _targets(gain: dict, ratio: dict, merges: dict) -> dict:
    """The three targets (average gain, task-vector ratio, share of the gain the best spectral merge keeps)."""
    best = max(merges, key=lambda k: np.nan_to_num(merges[k]["recovered"], nan=-np.inf))
    return {
        "min_avg_gain": TARGET_MIN_GAIN,
        "ratio_range": list(TARGET_RATIO),
        "avg_gain": _mean(gain),
        "mean_ratio": _mean(ratio),
        "gain_met": _mean(gain) >= TARGET_MIN_GAIN,
        "ratio_met": TARGET_RATIO[0] <= _mean(ratio) <= TARGET_RATIO[1],
        "min_recovered": TARGET_MIN_RECOVERED,
        "best_merge": best,
        "best_recovered": merges[best]["recovered"],
        "best_norm_acc": merges[best]["norm_acc"],
        "merge_met": merges[best]["recovered"] >= TARGET_MIN_RECOVERED,
    }


def _manifest(tmp, seed, config, classes, pre_info, base_acc, stats, gain, merges, targets, t_start) -> dict:
    """The manifest of a build in ``tmp``: config, seeds, accuracies, ratios, merges, targets, file hashes."""
    import timm

    files = {"base.safetensors": sha256_file(tmp / "base.safetensors"), "heads.safetensors": sha256_file(tmp / "heads.safetensors")}
    files.update({f"experts/{t}.safetensors": sha256_file(tmp / "experts" / f"{t}.safetensors") for t in config.tasks})
    files.update({f"task_vectors/{t}.safetensors": sha256_file(tmp / "task_vectors" / f"{t}.safetensors") for t in config.tasks})
    expert_acc = stats["accuracy"]
    return {
        "format": FORMAT,
        "seed": int(seed),
        "expert_seeds": {t: _expert_seed(seed, i) for i, t in enumerate(config.tasks)},
        "config": config.to_dict(),
        "config_key": config.key(),
        "tasks": list(config.tasks),
        "n_classes": classes,
        "pretrained": {k: pre_info.get(k) for k in ("name", "sha256", "val_accuracy", "seconds", "note") if k in pre_info},
        "accuracy": {
            "base": base_acc,
            "expert": expert_acc,
            "gain": gain,
            "avg_base": _mean(base_acc),
            "avg_expert": _mean(expert_acc),
            "avg_gain": _mean(gain),
        },
        "task_vector_ratio": stats["ratio"],
        "task_vector_ratio_all_params": stats["ratio_all"],
        "task_vector_ratio_mean": _mean(stats["ratio"]),
        "merges": merges,
        "targets": targets,
        "seconds": {"experts": stats["seconds"], "total": time.time() - t_start},
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "files": files,
    }


def _warn_missed_targets(seed, targets: dict) -> None:
    missed = [msg for met, msg in (
        (targets["gain_met"], f"average gain {targets['avg_gain']:+.1f} (want >= {TARGET_MIN_GAIN})"),
        (targets["ratio_met"], f"task-vector ratio {100 * targets['mean_ratio']:.2f}% "
                               f"(want {100 * TARGET_RATIO[0]:.0f}-{100 * TARGET_RATIO[1]:.0f}%)"),
        (targets["merge_met"], f"best spectral merge keeps {targets['best_recovered']:.0f}% of the gain "
                               f"(want >= {TARGET_MIN_RECOVERED:.0f}%)"),
    ) if not met]
    if missed:
        warnings.warn(f"zoo seed {seed} misses its targets: {'; '.join(missed)}", stacklevel=3)


# ----------------------------------------------------------------------------- release pack


def write_release(zoo: Zoo, out_root=None) -> Path:
    """Write the compact release pack of a zoo: float16 task vectors + heads + manifest.

    ``<out_root>/seed<k>/{task_vectors/<task>.safetensors, heads.safetensors, manifest.json}``; the
    base is the shipped ``<data>/pretrained`` file (referenced by hash, not copied). The manifest is
    the zoo's manifest plus ``release_files`` (hashes of the pack's own files).
    """
    out = _seed_dir(out_root if out_root is not None else paths.release_dir(), zoo.seed)
    if zoo.config.pretrained is None:
        raise ValueError("a release pack needs a shipped pretrained base (config.pretrained)")
    with atomic_dir(out) as tmp:  # the pack appears whole, or the old one stays
        (tmp / "task_vectors").mkdir()
        release_files = {}
        for t in zoo.tasks:
            p = tmp / "task_vectors" / f"{t}.safetensors"
            shutil.copyfile(zoo.dir / "task_vectors" / f"{t}.safetensors", p)
            release_files[f"task_vectors/{t}.safetensors"] = sha256_file(p)
        shutil.copyfile(zoo.heads_path, tmp / "heads.safetensors")
        release_files["heads.safetensors"] = sha256_file(tmp / "heads.safetensors")
        manifest = dict(zoo.manifest)
        manifest["release_files"] = release_files
        _write_json(manifest, tmp / "manifest.json")
    return out


def materialize_release(release_dir, target_dir) -> Path:
    """Rebuild the float32 zoo cache from a release pack (``W_i = W_0 + float32(tau_i)``), verified."""
    release_dir, target_dir = Path(release_dir), Path(target_dir)
    try:
        manifest = json.loads((release_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZooCacheError(f"release pack {release_dir}: unreadable manifest ({e})") from e
    for rel, digest in manifest.get("release_files", {}).items():
        p = release_dir / rel
        if not p.is_file() or sha256_file(p) != digest:
            raise ZooCacheError(f"release pack {release_dir}: file {rel} is missing or corrupted")
    config = ZooConfig.from_dict(manifest["config"])
    base, pre_info = load_pretrained(config.pretrained)
    if pre_info["sha256"] != manifest["pretrained"]["sha256"]:
        raise ZooCacheError(f"release pack {release_dir} was built on another base than {config.pretrained!r}")
    with atomic_dir(target_dir) as tmp:
        (tmp / "experts").mkdir(parents=True)
        (tmp / "task_vectors").mkdir(parents=True)
        _save_tensors(base, tmp / "base.safetensors")
        shutil.copyfile(release_dir / "heads.safetensors", tmp / "heads.safetensors")
        for t in manifest["tasks"]:
            shutil.copyfile(release_dir / "task_vectors" / f"{t}.safetensors", tmp / "task_vectors" / f"{t}.safetensors")
            tau = load_file(str(release_dir / "task_vectors" / f"{t}.safetensors"))
            _save_tensors({k: (base[k] + tau[k].float()).contiguous() for k in base}, tmp / "experts" / f"{t}.safetensors")
        m = {k: v for k, v in manifest.items() if k != "release_files"}
        _write_json(m, tmp / "manifest.json")
        _verify_dir(tmp)  # the float32 files must hash exactly as when they were built
    return target_dir
