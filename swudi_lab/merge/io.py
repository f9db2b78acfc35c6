"""Safe checkpoint I/O: lazy per-tensor reading, atomic streaming writing.

Reading never executes pickled code: ``.safetensors`` files are opened with ``safe_open``
(memory-mapped, one tensor read at a time); ``.pt`` / ``.pth`` / ``.bin`` files go through
``torch.load(weights_only=True)`` only. A checkpoint source is any of

- a state dict (``{name: tensor}``) or an ``nn.Module`` (timm models included; its
  ``state_dict()`` is used),
- a path to a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file,
- a Hugging Face model directory (:class:`HFDirectoryCheckpoint`): ``config.json`` with
  ``model.safetensors``, or with shards ``model-0000k-of-0000n.safetensors`` and their
  ``model.safetensors.index.json``; a pickled ``pytorch_model.bin`` only when there is no
  safetensors file, read weights-only. Tensors are read one at a time across the shards;
- a hub id ``"owner/name"`` (a string that is no existing path and has that form, e.g.
  ``"openai/clip-vit-base-patch32"``): fetched with ``huggingface_hub.snapshot_download``
  (``*.safetensors`` and ``*.json`` only; ``pytorch_model.bin`` only when the repository has no
  safetensors), into the cache the ``HF_HOME`` / ``HF_HUB_CACHE`` variables name, then read as a
  directory. Offline (``HF_HUB_OFFLINE=1``, no network) and not cached: a ``FileNotFoundError``
  naming the id, within seconds. Needs the ``[hub]`` extra (``huggingface_hub``);
- ``"timm:NAME@PATH"``: the timm model ``NAME`` built offline and loaded from the local weights
  file ``PATH`` (so its keys are timm's), or ``"timm:NAME"`` / ``"hf:REPO/FILE"`` to download
  from a model hub (optional; for Colab, never used by the tests).

Every source is wrapped in a :class:`Checkpoint` that lists keys, shapes and dtypes without
reading tensor data, and returns one tensor at a time with :meth:`Checkpoint.get`. Torch files
are memory-mapped when their format allows (``torch.load(weights_only=True, mmap=True)``), so they are paged in
tensor by tensor; safetensors is the format for truly streaming merges.

Writing (:class:`SafetensorsWriter`, :func:`save_safetensors`) goes to a temporary file in the
target directory that is renamed over the target only when everything has been written, so a
failure never leaves a partial output behind. The byte layout depends only on the tensors and
the metadata (keys sorted, no timestamps): the same inputs give bitwise-identical files.
:class:`ShardedSafetensorsWriter` streams into a model directory as transformers lays it out
(``model.safetensors``, or shards above ``max_shard_size`` plus the index); the engine builds
that directory under a temporary name and renames it when complete
(:func:`swudi_lab.files.atomic_dir`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..files import AtomicFile

__all__ = [
    "Checkpoint",
    "DictCheckpoint",
    "SafetensorsCheckpoint",
    "HFDirectoryCheckpoint",
    "open_checkpoint",
    "read_json",
    "is_hub_id",
    "fetch_hub_model",
    "load_state_dict",
    "load_timm",
    "SafetensorsWriter",
    "save_safetensors",
    "ShardedSafetensorsWriter",
    "parse_size",
    "plan_shards",
    "DEFAULT_MAX_SHARD_SIZE",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
DEFAULT_MAX_SHARD_SIZE = "50GB"
"""``max_shard_size`` default of transformers 5's ``PreTrainedModel.save_pretrained``."""

# safetensors dtype codes <-> torch dtypes
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _code, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_code] = getattr(torch, _attr)
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}


class Checkpoint:
    """A read-only, lazily read set of named tensors with a ``label`` used in error messages."""

    label: str

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` without reading its data."""
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        """dtype of ``key`` without reading its data."""
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` on the CPU. Never a view the caller could write back into the source."""
        raise NotImplementedError

    def files(self) -> list[Path]:
        """The files (and directories) this checkpoint reads from; an output must be none of them."""
        return []

    def __contains__(self, key: str) -> bool:
        return key in set(self.keys())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r}, {len(self.keys())} tensors)"


class DictCheckpoint(Checkpoint):
    """A state dict (or a module's) held in memory. Tensors are detached, never modified."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], label: str = "state dict"):
        self.label = label
        self._sd = {}
        for k, v in state_dict.items():
            if not isinstance(k, str):
                raise ValueError(f"{label}: key {k!r} is not a string")
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"{label}: entry {k!r} is a {type(v).__name__}, not a tensor")
            self._sd[k] = v.detach()
        self._keys = sorted(self._sd)

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._sd[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._sd[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key].cpu()


class SafetensorsCheckpoint(Checkpoint):
    """A ``.safetensors`` file read one tensor at a time (no pickle).

    The header is parsed (and validated by ``safetensors.safe_open``) once; each :meth:`get` then
    reads that tensor's bytes with a plain positioned read. A memory-mapped read would leave every
    page it touched in the process's resident set: merging nine 334 MB ViT-B/32 files that way showed
    3.5 GB peak RSS, the sum of the files, instead of about one layer's stack.
    """

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        self.label = str(path)
        try:
            self._f = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = sorted(self._f.keys())
            self._meta = {}
            for k in self._keys:
                sl = self._f.get_slice(k)
                code = sl.get_dtype()
                if code not in _ST_DTYPES:
                    raise ValueError(f"tensor {k!r} has unsupported dtype {code}")
                self._meta[k] = (tuple(sl.get_shape()), _ST_DTYPES[code])
        except (OSError, ValueError, RuntimeError) as e:  # safetensors raises SafetensorError (an OSError/Exception)
            raise ValueError(f"cannot read safetensors file {self.label}: {e}") from None
        except Exception as e:  # SafetensorError is not a subclass of the above in every version
            raise ValueError(f"cannot read safetensors file {self.label}: {e}") from None
        with open(self.path, "rb") as fh:  # safe_open validated it: 8-byte length, JSON header, data
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        self._offsets = {k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
                         for k, v in header.items() if k != "__metadata__"}

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        shape, dtype = self._meta[key]
        start, size = self._offsets[key]
        with open(self.path, "rb") as fh:
            buf = bytearray(os.pread(fh.fileno(), size, start))
        if len(buf) != size:
            raise ValueError(f"cannot read tensor {key!r} from {self.label}: the file is truncated "
                             f"({len(buf)} of {size} bytes)")
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def files(self) -> list[Path]:
        return [self.path]

    def metadata(self) -> dict[str, str]:
        """The file's ``__metadata__`` (empty when it has none)."""
        return dict(self._f.metadata() or {})


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """The parsed JSON of ``path``; ``ValueError`` naming ``what`` and the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from None


class HFDirectoryCheckpoint(Checkpoint):
    """A Hugging Face model directory, read one tensor at a time across its shards.

    ``config.json`` must be there (:attr:`config` parses it). Weights, in transformers' order of
    preference: ``model.safetensors``, the shards named by ``model.safetensors.index.json`` (every
    file it names must exist and hold the keys the index gives it, and every tensor of a shard must
    be in the index), or ``pytorch_model.bin`` (weights-only ``torch.load``; a sharded one is refused).
    Everything is checked when the directory is opened, before any tensor is read.
    ``label`` names it in errors (default: the path; the hub id for a fetched repository).
    """

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(path)
        self.config_path = self.path / CONFIG_NAME
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.label}: no {CONFIG_NAME} in model directory {self.path}")
        index = self.path / SAFE_WEIGHTS_INDEX_NAME
        single = self.path / SAFE_WEIGHTS_NAME
        self._files: list[Path] = [self.path, self.config_path]
        self._where: dict[str, Checkpoint] = {}
        if single.is_file():  # transformers' order: model.safetensors before the index
            self.index_path = None
            ck = SafetensorsCheckpoint(single)
            self._where = {k: ck for k in ck.keys()}
            self._files.append(single)
        elif index.is_file():
            self.index_path = index
            self._open_index(index)
        elif (self.path / TORCH_WEIGHTS_NAME).is_file():
            self.index_path = None
            pt = self.path / TORCH_WEIGHTS_NAME
            ck = DictCheckpoint(load_state_dict(pt), str(pt))
            self._where = {k: ck for k in ck.keys()}
            self._files.append(pt)
        elif (self.path / (TORCH_WEIGHTS_NAME + ".index.json")).is_file():
            raise ValueError(f"{self.label}: model directory {self.path} holds a sharded {TORCH_WEIGHTS_NAME}; "
                             "only safetensors shards are read (convert it, e.g. with save_pretrained)")
        else:
            raise FileNotFoundError(
                f"{self.label}: model directory {self.path} has no {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} "
                f"or {TORCH_WEIGHTS_NAME}"
            )
        self._keys = sorted(self._where)

    def _open_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map is not a {tensor: file} object")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read shard index {index}: {type(e).__name__}: {e}") from None
        shards: dict[str, SafetensorsCheckpoint] = {}
        for name in sorted(set(weight_map.values())):
            shard = self.path / name
            if Path(name).name != name:
                raise ValueError(f"shard index {index} names {name!r}, not a file in {self.path}")
            if not shard.is_file():
                raise FileNotFoundError(f"shard {shard} named by {index} not found")
            shards[name] = SafetensorsCheckpoint(shard)
            self._files.append(shard)
        for key, name in weight_map.items():
            if key not in shards[name]._meta:
                raise ValueError(f"shard index {index} puts tensor {key!r} in {name}, which does not hold it")
            self._where[key] = shards[name]
        for name, shard in shards.items():
            unlisted = [k for k in shard.keys() if weight_map.get(k) != name]
            if unlisted:
                raise ValueError(f"shard index {index} does not list tensor(s) {unlisted[:5]} of {name}"
                                 + (f" ({len(unlisted)} in all)" if len(unlisted) > 5 else ""))
        self._files.append(index)

    @property
    def config(self) -> dict:
        """The parsed ``config.json`` (read on first use; ``ValueError`` when it is no valid JSON)."""
        if not hasattr(self, "_config"):
            self._config = read_json(self.config_path, "config")
        return self._config

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._where[key].dtype(key)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get(key)

    def files(self) -> list[Path]:
        return list(self._files)


def _unwrap_torch_checkpoint(obj, label: str) -> dict:
    """Accept ``{name: tensor}`` or one level of ``{"state_dict" | "model" | "module": {...}}``."""
    if isinstance(obj, Mapping) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model", "module", "model_state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ValueError(
            f"{label}: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor "
            "(expected a flat state dict, or one nested under 'state_dict' / 'model')"
        )
    if not isinstance(obj, Mapping):
        raise ValueError(f"{label}: expected a state dict, found a {type(obj).__name__}")
    return dict(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a whole checkpoint file into a state dict (safetensors, or weights-only torch.load).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable one, an unknown suffix, or a pickle that is not weights-only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        ck = SafetensorsCheckpoint(path)
        return {k: ck.get(k) for k in ck.keys()}
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: unknown checkpoint suffix {suffix!r}; use .safetensors or one of {TORCH_SUFFIXES}")
    try:
        try:  # memory-mapped where the file format allows it: tensors are paged in when used
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} is not a weights-only checkpoint; refusing to unpickle arbitrary objects "
            f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]})"
        ) from None
    except Exception as e:  # zip/EOF/runtime errors: truncated or not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    return _unwrap_torch_checkpoint(obj, str(path))


def load_timm(name: str, weights: str | os.PathLike | None = None, *, pretrained_from_hub: bool = False,
              **kwargs) -> torch.nn.Module:
    """Build timm model ``name`` and load ``weights`` (a local file read safely) into it.

    ``weights=None`` with ``pretrained_from_hub=True`` downloads timm's pretrained weights
    (network; optional, for Colab). ``kwargs`` go to ``timm.create_model``; ``num_classes``
    defaults to the class count of the file's classifier (``head.weight`` etc.), if it has one.
    """
    import swudi_lab.torchvision_compat  # noqa: F401  (torchvision shim before timm)
    import timm

    if weights is None:
        if not pretrained_from_hub:
            raise ValueError(f"timm:{name}: give a local weights file (timm:{name}@PATH) or allow the hub download")
        return timm.create_model(name, pretrained=True, **kwargs)
    sd = load_state_dict(weights)
    for head in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if head in sd and sd[head].ndim == 2:  # build the classifier the file has
            kwargs.setdefault("num_classes", sd[head].shape[0])
            break
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # unknown model, size mismatch
        raise ValueError(f"{weights} does not fit timm model {name!r}: {str(e).strip().splitlines()[-1]}") from None
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit timm model {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def _hf_download(spec: str) -> Path:  # pragma: no cover - network, never used by the tests
    from huggingface_hub import hf_hub_download

    repo, _, filename = spec.rpartition("/")
    if not repo:
        raise ValueError(f"hf:{spec}: expected hf:OWNER/REPO/FILE")
    return Path(hf_hub_download(repo_id=repo, filename=filename))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(source) -> bool:
    """``True`` for a string of the form ``owner/name`` that is no existing path and no checkpoint file name."""
    if not isinstance(source, str) or not _HUB_ID.fullmatch(source) or ".." in source:
        return False
    return not Path(source).exists() and not source.lower().endswith(CHECKPOINT_SUFFIXES)


def fetch_hub_model(repo_id: str) -> Path:
    """The local snapshot directory of hub repository ``repo_id`` (downloaded into the HF cache if needed).

    Only ``*.safetensors`` and ``*.json`` files are fetched; ``pytorch_model.bin`` only when the
    repository has no safetensors file. Through :func:`swudi_lab.merge.fetch.resolve_source`: offline
    or unreachable, the HF cache is used, else a ``FileNotFoundError`` naming ``repo_id`` comes
    within seconds.
    """
    from .fetch import HubUnavailableError, resolve_source

    def get(patterns):
        try:
            return resolve_source(repo_id, repo_type="model", allow_patterns=patterns, what=f"hub model {repo_id!r}")
        except HubUnavailableError as e:
            raise FileNotFoundError(
                f"hub model {repo_id!r} could not be fetched and is no local path ({e}); offline it must already "
                "be in the HF cache (HF_HOME / HF_HUB_CACHE), or give a local model directory") from None

    snap = get(["*.safetensors", "*.json"])
    if not any(snap.glob("*.safetensors")):
        snap = get([TORCH_WEIGHTS_NAME, "*.json"])
    return snap


def open_checkpoint(source, label: str | None = None) -> Checkpoint:
    """Wrap a state dict, module, file path, model directory, hub id or ``timm:`` / ``hf:`` spec as a :class:`Checkpoint`.

    ``label`` names the source in error messages (default: the path, or ``"state dict"``).
    """
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, torch.nn.Module):
        return DictCheckpoint(source.state_dict(), label or type(source).__name__)
    if isinstance(source, Mapping):
        return DictCheckpoint(source, label or "state dict")
    if isinstance(source, (str, os.PathLike)):
        spec = str(source)
        if spec.startswith("timm:"):
            name, _, weights = spec[5:].partition("@")
            model = load_timm(name, weights or None, pretrained_from_hub=not weights)
            return DictCheckpoint(model.state_dict(), label or spec)
        if spec.startswith("hf:"):  # pragma: no cover - network
            source = _hf_download(spec[3:])
        elif isinstance(source, str) and is_hub_id(source):
            return HFDirectoryCheckpoint(fetch_hub_model(source), label or source)
        path = Path(source)
        if path.is_dir():
            return HFDirectoryCheckpoint(path, label)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}" + (f" ({label})" if label else ""))
        if not os.access(path, os.R_OK):
            raise ValueError(f"checkpoint file is not readable: {path}")
        if path.suffix.lower() == ".safetensors":
            return SafetensorsCheckpoint(path)
        return DictCheckpoint(load_state_dict(path), label or str(path))
    raise ValueError(
        f"cannot use a {type(source).__name__} as a checkpoint: give a state dict, an nn.Module, "
        "a .safetensors/.pt/.pth/.bin path, a Hugging Face model directory or hub id 'owner/name', "
        "or 'timm:NAME@PATH'"
    )


# ----------------------------------------------------------------------------- writing


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


class SafetensorsWriter:
    """Stream tensors into a ``.safetensors`` file whose layout is declared up front.

    The header needs every name, dtype and shape before the data, which a merge knows from the
    base checkpoint. Tensors must then be written in ``sorted(layout)`` order. The file is
    built as a temporary next to ``path`` and renamed onto ``path`` by :meth:`close`; use as a
    context manager so that an exception removes the temporary and leaves ``path`` untouched::

        with SafetensorsWriter(path, {name: (shape, dtype)}, metadata) as w:
            for name in w.order:
                w.write(name, tensor)
    """

    def __init__(self, path: str | os.PathLike, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.order = sorted(layout)
        self._layout = {k: (tuple(int(s) for s in shape), dtype) for k, (shape, dtype) in layout.items()}
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
        for k in self.order:
            shape, dtype = self._layout[k]
            if dtype not in _ST_CODES:
                raise ValueError(f"tensor {k!r}: dtype {dtype} cannot be stored in safetensors")
            n = dtype.itemsize
            for s in shape:
                n *= s
            header[k] = {"dtype": _ST_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._next = 0
        self._file = AtomicFile(self.path)
        self._fh = open(self._file.tmp, "wb")
        self._fh.write(struct.pack("<Q", len(blob)) + blob)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; ``key`` must be ``order[i]`` with the declared shape and dtype."""
        if self._next >= len(self.order) or self.order[self._next] != key:
            expected = self.order[self._next] if self._next < len(self.order) else "<nothing>"
            raise ValueError(f"SafetensorsWriter: got {key!r}, expected {expected!r} next")
        shape, dtype = self._layout[key]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"tensor {key!r}: declared {shape} {dtype}, got {tuple(tensor.shape)} {tensor.dtype}"
            )
        self._fh.write(_tensor_bytes(tensor))
        self._next += 1

    def close(self) -> None:
        """Check completeness, flush, fsync and rename onto ``path``."""
        if self._next != len(self.order):
            self.abort()
            raise ValueError(f"SafetensorsWriter: only {self._next} of {len(self.order)} tensors written to {self.path}")
        self._fh.close()
        self._file.commit()

    def abort(self) -> None:
        """Remove the temporary file; ``path`` is left as it was."""
        if not self._fh.closed:
            self._fh.close()
        self._file.abort()

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically write a state dict to ``path`` (sorted keys, deterministic bytes)."""
    layout = {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()}
    with SafetensorsWriter(path, layout, metadata) as w:
        for k in w.order:
            w.write(k, state_dict[k])
    return Path(path)


# ----------------------------------------------------------------------------- model directories


def parse_size(size: int | str) -> int:
    """Bytes from ``max_shard_size`` as transformers reads it: an int, ``"1000"``, ``"5GB"`` (10^9),
    ``"500MB"``, ``"10KB"``, ``"2GiB"`` (2^30), ``"5MiB"``, ``"1KiB"`` (``"5Gb"``: bits)."""
    text = str(size).strip()
    m = re.fullmatch(r"(\d+)\s*([KMG]i?[Bb])?", text, flags=re.IGNORECASE)
    if isinstance(size, bool) or m is None:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size such as '5GB', '500MB', '2GiB'")
    n, unit = int(m.group(1)), m.group(2)
    if unit is not None:
        power = {"K": 1, "M": 2, "G": 3}[unit[0].upper()]
        if unit[1].lower() == "i":
            n *= 2 ** (10 * power)
        else:
            n *= 10 ** (3 * power)
            if unit.endswith("b"):
                n //= 8
    if n <= 0:
        raise ValueError(f"max_shard_size {size!r} must be positive")
    return n


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= int(s)
    return n


def plan_shards(layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> dict[str, list[str]]:
    """``{file name: [keys]}``: the sorted keys cut into consecutive shards of at most ``max_shard_size``
    bytes (a tensor larger than that gets a shard of its own), named as transformers names them:
    ``model.safetensors`` for one shard, else ``model-00001-of-0000n.safetensors`` ...
    """
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = []
    size = 0
    for k in sorted(layout):
        n = _nbytes(*layout[k])
        if not shards or size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    if len(shards) <= 1:
        return {SAFE_WEIGHTS_NAME: shards[0] if shards else []}
    return {f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors": keys for i, keys in enumerate(shards)}


class ShardedSafetensorsWriter:
    """Stream tensors into ``directory`` as transformers lays out a model's weights.

    One ``model.safetensors``, or shards ``model-0000k-of-0000n.safetensors`` of at most
    ``max_shard_size`` bytes (:func:`plan_shards`) plus ``model.safetensors.index.json``
    (``{"metadata": {"total_size": bytes}, "weight_map": {key: file}}``). Every shard carries
    ``metadata``. Tensors are written in ``order`` (sorted); each shard is renamed into place when
    full and the index is written by :meth:`close`, so build ``directory`` as a temporary one
    (:func:`swudi_lab.files.atomic_dir`) to make the whole directory appear at once.
    """

    def __init__(self, directory: str | os.PathLike, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE):
        self.directory = Path(directory)
        self.order = sorted(layout)
        self._layout = dict(layout)
        self._metadata = dict(metadata or {})
        self.shards = plan_shards(layout, max_shard_size)
        self.weight_map = {k: name for name, keys in self.shards.items() for k in keys}
        self.total_size = sum(_nbytes(*layout[k]) for k in self.order)
        self._pending = list(self.shards.items())
        self._writer: SafetensorsWriter | None = None
        self._left = 0
        self.files: list[Path] = []

    def _open_next(self) -> None:
        name, keys = self._pending.pop(0)
        self._writer = SafetensorsWriter(self.directory / name, {k: self._layout[k] for k in keys}, self._metadata)
        self._left = len(keys)
        self.files.append(self.directory / name)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the next tensor (``order``), opening and closing shards as they fill."""
        if self._writer is None:
            if not self._pending:
                raise ValueError(f"ShardedSafetensorsWriter: got {key!r}, every tensor is written already")
            self._open_next()
        self._writer.write(key, tensor)
        self._left -= 1
        if self._left == 0:
            self._writer.close()
            self._writer = None

    def close(self) -> Path | None:
        """Check completeness and write the index (when sharded); returns the index path or ``None``."""
        while self._writer is None and self._pending and not self._pending[0][1]:  # no tensors at all
            self._open_next()
            self._writer.close()
            self._writer = None
        if self._writer is not None or self._pending:
            self.abort()
            raise ValueError(f"ShardedSafetensorsWriter: not every tensor was written to {self.directory}")
        if len(self.shards) == 1:
            return None
        index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
        path = self.directory / SAFE_WEIGHTS_INDEX_NAME
        with AtomicFile(path) as f:
            f.tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.files.append(path)
        return path

    def abort(self) -> None:
        """Remove the shard being written (finished shards stay: the directory is a temporary one)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
