"""PEFT LoRA adapters as experts: ``W_i = W0 + tau_i`` with ``tau_i = s_i B_i A_i`` (docs/design.md).

A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or a pickled
``adapter_model.bin``, read only through ``torch.load(weights_only=True)``). For every targeted
module ``<path>`` the weights file has ``base_model.model.<path>.lora_A.weight`` (r x d_in) and
``base_model.model.<path>.lora_B.weight`` (d_out x r); the expert's weight ``<path>.weight`` of the
base is then ``W0 + s B A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``; r and alpha per module from ``rank_pattern`` / ``alpha_pattern``, matched as PEFT
matches them), transposed with ``fan_in_fan_out`` (GPT-2's Conv1D stores W as d_in x d_out). Full
tensors in the file (``modules_to_save``, biases trained with ``bias="all"`` / ``"lora_only"``) replace
the base's. Every other tensor of the expert is the base's (``tau_i = 0``: a layer no adapter
targets merges as the base's).

:class:`LoraAdapter` is a :class:`~swudi_lab.merge.io.Checkpoint` over the base's keys, shapes and
dtypes, so the engine's routing, key matching and writers take it as they are; the engine asks it
for the factors (:meth:`LoraAdapter.factors`) to hand the spectral methods a
:class:`~swudi_lab.spectral.LowRankTasks` (no ``tau_i`` formed for the solve), and for the dense
``tau_i`` (:meth:`LoraAdapter.delta`) everywhere else.

Everything is checked when the adapter is opened, against the config and the base, before any
tensor data is read: ``peft_type`` LORA; no unsupported option (DoRA ``use_dora``, ``lora_bias``,
``layer_replication``, ``trainable_token_indices``, ``target_parameters``, embedding or conv LoRA);
every module's ``lora_A`` / ``lora_B`` pair complete, 2-D, with the rank the config gives it and
the shape of the base's weight; every module with tensors targeted by ``target_modules``, every
target with tensors. Errors are ``ValueError`` naming the file, the key, the shape and the value.
Inputs are never modified.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from ..spectral import LowRankTasks
from .io import Checkpoint, DictCheckpoint, SafetensorsCheckpoint, load_state_dict, read_json
from .routing import vision_prefix

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LoraAdapter", "is_adapter_dir", "open_expert", "lowrank_tasks"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"

# options whose adapters this reader cannot express as W0 + s B A: (key, is it set?, why)
_REFUSED = [
    ("use_dora", lambda v: bool(v), "DoRA rescales each column of W0 + s B A by a learned magnitude"),
    ("lora_bias", lambda v: bool(v), "lora_B carries a bias"),
    ("layer_replication", lambda v: bool(v), "layers are replicated, so keys do not map onto the base"),
    ("trainable_token_indices", lambda v: v is not None, "trainable tokens are sparse embedding updates"),
    ("target_parameters", lambda v: bool(v), "LoRA on nn.Parameter targets (MoE experts)"),
    ("use_qalora", lambda v: bool(v), "QA-LoRA pools the input"),
]


def is_adapter_dir(source) -> bool:
    """``True`` for a path to a directory holding ``adapter_config.json`` (a PEFT adapter)."""
    return isinstance(source, (str, os.PathLike)) and (Path(source) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    for p, v in patterns.items():
        if re.match(rf"(.*\.)?({p})$", module):
            return v
    return default


def _targeted(targets, module: str) -> bool:
    """PEFT's ``check_target_module_exists`` for a list (exact name or ``.name`` suffix) or a regex (fullmatch)."""
    if targets is None:
        return True
    if isinstance(targets, str):
        return targets == ALL_LINEAR or re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


class LoraAdapter(Checkpoint):
    """One PEFT LoRA adapter directory read as an expert on ``base`` (see the module docstring).

    Keys, shapes and dtypes are the base's. :meth:`factors` gives ``(B, A, s)`` for a targeted
    weight (in the base's orientation: ``tau = s B A`` has the base weight's shape), :meth:`delta`
    the dense ``tau`` of any key, :meth:`get` the expert's tensor ``W0 + tau`` in the base's dtype.
    """

    def __init__(self, path: str | os.PathLike, base: Checkpoint, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(path)
        self.base = base
        self.config_path = self.path / ADAPTER_CONFIG
        cfg = read_json(self.config_path, "adapter config")
        if not isinstance(cfg, dict):
            raise ValueError(f"adapter config {self.config_path} is no JSON object")
        self.config = cfg
        where = self.config_path
        peft_type = cfg.get("peft_type")
        if str(peft_type).upper() != "LORA":
            raise ValueError(f"{where}: peft_type is {peft_type!r}; only LoRA adapters (peft_type 'LORA') are read")
        for key, is_set, why in _REFUSED:
            if is_set(cfg.get(key)):
                raise ValueError(f"{where}: {key} = {cfg.get(key)!r} is not supported ({why}); only plain LoRA "
                                 "(W0 + s B A) adapters are read")
        r, alpha = cfg.get("r"), cfg.get("lora_alpha", cfg.get("r"))
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"{where}: r = {r!r}, expected a positive integer")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"{where}: lora_alpha = {alpha!r}, expected a finite number")
        self.r, self.alpha = r, float(alpha)
        self.rslora = bool(cfg.get("use_rslora", False))
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self.rank_pattern = dict(cfg.get("rank_pattern") or {})
        self.alpha_pattern = dict(cfg.get("alpha_pattern") or {})
        self.targets = cfg.get("target_modules")
        if self.targets is not None and not isinstance(self.targets, str):
            self.targets = [str(t) for t in self.targets]
        self.modules_to_save = [str(m) for m in (cfg.get("modules_to_save") or [])]
        self.bias = cfg.get("bias", "none")
        self.base_model = cfg.get("base_model_name_or_path")
        self.weights = self._open_weights()
        self._pairs: dict[str, dict] = {}  # base key -> {"A": adapter key, "B": adapter key, "s": scale}
        self._full: dict[str, str] = {}  # base key -> adapter key of a full tensor
        self._map()

    # ------------------------------------------------------------------ opening

    def _open_weights(self) -> Checkpoint:
        st, pt = self.path / ADAPTER_WEIGHTS, self.path / ADAPTER_PICKLE
        if st.is_file():
            return SafetensorsCheckpoint(st)
        if pt.is_file():  # weights-only: never executes pickled code
            return DictCheckpoint(load_state_dict(pt), str(pt))
        raise FileNotFoundError(f"{self.label}: adapter directory {self.path} has no {ADAPTER_WEIGHTS} "
                                f"(or {ADAPTER_PICKLE})")

    def _to_base(self, name: str) -> str:
        """An adapter module / tensor name in the base's layout (the ``vision_model.`` prefix added or dropped,
        as the engine maps a full expert's keys, :func:`~swudi_lab.merge.routing.match_keys`)."""
        ap, bp = self._prefixes
        if ap == bp:
            return name
        if bp:
            return bp + name
        return name[len(ap):] if name.startswith(ap) else name

    def _to_adapter(self, key: str) -> str | None:
        """A base key in the adapter's layout, ``None`` outside the tower the adapter was trained on."""
        ap, bp = self._prefixes
        if ap == bp:
            return key
        if bp:
            return key[len(bp):] if key.startswith(bp) else None
        return ap + key

    def _map(self) -> None:
        wf, base = self.weights.label, self.base
        base_keys = set(base.keys())
        halves: dict[str, dict[str, str]] = {}
        names = [k[len(PREFIX):] for k in self.weights.keys() if k.startswith(PREFIX)]
        self._prefixes = (vision_prefix(names), vision_prefix(sorted(base_keys)))
        for key in self.weights.keys():
            if not key.startswith(PREFIX):
                raise ValueError(f"{wf}: key {key!r} does not start with {PREFIX!r}; not a PEFT LoRA adapter file")
            rest = key[len(PREFIX):]
            m = re.fullmatch(r"(.+)\.(lora_[A-Za-z_]+)\.weight", rest) or re.fullmatch(r"(.+)\.(lora_\w+)", rest)
            if m:
                module, part = m.group(1), m.group(2)
                if part not in ("lora_A", "lora_B"):
                    what = {"lora_embedding_A": "embedding LoRA", "lora_embedding_B": "embedding LoRA",
                            "lora_magnitude_vector": "DoRA"}.get(part, "this LoRA variant")
                    raise ValueError(f"{wf}: key {key!r} ({part}): {what} is not supported; only lora_A / lora_B "
                                     "weight pairs of linear layers are read")
                halves.setdefault(module, {})[part] = key
                continue
            module = rest.rpartition(".")[0]
            rest = self._to_base(rest)
            if rest not in base_keys:  # a full tensor (modules_to_save, a bias)
                raise ValueError(f"{wf}: key {key!r} {self.weights.shape(key)} maps onto {rest!r}, which the base "
                                 f"({base.label}) does not have")
            saved = any(module == mm or module.endswith("." + mm) for mm in self.modules_to_save)
            biased = rest.endswith(".bias") and self.bias in ("all", "lora_only")
            if not (saved or biased):
                raise ValueError(f"{wf}: key {key!r} is a full tensor of module {module!r}, which the config "
                                 f"({self.config_path}) neither lists in modules_to_save {self.modules_to_save} nor "
                                 f"trains as a bias (bias = {self.bias!r})")
            if self.weights.shape(key) != base.shape(rest):
                raise ValueError(f"{wf}: key {key!r} has shape {self.weights.shape(key)} but the base's {rest!r} "
                                 f"has {base.shape(rest)}")
            self._full[rest] = key
        for module, parts in sorted(halves.items()):
            for need in ("lora_A", "lora_B"):
                if need not in parts:
                    have = next(iter(parts.values()))
                    raise ValueError(f"{wf}: module {module!r} has {have!r} but no {PREFIX}{module}.{need}.weight: "
                                     "the lora_A / lora_B pair is incomplete")
            self._pair(module, parts["lora_A"], parts["lora_B"])
        self._check_targets(base)

    def _pair(self, module: str, ka: str, kb: str) -> None:
        wf, cfg = self.weights.label, self.config_path
        sa, sb = self.weights.shape(ka), self.weights.shape(kb)
        if len(sa) != 2 or len(sb) != 2:
            raise ValueError(f"{wf}: {ka!r} {sa} / {kb!r} {sb}: only 2-D (linear) LoRA factors are read "
                             "(conv LoRA is not supported)")
        if not _targeted(self.targets, module):
            raise ValueError(f"{wf}: module {module!r} has LoRA tensors ({ka!r}) but is not targeted by "
                             f"target_modules = {self.targets!r} of {cfg}")
        r = _pattern_value(self.rank_pattern, module, self.r)
        if sa[0] != sb[1]:
            raise ValueError(f"{wf}: {ka!r} has shape {sa} (rank {sa[0]}) but {kb!r} has {sb} (rank {sb[1]})")
        if sa[0] != r:
            src = "rank_pattern" if _pattern_value(self.rank_pattern, module, None) is not None else "r"
            raise ValueError(f"{wf}: {ka!r} has shape {sa}, rank {sa[0]}, but {cfg} gives module {module!r} "
                             f"rank {r} (its {src})")
        key = self._to_base(module + ".weight")
        if key not in self.base.keys():
            raise ValueError(f"{wf}: {ka!r} targets {key!r}, which the base ({self.base.label}) does not have")
        d_out, d_in = sb[0], sa[1]
        want = (d_in, d_out) if self.fan_in_fan_out else (d_out, d_in)
        if self.base.shape(key) != want:
            raise ValueError(f"{wf}: {kb!r} {sb} x {ka!r} {sa} gives a {want} update"
                             f"{' (fan_in_fan_out)' if self.fan_in_fan_out else ''}, but the base's {key!r} has "
                             f"shape {self.base.shape(key)}")
        if not self.base.dtype(key).is_floating_point:
            raise ValueError(f"{wf}: {ka!r} targets {key!r}, a {self.base.dtype(key)} tensor of the base")
        alpha = float(_pattern_value(self.alpha_pattern, module, self.alpha))
        s = alpha / (math.sqrt(r) if self.rslora else r)
        if key in self._pairs:
            raise ValueError(f"{wf}: module {module!r} has two lora_A / lora_B pairs")
        self._pairs[key] = {"A": ka, "B": kb, "s": s, "r": r}

    def _check_targets(self, base: Checkpoint) -> None:
        """Every listed target has tensors; with no layer selection, every base linear it targets has them."""
        if not isinstance(self.targets, list):
            if isinstance(self.targets, str) and self.targets != ALL_LINEAR and not self._pairs:
                raise ValueError(f"{self.weights.label}: no LoRA tensors, but {self.config_path} targets "
                                 f"{self.targets!r}")
            return
        modules = [self._to_adapter(k)[: -len(".weight")] for k in self._pairs]
        for t in self.targets:
            if not any(_targeted([t], m) for m in modules):
                raise ValueError(f"{self.weights.label}: target module {t!r} of {self.config_path} has no "
                                 f"lora_A / lora_B tensors")
        if self.config.get("layers_to_transform") is None and not self.config.get("exclude_modules"):
            for k in base.keys():
                ak = self._to_adapter(k)
                if ak is None or not k.endswith(".weight") or len(base.shape(k)) != 2:
                    continue
                module = ak[: -len(".weight")]
                if _targeted(self.targets, module) and k not in self._pairs and k not in self._full \
                        and not any(module == mm or module.endswith("." + mm) for mm in self.modules_to_save):
                    raise ValueError(f"{self.weights.label}: the base's {k!r} {base.shape(k)} is targeted by "
                                     f"target_modules = {self.targets!r} of {self.config_path}, but the adapter has "
                                     f"no {PREFIX}{module}.lora_A.weight / lora_B.weight")

    # ------------------------------------------------------------------ Checkpoint

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)

    def files(self) -> list[Path]:
        return [self.path, self.config_path, *self.weights.files()]

    @property
    def targeted(self) -> list[str]:
        """The base keys this adapter changes by a low-rank update, sorted."""
        return sorted(self._pairs)

    def is_full(self, key: str) -> bool:
        """The adapter replaces ``key`` by a full tensor (``modules_to_save``, a trained bias)."""
        return key in self._full

    def factors(self, key: str, dtype: torch.dtype = torch.float32, device="cpu"):
        """``(B, A, s)`` with ``tau = s B A`` in the base's orientation, or ``None`` when ``key`` is not
        LoRA-targeted (``fan_in_fan_out``: ``tau = s (B A)^T = s A^T B^T``). Finite, checked."""
        p = self._pairs.get(key)
        if p is None:
            return None
        A = self.weights.get(p["A"]).to(device=device, dtype=dtype)
        B = self.weights.get(p["B"]).to(device=device, dtype=dtype)
        for k, t in ((p["A"], A), (p["B"], B)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{self.weights.label}: tensor {k!r} {tuple(t.shape)} contains NaN or Inf")
        return (A.T, B.T, p["s"]) if self.fan_in_fan_out else (B, A, p["s"])

    def delta(self, key: str, w0: torch.Tensor) -> torch.Tensor:
        """The dense ``tau = W - W0`` of ``key`` in ``w0``'s dtype and device (``w0``: the base tensor there)."""
        if key in self._full:
            full = self.weights.get(self._full[key])
            if full.is_floating_point() and not torch.isfinite(full).all():
                raise ValueError(f"{self.weights.label}: tensor {self._full[key]!r} contains NaN or Inf")
            return full.to(device=w0.device, dtype=w0.dtype) - w0
        f = self.factors(key, w0.dtype, w0.device)
        if f is None:
            return torch.zeros_like(w0)
        B, A, s = f
        return (B @ A).mul_(s)

    def get(self, key: str) -> torch.Tensor:
        """The expert's tensor ``W0 + tau`` (computed in float32 at least), in the base's dtype."""
        w0 = self.base.get(key)
        if key not in self._full and key not in self._pairs:
            return w0.clone()
        if key in self._full:
            full = self.weights.get(self._full[key])
            if full.is_floating_point() and not torch.isfinite(full).all():
                raise ValueError(f"{self.weights.label}: tensor {self._full[key]!r} contains NaN or Inf")
            return full.to(w0.dtype)
        dt = torch.float64 if w0.dtype == torch.float64 else torch.float32
        w = w0.to(dt)
        return (w + self.delta(key, w)).to(w0.dtype)


def open_expert(source, base: Checkpoint, label: str | None = None) -> Checkpoint:
    """An adapter directory, or a hub id whose repository holds an adapter, as a :class:`LoraAdapter`
    on ``base``; anything else through :func:`~swudi_lab.merge.io.open_checkpoint`."""
    from .io import HFDirectoryCheckpoint, fetch_hub_model, is_hub_id, open_checkpoint

    if isinstance(source, str) and is_hub_id(source):  # fetched once (safetensors and json), then told apart
        snap = fetch_hub_model(source)
        return LoraAdapter(snap, base, label or source) if is_adapter_dir(snap) else HFDirectoryCheckpoint(snap, label or source)
    return LoraAdapter(source, base, label) if is_adapter_dir(source) else open_checkpoint(source, label)


def lowrank_tasks(experts, key: str, shape, dtype: torch.dtype, device) -> LowRankTasks | None:
    """The :class:`~swudi_lab.spectral.LowRankTasks` of ``key`` when every expert is a :class:`LoraAdapter`
    that changes it by a low-rank update or not at all (a rank-0 factor, ``tau_i = 0``); ``None``
    otherwise (a dense expert or a full tensor: the caller forms the dense task vectors)."""
    if len(shape) != 2 or not all(isinstance(e, LoraAdapter) and not e.is_full(key) for e in experts):
        return None
    B, A, s = [], [], []
    for e in experts:
        f = e.factors(key, dtype, device)
        if f is None:
            f = (torch.zeros(shape[0], 0, dtype=dtype, device=device),
                 torch.zeros(0, shape[1], dtype=dtype, device=device), 1.0)
        B.append(f[0])
        A.append(f[1])
        s.append(f[2])
    return LowRankTasks(B, A, s, dtype=dtype, device=device)
