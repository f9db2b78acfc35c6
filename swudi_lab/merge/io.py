"""Safe checkpoint I/O: lazy per-tensor reading, atomic streaming writing.

Reading never executes pickled code: ``.safetensors`` files are opened with ``safe_open``
(memory-mapped, one tensor read at a time); ``.pt`` / ``.pth`` / ``.bin`` files go through
``torch.load(weights_only=True)`` only. A checkpoint source is any of

- a state dict (``{name: tensor}``) or an ``nn.Module`` (timm models included; its
  ``state_dict()`` is used),
- a path to a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file,
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
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Mapping

import torch

from ..files import AtomicFile

__all__ = [
    "Checkpoint",
    "DictCheckpoint",
    "SafetensorsCheckpoint",
    "open_checkpoint",
    "load_state_dict",
    "load_timm",
    "SafetensorsWriter",
    "save_safetensors",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

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
    """A ``.safetensors`` file read one tensor at a time (memory-mapped, no pickle)."""

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

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._f.get_tensor(key)
        except Exception as e:
            raise ValueError(f"cannot read tensor {key!r} from {self.label}: {e}") from None


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


def open_checkpoint(source, label: str | None = None) -> Checkpoint:
    """Wrap a state dict, module, file path or ``timm:`` / ``hf:`` spec as a :class:`Checkpoint`.

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
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}" + (f" ({label})" if label else ""))
        if not os.access(path, os.R_OK):
            raise ValueError(f"checkpoint file is not readable: {path}")
        if path.suffix.lower() == ".safetensors":
            return SafetensorsCheckpoint(path)
        return DictCheckpoint(load_state_dict(path), label or str(path))
    raise ValueError(
        f"cannot use a {type(source).__name__} as a checkpoint: give a state dict, an nn.Module, "
        "a .safetensors/.pt/.pth/.bin path, or 'timm:NAME@PATH'"
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
