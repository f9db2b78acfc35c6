"""Zero-shot classification heads of a base CLIP, as the model-merging literature builds them.

For every class, each of the task's templates is filled with the class name and goes through the
base CLIP's text tower and ``text_projection`` (``CLIPModel.get_text_features``); the embeddings
are L2-normalised, averaged over the templates and normalised again. The head is the ``(K, P)``
matrix of those class embeddings, and an image's logits are
``exp(logit_scale) * cos(image embedding, class embedding)``.

A :class:`ZeroShotHead` also carries the base model's ``visual_projection`` ``(P, D)``, so the
logits of a (merged) vision tower follow from its ``pooler_output`` alone (:func:`image_logits`):
no second copy of the base model is needed at evaluation time.

Heads are cached per (base model, task) as safetensors files under ``cache_dir`` (default
``~/.cache/swudi_lab/heads``): ``<cache_dir>/<base key>/<task>.safetensors`` with the tensors
``weight``, ``logit_scale`` (CLIP's log-scale parameter) and ``visual_projection`` and metadata
(format, base id, task, class and template counts, a SHA-256 of the class names and prompts, a
SHA-256 of the tensors). Writes are atomic (temporary file, then rename).

A cached head that cannot be read (truncated, not safetensors) or does not match what is asked
(format, base, task, prompts hash, counts, shapes, dtype, tensor checksum) raises
:class:`HeadCacheError` naming the file and the mismatch — by default. ``on_invalid="rebuild"``
instead warns and rebuilds it (the base model is then loaded). A stale head is never used silently.

``transformers`` and ``huggingface_hub`` are imported lazily through :func:`swudi_lab.hub.require`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import require
from ..files import atomic_path
from ..merge.fetch import is_local, resolve_source
from .tasks import TaskSpec, get_task, prompts_hash, render_prompts

__all__ = ["ZeroShotHead", "HeadCacheError", "DEFAULT_CACHE_DIR", "HEAD_FORMAT", "MODEL_PATTERNS",
           "load_clip", "encode_text", "build_head", "zeroshot_head", "head_path", "save_head",
           "load_head", "image_features", "image_logits"]

DEFAULT_CACHE_DIR = Path("~/.cache/swudi_lab/heads")
HEAD_FORMAT = "swudi_lab.zeroshot_head/1"
MODEL_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                  "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
_TENSORS = ("weight", "logit_scale", "visual_projection")


class HeadCacheError(ValueError):
    """A cached head file is unreadable or does not match the head asked for."""


@dataclass(frozen=True)
class ZeroShotHead:
    """Class embeddings of one task under one base CLIP.

    ``weight`` ``(K, P)``: unit-norm class embeddings (rows in label order); ``logit_scale``: CLIP's
    log temperature (a 0-d tensor; the logits use ``exp(logit_scale)``); ``visual_projection``
    ``(P, D)``: the base model's image projection (``pooler_output @ visual_projection.T``).
    """

    weight: torch.Tensor
    logit_scale: torch.Tensor
    visual_projection: torch.Tensor
    base: str
    task: str
    num_templates: int
    prompts_hash: str

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def scale(self) -> float:
        return float(self.logit_scale.exp())

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` logits of projected image embeddings ``(B, P)`` (normalised here)."""
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.weight.shape[1]:
            raise ValueError(f"image embeddings of shape {tuple(image_embeds.shape)} do not fit head "
                             f"{self.task!r} of shape {tuple(self.weight.shape)} (expected (B, {self.weight.shape[1]}))")
        x = _normalize(image_embeds.to(self.weight.dtype))
        return self.logit_scale.exp() * x @ self.weight.T.to(x.device)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- the base model


def load_clip(base, *, timeout: float = 10.0, hub_cache_dir=None):
    """``(CLIPModel, CLIPTokenizer)`` of ``base``: a hub id (``openai/clip-vit-base-patch32``) or a local folder.

    Both go through the same loader: a hub id is first fetched (config, safetensors weights and
    tokenizer files only) into the hub cache (``hub_cache_dir``, default huggingface_hub's). Pickled weights are never loaded: a folder without
    ``*.safetensors`` raises ``FileNotFoundError``. The model is returned in ``eval()`` mode, float32.
    """
    transformers = require("transformers")
    folder = resolve_source(base, repo_type="model", allow_patterns=MODEL_PATTERNS,
                            what=f"base CLIP {base!s}", timeout=timeout, cache_dir=hub_cache_dir)
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"base CLIP {base!s}: no *.safetensors weights in {folder} "
                                "(pickled checkpoints are not loaded)")
    model = transformers.CLIPModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    return model, tokenizer


def _check_tokenizer(model, tokenizer) -> None:
    eos = getattr(model.config.text_config, "eos_token_id", None)
    # eos_token_id == 2 is the legacy config value: pooling then takes the highest token id (CLIP's eot)
    if eos not in (None, 2) and tokenizer.eos_token_id != eos:
        raise ValueError(f"tokenizer eos_token_id {tokenizer.eos_token_id} differs from the text model's "
                         f"eos_token_id {eos}: the text features would be pooled at the wrong token")


@torch.no_grad()
def encode_text(model, tokenizer, prompts, *, batch_size: int = 256) -> torch.Tensor:
    """``(n, P)`` float32 text features (``get_text_features``: text tower + ``text_projection``), unnormalised."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_text: no prompts")
    _check_tokenizer(model, tokenizer)
    max_len = int(model.config.text_config.max_position_embeddings)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], padding=True, truncation=True, max_length=max_len,
                        return_tensors="pt")
        feats = model.get_text_features(input_ids=enc["input_ids"].to(device),
                                        attention_mask=enc["attention_mask"].to(device))
        if not isinstance(feats, torch.Tensor):  # transformers >= 5 returns the pooled output object
            feats = feats.pooler_output
        out.append(feats.float().cpu())
    return torch.cat(out)


def build_head(model, tokenizer, task: "TaskSpec | str", *, base: str = "", batch_size: int = 256) -> ZeroShotHead:
    """The zero-shot head of ``task`` under ``model`` (a ``CLIPModel``) and its ``tokenizer``.

    Per class: embed every template, normalise, average over templates, normalise again.
    ``base`` is recorded in the head (the id or folder the model came from).
    """
    spec = get_task(task)
    if not spec.classnames or not spec.templates:
        raise ValueError(f"task {spec.id!r} has {len(spec.classnames)} class names and {len(spec.templates)} templates")
    prompts = render_prompts(spec.classnames, spec.templates)
    k, t = len(prompts), len(spec.templates)
    feats = encode_text(model, tokenizer, [p for row in prompts for p in row], batch_size=batch_size)
    emb = _normalize(feats).reshape(k, t, -1).mean(dim=1)
    weight = _normalize(emb).contiguous()
    return ZeroShotHead(
        weight=weight,
        logit_scale=model.logit_scale.detach().float().cpu().reshape(()).clone(),
        visual_projection=model.visual_projection.weight.detach().float().cpu().contiguous().clone(),
        base=str(base), task=spec.id, num_templates=t,
        prompts_hash=prompts_hash(spec.classnames, spec.templates),
    )


# ----------------------------------------------------------------------------- image side


def image_features(vision_output, visual_projection: torch.Tensor) -> torch.Tensor:
    """Normalised image embeddings ``(B, P)``: vision ``pooler_output`` ``(B, D)`` -> ``visual_projection`` -> L2.

    ``vision_output`` is a tensor ``(B, D)`` or an HF vision output with ``.pooler_output``.
    """
    pooled = vision_output if isinstance(vision_output, torch.Tensor) else vision_output.pooler_output
    if pooled.ndim != 2 or pooled.shape[1] != visual_projection.shape[1]:
        raise ValueError(f"pooler_output of shape {tuple(pooled.shape)} does not fit visual_projection of shape "
                         f"{tuple(visual_projection.shape)} (expected (B, {visual_projection.shape[1]}))")
    proj = visual_projection.to(device=pooled.device, dtype=pooled.dtype)
    return _normalize(pooled @ proj.T)


def image_logits(vision_output, head: ZeroShotHead) -> torch.Tensor:
    """``(B, K)`` logits of an HF vision tower's output (``CLIPVisionModel(...)`` or its ``pooler_output``)."""
    feats = image_features(vision_output, head.visual_projection)
    return head.logit_scale.exp().to(feats) * feats @ head.weight.T.to(feats)


# ----------------------------------------------------------------------------- the cache


def _base_key(base) -> str:
    if is_local(base):
        resolved = str(Path(base).expanduser().resolve())
        digest = hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:12]
        return f"local--{re.sub(r'[^A-Za-z0-9._-]', '_', Path(resolved).name)}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(base).replace("/", "--"))


def _base_name(base) -> str:
    return str(Path(base).expanduser().resolve()) if is_local(base) else str(base)


def head_path(base, task: "TaskSpec | str", cache_dir=None) -> Path:
    """Where the head of (``base``, ``task``) is cached: ``<cache_dir>/<base key>/<task>.safetensors``."""
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    return root / _base_key(base) / f"{get_task(task).id}.safetensors"


def _tensors_sha256(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in _TENSORS:
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_head(head: ZeroShotHead, path) -> Path:
    """Write ``head`` to ``path`` atomically (:func:`swudi_lab.files.atomic_path`)."""
    path = Path(path)
    tensors = {"weight": head.weight.detach().float().cpu().contiguous(),
               "logit_scale": head.logit_scale.detach().float().cpu().reshape(()).contiguous(),
               "visual_projection": head.visual_projection.detach().float().cpu().contiguous()}
    metadata = {"format": HEAD_FORMAT, "base": head.base, "task": head.task,
                "num_classes": str(head.num_classes), "num_templates": str(head.num_templates),
                "prompts_hash": head.prompts_hash, "tensors_sha256": _tensors_sha256(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_head(path, *, task: "TaskSpec | str | None" = None, base=None) -> ZeroShotHead:
    """Read and check a head file; with ``task``/``base`` also check it is the head of that task and base.

    Raises :class:`HeadCacheError` naming ``path`` and what is wrong: unreadable (truncated, not
    safetensors), wrong format, another base or task, class names or templates changed (prompts
    hash), counts, tensor names, shapes, dtype, non-finite values or a tensor checksum mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadCacheError(f"head file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise HeadCacheError(f"head file {path} is unreadable (truncated or not safetensors): "
                             f"{type(e).__name__}: {e}") from None

    def bad(msg):
        return HeadCacheError(f"head file {path}: {msg}")

    if meta.get("format") != HEAD_FORMAT:
        raise bad(f"format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
    missing = [k for k in ("base", "task", "num_classes", "num_templates", "prompts_hash", "tensors_sha256")
               if k not in meta]
    if missing:
        raise bad(f"metadata lacks {missing}")
    if sorted(tensors) != sorted(_TENSORS):
        raise bad(f"tensors {sorted(tensors)}, expected {sorted(_TENSORS)}")
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise bad(f"tensor {name!r} has dtype {t.dtype}, expected torch.float32")
    if _tensors_sha256(tensors) != meta["tensors_sha256"]:
        raise bad("tensor checksum mismatch (the file's data was altered or damaged)")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise bad(f"tensor {name!r} has non-finite values")
    w, s, proj = tensors["weight"], tensors["logit_scale"], tensors["visual_projection"]
    try:
        k, n_t = int(meta["num_classes"]), int(meta["num_templates"])
    except ValueError:
        raise bad(f"num_classes/num_templates {meta['num_classes']!r}/{meta['num_templates']!r} are not integers") from None
    if w.ndim != 2 or w.shape[0] != k:
        raise bad(f"weight has shape {tuple(w.shape)}, expected ({k}, P)")
    if s.shape != ():
        raise bad(f"logit_scale has shape {tuple(s.shape)}, expected ()")
    if proj.ndim != 2 or proj.shape[0] != w.shape[1]:
        raise bad(f"visual_projection has shape {tuple(proj.shape)}, expected ({w.shape[1]}, D)")
    if task is not None:
        spec = get_task(task)
        if meta["task"] != spec.id:
            raise bad(f"is the head of task {meta['task']!r}, expected {spec.id!r}")
        if k != spec.num_classes or n_t != len(spec.templates):
            raise bad(f"{k} classes x {n_t} templates, task {spec.id!r} has "
                      f"{spec.num_classes} x {len(spec.templates)}")
        if meta["prompts_hash"] != prompts_hash(spec.classnames, spec.templates):
            raise bad(f"prompts hash {meta['prompts_hash'][:12]}... differs from task {spec.id!r}'s class "
                      "names and templates (built from other prompts)")
    if base is not None and meta["base"] != _base_name(base):
        raise bad(f"is a head of base {meta['base']!r}, expected {_base_name(base)!r}")
    return ZeroShotHead(weight=w, logit_scale=s, visual_projection=proj, base=meta["base"], task=meta["task"],
                        num_templates=n_t, prompts_hash=meta["prompts_hash"])


def zeroshot_head(base, task: "TaskSpec | str", *, cache_dir=None, on_invalid: str = "error",
                  rebuild: bool = False, model=None, tokenizer=None, batch_size: int = 256,
                  timeout: float = 10.0, hub_cache_dir=None) -> ZeroShotHead:
    """The head of ``task`` under the base CLIP ``base`` (hub id or local folder), from the cache or built.

    A valid cached head is returned as it is. A missing one is built (loading ``base`` unless
    ``model`` and ``tokenizer`` are given) and cached. An invalid one raises :class:`HeadCacheError`
    (``on_invalid="error"``, the default) or is rebuilt with a warning (``on_invalid="rebuild"``).
    ``rebuild=True`` always rebuilds. ``timeout``/``hub_cache_dir`` are passed to :func:`load_clip`.
    """
    if on_invalid not in ("error", "rebuild"):
        raise ValueError(f"on_invalid must be 'error' or 'rebuild', got {on_invalid!r}")
    spec = get_task(task)
    path = head_path(base, spec, cache_dir)
    if path.exists() and not rebuild:
        try:
            return load_head(path, task=spec, base=base)
        except HeadCacheError as e:
            if on_invalid == "error":
                raise HeadCacheError(f"{e} — delete it or pass on_invalid='rebuild'") from None
            warnings.warn(f"rebuilding zero-shot head: {e}", stacklevel=2)
    if model is None or tokenizer is None:
        model, tokenizer = load_clip(base, timeout=timeout, hub_cache_dir=hub_cache_dir)
    head = build_head(model, tokenizer, spec, base=_base_name(base), batch_size=batch_size)
    save_head(head, path)
    return head
