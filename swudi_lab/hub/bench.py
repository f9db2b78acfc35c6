"""The paper's CLIP ViT benchmark (TA8): published experts, every registry method, zero-shot heads.

``swudi-lab bench clip`` (and notebook 7) runs, for one model family (default CLIP ViT-B/32):

1. **sources**: the base CLIP (``openai/clip-vit-base-patch32``) and the eight experts
   (``tanganke/clip-vit-base-patch32_<task>``), hub ids or local folders;
2. **heads**: one zero-shot head per task from the base's text tower (:mod:`.heads`, cached);
3. **merges**: every registry method at the paper's settings (preset ``clip-vit-b32``: SWUDI t 1300,
   r 0.65; IWUDI t 300; WUDI Adam lr 1e-5 x 300 steps; SWUDI-A participation_sqrt; task arithmetic
   0.3; TIES 0.2 / 0.3), on the vision towers in the experts' own layout (q, k, v separate; every
   2-D matrix, the positional embedding included, through the solver), timed, with peak memory;
4. **scores**: the zero-shot base, each expert on its own task and every merge, on each task's test
   split (or a seeded class-balanced ``n_test`` per task), each test image decoded once for all models;
5. **table**: average and normalized accuracy, per task, merge seconds and peak memory, with the
   published numbers (FusionBench's B/32 table; the paper authors' for the WUDI family) and the
   difference.

Each model's scores are cached under ``<out>/cache/`` keyed by everything that decides them, so a
re-run resumes where it stopped. ``standin=True`` runs the same pipeline on an offline stand-in
(:mod:`.standin`): tiny random models, so its numbers test the code, not the paper.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import paths
from ..config.presets import get_preset
from ..evaluate import average_accuracy, measure, normalized_accuracy
from ..files import atomic_write_text
from ..merge import METHODS, merge, resolve_device, resolve_params
from . import require
from .convert import detect_hf_prefix
from .data import load_test_set
from ..merge.fetch import resolve_source
from ..merge.io import HFDirectoryCheckpoint, read_json
from .heads import head_path, image_logits, load_clip, zeroshot_head
from .tasks import TA8, base_model_id, expert_ids, get_family, get_task

__all__ = ["PUBLISHED", "BenchConfig", "run_clip_bench", "format_bench_table", "standin_config", "run_mode"]

_FORMAT = 1  # bump when what a cached score means changes

PUBLISHED = {
    "clip-vit-base-patch32": {
        # average accuracy over the eight tasks (%), and where it is published
        "zero-shot": (48.2, "FusionBench"),
        "experts": (90.3, "FusionBench"),
        "average": (66.5, "FusionBench"),
        "task_arithmetic": (68.0, "FusionBench"),
        "ties": (72.2, "FusionBench"),
        "closed_form": (82.33, "paper authors"),
        "wudi": (84.63, "paper authors"),
        "iwudi": (85.10, "paper authors"),
        "swudi": (85.55, "paper authors"),
        "swudi_a": (85.53, "paper authors"),
    },
}
"""Published TA8 averages per model family: ``label -> (accuracy %, source)``."""

_MODEL_FILES = ["*.safetensors", "*.json", "*.txt"]  # weights, config, tokenizer (vocab.json, merges.txt)


@dataclass
class BenchConfig:
    """What to run. ``None`` fields take the family's defaults (hub ids, every registry method)."""

    family: str = "clip-vit-base-patch32"
    base: str | None = None
    experts: dict | None = None
    tasks: tuple = TA8
    data: dict | None = None  # task -> dataset hub id or local folder; default: the task's hub dataset
    methods: tuple | None = None
    preset: str = "clip-vit-b32"
    n_test: int | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    out: str | None = None
    heads_cache: str | None = None
    standin: bool = False
    timeout: float = 10.0

    def resolved(self) -> "BenchConfig":
        fam = get_family(self.family)
        tasks = tuple(get_task(t).id for t in self.tasks)
        experts = dict(self.experts) if self.experts else expert_ids(fam, tasks)
        missing = [t for t in tasks if t not in experts]
        if missing:
            raise ValueError(f"no expert given for task(s) {missing}")
        methods = tuple(self.methods) if self.methods else tuple(METHODS)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        out = self.out or str(paths.bench_results_dir() / ("clip_standin" if self.standin else "clip"))
        return BenchConfig(fam.name, self.base or base_model_id(fam), {t: str(experts[t]) for t in tasks}, tasks,
                           dict(self.data or {}), methods, self.preset, self.n_test, self.seed, self.device,
                           self.batch_size, out, self.heads_cache, self.standin, self.timeout)


def standin_config(root=None, **overrides) -> BenchConfig:
    """A :class:`BenchConfig` on the offline stand-in (built under ``root`` on first use)."""
    from .standin import build_standin

    root = Path(root) if root else paths.bench_results_dir() / "standin"
    s = build_standin(root)
    return BenchConfig(base=str(s.base), experts={t: str(p) for t, p in s.experts.items()},
                       data={t: str(p) for t, p in s.data.items()}, standin=True,
                       heads_cache=str(root / "heads"), **overrides)


def run_mode(device, *, family: str = "clip-vit-base-patch32", timeout: float = 5.0, log=print) -> str:
    """``"hub"`` (the published experts) or ``"standin"`` (offline), and one line saying which and why.

    ``$SWUDI_LAB_BENCH`` (``hub`` or ``standin``) decides when set; otherwise the hub run needs a
    CUDA device and an answer from the hub within ``timeout`` seconds.
    """
    import os

    forced = os.environ.get("SWUDI_LAB_BENCH", "").strip().lower()
    if forced not in ("", "hub", "standin"):
        raise ValueError(f"SWUDI_LAB_BENCH must be 'hub' or 'standin', got {forced!r}")
    reason = f"SWUDI_LAB_BENCH={forced}" if forced else None
    mode = forced or None
    if mode is None and str(device) != "cuda":
        mode, reason = "standin", f"no GPU (device {device}): 8 x 88 M-parameter experts on ~87k test images need one"
    if mode is None:
        try:
            from ..merge.fetch import hub_offline

            if hub_offline():
                raise OSError("HF_HUB_OFFLINE is set")
            require("huggingface_hub").HfApi().model_info(base_model_id(family), timeout=timeout)
            mode, reason = "hub", f"GPU and the hub at hand: the published {family} experts"
        except Exception as e:  # no network, offline mode, hub down
            mode, reason = "standin", f"the hub is out of reach ({type(e).__name__})"
    if log is not None:
        what = ("the published experts from the hub" if mode == "hub" else
                "the OFFLINE STAND-IN: tiny CLIP models built here, a few synthetic images per class; its numbers "
                "test the pipeline, not the paper")
        log(f"bench mode: {mode} — {what} ({reason})")
    return mode


# ----------------------------------------------------------------------------- phases


def _say(log):
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if log is not None:
            log(f"[bench clip {time.perf_counter() - t0:7.1f}s] {msg}")

    return say


def _local(source: str, what: str, timeout: float) -> Path:
    return resolve_source(source, repo_type="model", allow_patterns=_MODEL_FILES, what=what, timeout=timeout)


def _vision_state(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """The vision tower of an HF CLIP folder (CLIPModel or CLIPVisionModel, either key layout), unprefixed."""
    ck = HFDirectoryCheckpoint(folder)
    keys = list(ck.keys())
    prefix = detect_hf_prefix(keys)
    vision = [k for k in keys if k.startswith(prefix) and not k.startswith(("text_model.", "visual_projection",
                                                                            "text_projection", "logit_scale"))]
    if not vision:
        raise ValueError(f"{what} ({folder}) has no vision-tower tensors")
    return {k[len(prefix):]: ck.get(k) for k in vision if not k.endswith("position_ids")}


def _vision_config(folder: Path) -> dict:
    config = read_json(folder / "config.json", "model config")
    return config.get("vision_config", config)


def _heads(cfg: BenchConfig, base_dir: Path, say, progress: bool) -> dict:
    missing = [t for t in cfg.tasks if not head_path(cfg.base, t, cfg.heads_cache).exists()]
    model = tokenizer = None
    if missing:
        say(f"building zero-shot heads for {', '.join(missing)} (the base's text tower)")
        model, tokenizer = load_clip(base_dir)
    heads = {t: zeroshot_head(cfg.base, t, cache_dir=cfg.heads_cache, model=model, tokenizer=tokenizer)
             for t in tqdm(cfg.tasks, desc="zero-shot heads", unit="task", disable=not (progress and missing))}
    del model
    return heads


def _key(cfg: BenchConfig, label: str, extra) -> str:
    what = {"format": _FORMAT, "family": cfg.family, "base": cfg.base, "experts": cfg.experts, "tasks": cfg.tasks,
            "data": cfg.data, "n_test": cfg.n_test, "seed": cfg.seed, "label": label, "extra": extra}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]


class _Cache:
    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, key: str):
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a damaged entry is recomputed

    def put(self, key: str, value) -> None:
        atomic_write_text(self.folder / f"{key}.json", json.dumps(value))


def _model(vision_config: dict, state: dict, device):
    transformers = require("transformers")
    config = transformers.CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
    m = transformers.CLIPVisionModel(config)
    # transformers 5's CLIPVisionModel holds the tower's tensors itself; 4.x keeps them in .vision_model
    getattr(m, "vision_model", m).load_state_dict(state, strict=True)
    return m.to(device).eval()


def _score(models: dict, tasks_of: dict, test_sets: dict, heads: dict, device, batch_size: int,
           progress: bool) -> dict:
    """``label -> {task: accuracy %}``: every test image decoded once and given to every model that needs it."""
    correct = {label: {} for label in models}
    for task, ts in test_sets.items():
        users = [label for label in models if task in tasks_of[label]]
        if not users:
            continue
        hits, seen = dict.fromkeys(users, 0), 0
        bar = tqdm(total=len(ts.labels), desc=f"score {task}", unit="img", disable=not progress, leave=False)
        with torch.no_grad():
            for pixels, labels in ts.batches(batch_size):
                pixels, labels = pixels.to(device), labels.to(device)
                for label in users:
                    out = models[label](pixel_values=pixels)
                    pred = image_logits(out, heads[task]).argmax(1)
                    hits[label] += int((pred == labels).sum())
                seen += len(labels)
                bar.update(len(labels))
        bar.close()
        for label in users:
            correct[label][task] = 100.0 * hits[label] / max(1, seen)
    return correct


# ----------------------------------------------------------------------------- the run


def run_clip_bench(cfg: BenchConfig | None = None, *, progress: bool = True, log=print) -> dict:
    """Run the benchmark (see the module docstring); returns the results and writes them to ``cfg.out``.

    Writes ``results.json`` (every number, the settings, the published values) and ``results.csv``.
    """
    cfg = (cfg or BenchConfig()).resolved()
    say = _say(log)
    out = Path(cfg.out)
    cache = _Cache(out / "cache")
    device = resolve_device(cfg.device)
    if cfg.standin:
        say("offline stand-in: tiny random CLIP models and a few images per class in the hub's formats; "
            "the numbers test the pipeline, not the paper")
    say(f"{cfg.family}: base {cfg.base}, {len(cfg.tasks)} experts, device {device}"
        + (f", {cfg.n_test} test images per task" if cfg.n_test else ", whole test splits"))

    base_dir = _local(cfg.base, "base model", cfg.timeout)
    expert_dirs = {t: _local(s, f"expert {t}", cfg.timeout) for t, s in cfg.experts.items()}
    heads = _heads(cfg, base_dir, say, progress)
    vision_config = _vision_config(base_dir)
    image_size = int(vision_config.get("image_size", 224))
    test_sets = {t: load_test_set(t, cfg.data.get(t), n_test=cfg.n_test, seed=cfg.seed, image_size=image_size,
                                  timeout=cfg.timeout)
                 for t in tqdm(cfg.tasks, desc="test sets", unit="task", disable=not progress)}
    say("test sets: " + ", ".join(f"{t} {len(ts.labels)}" for t, ts in test_sets.items()))

    base = _vision_state(base_dir, "base model")
    experts = {t: _vision_state(d, f"expert {t}") for t, d in expert_dirs.items()}
    for t, sd in experts.items():
        if set(sd) != set(base):
            raise ValueError(f"expert {t} ({expert_dirs[t]}) does not match the base's vision tower: "
                             f"missing {sorted(set(base) - set(sd))[:5]}, unexpected {sorted(set(sd) - set(base))[:5]}")

    preset = get_preset(cfg.preset)
    rows: dict[str, dict] = {}
    todo_models, tasks_of, pending = {}, {}, {}

    def want(label: str, kind: str, state_fn, tasks, extra=None, info=None):
        key = _key(cfg, label, extra)
        hit = cache.get(key)
        if hit is not None:
            rows[label] = hit
            return
        state, more = state_fn()
        todo_models[label] = _model(vision_config, state, device)
        tasks_of[label] = tasks
        pending[label] = (key, {"kind": kind, **(info or {}), **more})

    want("zero-shot", "reference", lambda: (base, {}), cfg.tasks)
    for t in cfg.tasks:
        want(f"expert {t}", "reference", lambda t=t: (experts[t], {}), (t,))
    for name in tqdm(cfg.methods, desc="merges", unit="method", disable=not progress):
        params = resolve_params(name, preset=preset)

        def do_merge(name=name):
            with measure(device) as m:
                merged = merge(base, [experts[t] for t in cfg.tasks], name, preset=preset, device=device,
                               head_pattern=None, progress=False, tasks=list(cfg.tasks))
            say(f"merged with {name} in {m.seconds:.2f} s")
            return merged.state_dict, {"seconds": m.seconds, "peak_mb": m.peak_mb}

        want(name, "merge", do_merge, cfg.tasks, extra={"params": params, "device": str(device)},
             info={"method": name, "params": params})

    if todo_models:
        say(f"scoring {len(todo_models)} model(s) on {len(cfg.tasks)} task(s)")
        scores = _score(todo_models, tasks_of, test_sets, heads, device, cfg.batch_size, progress)
        for label, (key, info) in pending.items():
            rows[label] = {**info, "per_task": scores[label]}
            cache.put(key, rows[label])
    else:
        say("every score came from the cache")

    result = _assemble(cfg, rows, test_sets)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    atomic_write_text(out / "results.csv", _csv(result))
    say(f"wrote {out / 'results.json'} and results.csv")
    return result


def _assemble(cfg: BenchConfig, rows: dict, test_sets: dict) -> dict:
    expert_acc = {t: rows[f"expert {t}"]["per_task"][t] for t in cfg.tasks}
    published = PUBLISHED.get(cfg.family, {}) if not cfg.standin and set(cfg.tasks) == set(TA8) else {}
    table = {}

    def entry(label, per_task, **extra):
        row = {"avg_acc": average_accuracy(per_task), "norm_acc": normalized_accuracy(per_task, expert_acc),
               "per_task": per_task, **extra}
        if label in published:
            row["published"], row["published_source"] = published[label]
            row["difference"] = row["avg_acc"] - row["published"]
        table[label] = row

    entry("zero-shot", rows["zero-shot"]["per_task"])
    entry("experts", expert_acc)
    for name in cfg.methods:
        r = rows[name]
        entry(name, r["per_task"], method=name, params=r.get("params"), seconds=r.get("seconds"),
              peak_mb=r.get("peak_mb"))
    settings = asdict(cfg)
    settings["tasks"] = list(cfg.tasks)
    settings["methods"] = list(cfg.methods)
    return {"settings": settings, "test_images": {t: len(ts.labels) for t, ts in test_sets.items()},
            "standin": cfg.standin, "table": table}


def _csv(result: dict) -> str:
    tasks = result["settings"]["tasks"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "avg_acc", "norm_acc", "published", "difference", "merge_s", "peak_mb"] + tasks)
    for label, r in result["table"].items():
        w.writerow([label, r["avg_acc"], r["norm_acc"], r.get("published", ""), r.get("difference", ""),
                    r.get("seconds", ""), r.get("peak_mb", "")] + [r["per_task"].get(t, "") for t in tasks])
    return buf.getvalue()


def format_bench_table(result: dict) -> str:
    """The table as text: ours, published, difference, normalized accuracy, per task, merge time, memory."""
    tasks = result["settings"]["tasks"]
    head = ["model", "ours %", "published", "diff", "norm %"] + [t[:8] for t in tasks] + ["merge s", "peak MB"]
    lines = []
    for label, r in result["table"].items():
        pub = f"{r['published']:.2f}" if "published" in r else ""
        diff = f"{r['difference']:+.2f}" if "difference" in r else ""
        secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else ""
        mem = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else ""
        lines.append([label, f"{r['avg_acc']:.2f}", pub, diff, f"{r['norm_acc']:.1f}"]
                     + [f"{r['per_task'][t]:.1f}" if t in r["per_task"] else "" for t in tasks] + [secs, mem])
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(head), "-" * len(fmt(head))] + [fmt(x) for x in lines])
