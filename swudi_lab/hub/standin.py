"""An offline stand-in for the CLIP ViT benchmark, built by the real libraries.

No machine here reaches the hub, so ``swudi-lab bench clip --standin`` and notebook 7 run the
same pipeline on files made locally in the hub's formats:

- a tiny ``transformers.CLIPModel`` (text and vision towers at random initialisation) and a
  ``CLIPTokenizer`` from a small byte-level vocabulary, saved with ``save_pretrained`` (the base);
- one tiny ``CLIPVisionModel`` expert per task: the base's vision tower fine-tuned (Adam, a few
  full-batch steps) on a training split of the task's synthetic images through the task's
  zero-shot head, saved with ``save_pretrained``; every other expert is rewritten in FusionBench's
  layout (``vision_model.``-prefixed keys), so both layouts are exercised;
- each task's test split as parquet files in the hub dataset's layout (``image`` {bytes, path},
  ``label``), a few images per class (a colour per class plus noise), with the task's real class
  names and prompt templates.

The numbers it gives are those of tiny models on synthetic images: they test the pipeline, not the paper.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_dir
from ..merge.routing import VISION_PREFIX
from . import require
from .tasks import TA8, get_task

__all__ = ["StandIn", "build_standin", "byte_level_vocabulary", "STANDIN_IMAGE_SIZE"]

STANDIN_IMAGE_SIZE = 32
_FORMAT = "swudi_lab.standin/1"


@dataclass(frozen=True)
class StandIn:
    """Where a stand-in lives: the base model folder, one folder per expert, one dataset folder per task."""

    root: Path
    base: Path
    experts: dict
    data: dict


def _bytes_to_unicode() -> list[str]:
    """The GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def byte_level_vocabulary(merges=("p h", "ph o", "o f</w>", "t h", "th e</w>", "o n")) -> tuple[dict, list[str]]:
    """``(vocab, merges)`` of a tiny CLIP BPE tokenizer that can encode any text (every byte is a token)."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, list(merges)


def _save_tokenizer(folder: Path):
    transformers = require("transformers")
    vocab, merges = byte_level_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = transformers.CLIPTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def _base_model(tok, seed: int):
    transformers = require("transformers")
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=STANDIN_IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=16)
    return transformers.CLIPModel(config).eval()


def _expert(base, tok, task, images: list[bytes], labels: list[int], seed: int, steps: int = 30):
    """The base's vision tower fine-tuned on ``images`` through ``task``'s zero-shot head."""
    from PIL import Image

    from .data import preprocess
    from .heads import build_head, image_logits

    transformers = require("transformers")
    expert = transformers.CLIPVisionModel(base.config.vision_config)
    expert.load_state_dict(base.vision_model.state_dict())  # transformers 5: a CLIPVisionModel's keys carry no prefix
    head = build_head(base, tok, task)
    x = torch.stack([preprocess(Image.open(io.BytesIO(b)), STANDIN_IMAGE_SIZE) for b in images])
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(expert.parameters(), lr=3e-3)
    expert.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(image_logits(expert(pixel_values=x), head), y)
        loss.backward()
        opt.step()
    return expert.eval()


def _write_prefixed(folder: Path) -> None:
    """Rewrite a saved ``CLIPVisionModel`` folder with ``vision_model.``-prefixed keys (FusionBench's layout)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    prefixed = {k if k.startswith(VISION_PREFIX) else VISION_PREFIX + k: v for k, v in state.items()}
    save_file(prefixed, path, metadata={"format": "pt"})


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _images(task, images_per_class: int, rng: np.random.Generator) -> tuple[list[bytes], list[int]]:
    """PNG images of ``task``: a colour per class (different per task) plus noise, at sizes that exercise
    resize and crop; ``images_per_class`` per class."""
    labels = [c for c in range(task.num_classes) for _ in range(images_per_class)]
    shift = sum(map(ord, task.id))
    images = []
    for c in labels:
        h, w = (STANDIN_IMAGE_SIZE + 8, STANDIN_IMAGE_SIZE) if c % 2 else (STANDIN_IMAGE_SIZE, STANDIN_IMAGE_SIZE + 12)
        k = c + shift
        colour = np.array([(37 * k) % 256, (91 * k) % 256, (173 * k) % 256], dtype=np.float64)
        img = np.clip(colour + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
        images.append(_png(img))
    return images, labels


def _dataset(folder: Path, task, images: list[bytes], labels: list[int]) -> None:
    """The task's test split in the hub layout: ``<data_dir>/test-00000-of-00001.parquet``."""
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    (folder / task.data_dir).mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b in images],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array(labels, type=pa.int64()),
    })
    pq.write_table(table, folder / task.data_dir / f"{task.split}-00000-of-00001.parquet", row_group_size=256)


def _layout(root: Path, tasks) -> StandIn:
    return StandIn(root, root / "base", {t: root / "experts" / t for t in tasks}, {t: root / "data" / t for t in tasks})


def build_standin(root, *, tasks=TA8, images_per_class: int = 2, seed: int = 0) -> StandIn:
    """Build (or reuse) the offline stand-in under ``root``; returns where its parts are.

    A complete stand-in of the same settings is reused; otherwise it is built in a temporary
    directory and renamed into place, so an interrupted build leaves nothing behind.
    """
    root = Path(root)
    tasks = [get_task(t).id for t in tasks]
    settings = {"format": _FORMAT, "tasks": tasks, "images_per_class": images_per_class, "seed": seed}
    stamp = root / "standin.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return _layout(root, tasks)
    if root.exists():
        raise FileExistsError(f"{root} exists and is not a stand-in of these settings ({stamp} differs or is "
                              "missing); remove it or choose another folder")
    require("transformers").utils.logging.disable_progress_bar()  # save_pretrained's shard bars
    with atomic_dir(root) as tmp:
        (tmp / "base").mkdir()
        tok = _save_tokenizer(tmp / "base")
        base = _base_model(tok, seed)
        base.save_pretrained(tmp / "base")
        rng = np.random.default_rng(seed)
        for i, t in enumerate(tasks):
            spec = get_task(t)
            train = _images(spec, images_per_class, rng)
            folder = tmp / "experts" / t
            _expert(base, tok, spec, *train, seed=seed + i).save_pretrained(folder)
            if i % 2:
                _write_prefixed(folder)
            _dataset(tmp / "data" / t, spec, *_images(spec, images_per_class, rng))
        (tmp / "standin.json").write_text(json.dumps(settings))
    return _layout(root, tasks)
