"""Streaming merge engine: base + N experts -> merged checkpoint, one tensor at a time.

For every tensor name ``k`` of the base (sorted), the engine reads only that tensor from the
base and from each expert, forms the task vectors ``taus = W_i - W0`` as one (N, *shape) tensor
in the compute dtype on the compute device, applies the method's rule, and writes
``W0 + delta`` cast back to the base tensor's dtype. Peak memory is about one layer's stack plus
the per-layer work (``merge_files`` streams the output to disk as well), never N whole models.

Routing of a tensor follows a named profile (:mod:`~swudi_lab.merge.routing`: ``timm_vit``,
``hf_clip``, ``generic``), detected from the base's keys or given as ``routing=NAME``
(first match wins):

1. its name full-matches ``head_pattern`` (default: the profile's, ``head\\..*`` for timm, also
   ``classifier\\..*`` for HF CLIP): a task-specific head, kept per expert in ``heads[task]`` and
   left out of the merged state dict;
2. it is not floating point (int buffers such as ``num_batches_tracked``), it is not selected
   by ``include`` / ``exclude``, the profile copies it, or only the base has it (a ``CLIPModel``
   base's text tower against vision experts): copied from the base;
3. a baseline method (``average``, ``task_arithmetic``, ``ties``): the method's rule;
4. a WUDI-family method: the solver or the mean of task vectors, as the profile says (every
   built-in profile: the solver for 2-D matrices, the mean for the rest).

Sources may be state dicts, modules, files, Hugging Face model directories or hub ids
(:func:`~swudi_lab.merge.io.open_checkpoint`), and experts may also be PEFT LoRA adapter directories
(``adapter_config.json``; :mod:`~swudi_lab.merge.lora`: ``tau_i = s_i B_i A_i`` on the base, the spectral
methods solve in the span of the ``A_i`` rows without forming ``tau_i``); expert keys are matched onto the base's layout
(``vision_model.`` prefix or not, :func:`~swudi_lab.merge.routing.match_keys`) and the output
keeps the base's layout. :func:`merge_files` writes a ``.safetensors`` file, or, for an HF base
and an output path without that suffix, a model directory that ``from_pretrained`` loads:
``config.json`` from the base, ``model.safetensors`` or shards with their index, the merge in
every shard's metadata, ``merge_report.json`` / ``.csv``, built under a temporary name and
renamed when complete.

``include`` and ``exclude`` are regular expressions (a string or a list) matched with
``re.fullmatch`` against the whole tensor name: a tensor is merged when it full-matches some
include pattern (default: every tensor) and no exclude pattern, e.g.
``include=r"blocks\\.\\d+\\..*"``, ``exclude=[r".*\\.norm\\d?\\..*"]``.

Math runs in ``dtype`` (float32 by default, float64 available) with TF32 off; ``device="auto"``
uses CUDA when available. Inputs are never modified; outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from ..config.presets import get_preset
from ..spectral import Eig, eigh, interference_operator
from . import methods as _methods  # noqa: F401  (fills the registry)
from ..files import atomic_dir
from .io import (DEFAULT_MAX_SHARD_SIZE, Checkpoint, HFDirectoryCheckpoint, SafetensorsWriter,
                 ShardedSafetensorsWriter, TORCH_SUFFIXES, is_hub_id, open_checkpoint, parse_size, save_safetensors)
from .lora import LoraAdapter, lowrank_tasks, open_expert
from .registry import Method, get_method, resolve_params
from .report import MergeReport
from .routing import DEFAULT_HEAD_PATTERN, RoutingProfile, detect_routing, get_routing, match_keys

__all__ = ["MergeResult", "LayerProblem", "merge", "merge_files", "iter_layer_problems", "resolve_device",
           "DEFAULT_HEAD_PATTERN", "PROFILE_HEADS", "REPORT_NAME"]


class _ProfileHeads:
    def __repr__(self) -> str:
        return "PROFILE_HEADS"


PROFILE_HEADS = _ProfileHeads()
"""Default of ``head_pattern``: the routing profile's head pattern (``head\\..*`` for timm and generic)."""

REPORT_NAME = "merge_report.json"
"""The report inside a merged model directory (with ``merge_report.csv`` beside it)."""


@dataclass
class MergeResult:
    """Output of :func:`merge`: merged ``state_dict`` (heads excluded), ``heads[task][name]``, ``report``."""

    state_dict: dict[str, torch.Tensor]
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    report: MergeReport | None = None


class LayerProblem(NamedTuple):
    """One 2-D layer's WUDI problem: ``taus`` (N, d_out, d_in), ``C``, ``D``, ``eig = eigh(C)``, base ``W0``."""

    name: str
    taus: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    eig: Eig
    base: torch.Tensor


# ----------------------------------------------------------------------------- settings


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is a ``ValueError``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {str(device)!r}")
    return dev


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
                 "fp64": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute dtype must be float32 or float64, got {dtype!r}")
    return dtype


@contextlib.contextmanager
def _no_tf32():
    """TF32 off for the spectral math (restored on exit)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])


def _patterns(p) -> list[re.Pattern]:
    if p is None:
        return []
    items = [p] if isinstance(p, (str, re.Pattern)) else list(p)
    out = []
    for s in items:
        try:
            out.append(re.compile(s))
        except re.error as e:
            raise ValueError(f"invalid regular expression {s!r}: {e}") from None
    return out


# ----------------------------------------------------------------------------- the plan


def _source_name(source, i: int) -> str:
    """A file's stem, a directory's or hub repository's name, else ``expert<i>``."""
    if not isinstance(source, (str, os.PathLike)):
        return f"expert{i}"
    path = Path(str(source))
    return path.name if path.is_dir() or is_hub_id(str(source)) else path.stem


def _task_names(experts, tasks) -> tuple[list, list[str]]:
    if isinstance(experts, Mapping) and not all(isinstance(v, torch.Tensor) for v in experts.values()):
        names, sources = [str(k) for k in experts], list(experts.values())
    else:
        if isinstance(experts, (str, os.PathLike, torch.nn.Module)) or (isinstance(experts, Mapping)):
            raise ValueError("experts must be a list (or a dict task -> expert), not a single checkpoint")
        sources = list(experts)
        if tasks is not None:
            names = [str(t) for t in tasks]
        else:
            names = [_source_name(s, i) for i, s in enumerate(sources)]
    if not sources:
        raise ValueError("no experts given: need at least one expert checkpoint")
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} task names for {len(sources)} experts")
    names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]  # unique, deterministic
    return sources, names


class _Plan:
    """Validated routing of every tensor: which keys merge, which come from the base, which are heads.

    ``routes[key]``: ``base`` (copied), ``solver`` or ``mean`` (the profile's word for a WUDI-family
    method); ``names[i][key]``: that tensor's name in expert ``i`` (the layouts may differ).
    """

    def __init__(self, base, experts, tasks, head_pattern, include, exclude, routing=None):
        sources, self.tasks = _task_names(experts, tasks)
        chosen = None if routing is None else get_routing(routing)  # an unknown name fails before any download
        self.base: Checkpoint = open_checkpoint(base)
        self.experts: list[Checkpoint] = [open_expert(s, self.base) for s in sources]  # LoRA adapter dirs too
        self.profile: RoutingProfile = detect_routing(self.base.keys()) if chosen is None else chosen
        if head_pattern is PROFILE_HEADS:
            head_pattern = self.profile.head
        head = re.compile(head_pattern) if head_pattern else None
        self.is_head = (lambda k: bool(head.fullmatch(k))) if head else (lambda k: False)
        inc, exc = _patterns(include), _patterns(exclude)
        match = match_keys([k for k in self.base.keys() if not self.is_head(k)],
                           [(task, ck.label, [k for k in ck.keys() if not self.is_head(k)])
                            for task, ck in zip(self.tasks, self.experts)], self.base.label)
        keys, self.base_only, self.names = match.keys, match.base_only, match.expert_keys
        only = set(self.base_only)
        for task, ck, names in zip(self.tasks, self.experts, self.names):
            for k in keys:
                if k in only:
                    continue
                ek = names[k]
                as_ = f" (as {ek!r})" if ek != k else ""
                if ck.shape(ek) != self.base.shape(k):
                    raise ValueError(
                        f"tensor {k!r}: expert {task!r} ({ck.label}) has shape {ck.shape(ek)}{as_} but the base has "
                        f"{self.base.shape(k)}"
                    )
                if ck.dtype(ek).is_floating_point != self.base.dtype(k).is_floating_point:
                    raise ValueError(f"tensor {k!r}: expert {task!r} ({ck.label}) has dtype {ck.dtype(ek)}{as_}, "
                                     f"the base {self.base.dtype(k)}")
        self.keys = keys
        self.merged = {
            k for k in keys
            if k not in only
            and self.base.dtype(k).is_floating_point
            and (not inc or any(p.fullmatch(k) for p in inc))
            and not any(p.fullmatch(k) for p in exc)
        }
        self.routes = {k: self.profile.route(k, self.base.shape(k)) if k in self.merged else "base" for k in keys}
        self.head_keys = {t: [k for k in ck.keys() if self.is_head(k)] for t, ck in zip(self.tasks, self.experts)}

    def layout(self) -> dict:
        return {k: (self.base.shape(k), self.base.dtype(k)) for k in self.keys}

    def read(self, ck: Checkpoint, key: str, who: str) -> torch.Tensor:
        t = ck.get(key)
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"tensor {key!r} of {who} ({ck.label}) contains NaN or Inf")
        return t

    def task_vectors(self, key: str, device, dtype, lowrank: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W0, taus)``: the base tensor and the (N, *shape) task vectors in ``dtype`` on ``device``.

        LoRA experts (:class:`~swudi_lab.merge.lora.LoraAdapter`) give ``tau_i = s_i B_i A_i`` directly; with
        ``lowrank`` and every expert an adapter, ``taus`` is their :class:`~swudi_lab.spectral.LowRankTasks`."""
        w0 = self.read(self.base, key, "the base").to(device=device, dtype=dtype)
        if lowrank and (tasks := lowrank_tasks(self.experts, key, w0.shape, dtype, device)) is not None:
            return w0, tasks
        taus = torch.empty((len(self.experts),) + tuple(w0.shape), dtype=dtype, device=device)
        for i, (task, ck) in enumerate(zip(self.tasks, self.experts)):
            if isinstance(ck, LoraAdapter):
                taus[i] = ck.delta(key, w0)
                continue
            taus[i] = self.read(ck, self.names[i][key], f"expert {task!r}").to(device=device, dtype=dtype) - w0
        return w0, taus


# ----------------------------------------------------------------------------- the stream


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _merge_one(plan: _Plan, key: str, method: Method, params: dict, device, dtype) -> tuple[torch.Tensor, dict]:
    shape, out_dtype = plan.base.shape(key), plan.base.dtype(key)
    row = {"name": key, "shape": list(shape)}
    t0 = time.perf_counter()
    if plan.routes[key] == "base":
        out = plan.read(plan.base, key, "the base").clone()
        row["route"] = "base"
    else:
        w0, taus = plan.task_vectors(key, device, dtype, lowrank=method.spectral and plan.routes[key] == "solver")
        if method.spectral and plan.routes[key] == "mean":
            delta, info, route = taus.mean(0), {}, "mean"
        else:
            try:
                delta, info = method.fn(taus, name=key, **params)
            except (ValueError, torch.linalg.LinAlgError) as e:
                raise ValueError(f"layer {key!r} {tuple(shape)}, method {method.name!r}: {e}") from None
            route = "solver" if method.spectral else "rule"
        merged = w0 + delta
        if not torch.isfinite(merged).all():
            raise ValueError(f"layer {key!r}: method {method.name!r} produced NaN or Inf")
        out = merged.to(device="cpu", dtype=out_dtype)
        row.update(route=route, **info)
        del w0, taus, delta, merged
        _sync(device)
    row["seconds"] = time.perf_counter() - t0
    return out, row


def _with_prepass(plan: _Plan, method: Method, params: dict, device, dtype) -> dict:
    """``params`` plus what the method's pre-pass (``Method.prepass``) returns after seeing every merged
    2-D layer's task vectors, read lazily (a pre-pass that needs nothing reads nothing)."""
    if method.prepass is None:
        return params
    keys = [k for k in plan.keys if k in plan.merged and len(plan.base.shape(k)) == 2]
    with _no_tf32(), torch.no_grad():
        return {**params, **method.prepass(params, ((k, plan.task_vectors(k, device, dtype)[1]) for k in keys))}


def _stream(plan: _Plan, method: Method, params: dict, device, dtype, progress: bool) -> Iterator[tuple[str, torch.Tensor, dict]]:
    params = _with_prepass(plan, method, params, device, dtype)
    with _no_tf32(), torch.no_grad():
        for key in tqdm(plan.keys, desc=f"merge ({method.name})", disable=not progress, unit="tensor"):
            out, row = _merge_one(plan, key, method, params, device, dtype)
            yield key, out, row


def _iter_heads(plan: _Plan) -> Iterator[tuple[str, str, torch.Tensor]]:
    for task, ck in zip(plan.tasks, plan.experts):
        for k in plan.head_keys[task]:
            yield task, k, plan.read(ck, k, f"expert {task!r}").clone()


def _new_report(method: Method, params: dict, plan: _Plan, device, dtype, preset=None) -> MergeReport:
    meta = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n_experts": len(plan.experts),
            "tasks": plan.tasks, "base": plan.base.label, "experts": [c.label for c in plan.experts],
            "routing": plan.profile.name, "base_only": list(plan.base_only)}
    if preset is not None:
        meta["preset"] = get_preset(preset).name
    return MergeReport(method.name, dict(params), meta=meta)


def _prepare(method, params, device, dtype, preset, exclude):
    """Method, resolved parameters (under ``preset``'s), device, dtype and exclude patterns (+ the preset's)."""
    m = get_method(method)
    if preset is not None:
        extra = list(get_preset(preset).exclude)
        exclude = extra + ([exclude] if isinstance(exclude, str) else list(exclude or [])) if extra else exclude
    return m, resolve_params(m, params, preset=preset), resolve_device(device), _resolve_dtype(dtype), exclude


def merge(base, experts, method: str = "swudi", *, progress: bool = True, device="auto", dtype=torch.float32,
          head_pattern: str | None = PROFILE_HEADS, include=None, exclude=None,
          tasks: Sequence[str] | None = None, preset: str | None = None,
          routing: str | RoutingProfile | None = None, **params) -> MergeResult:
    """Merge ``experts`` into ``base`` in memory with a registered method.

    Args:
        base: state dict, ``nn.Module`` (timm models included), a checkpoint path / spec, a
            Hugging Face model directory or a hub id (``"openai/clip-vit-base-patch32"``).
        experts: list of the same kinds, or a dict ``task -> expert`` (names the heads). Their
            keys are matched onto the base's layout (``vision_model.`` prefix or not).
        method: a name in :data:`~swudi_lab.merge.registry.METHODS`; ``**params`` its parameters
            (unknown ones raise ``ValueError``), e.g. ``merge(b, e, "swudi", t=1300, ratio=0.65)``.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"``. dtype: compute dtype, float32 or float64.
        head_pattern: full-match regex of task-specific head tensors (default: the routing
            profile's; ``None``: no heads).
        include, exclude: full-match regexes selecting the tensors to merge (others: base).
        tasks: names of the experts (default: file stems, directory names or ``expert0``, ...).
        preset: a name in :data:`~swudi_lab.config.PRESETS` (``"clip-vit-b32"``): its published
            values for ``method`` under ``**params``, and its ``exclude`` patterns added.
        routing: a profile name of :data:`~swudi_lab.merge.routing.ROUTING` (``"timm_vit"``,
            ``"hf_clip"``, ``"generic"``) or a :class:`~swudi_lab.merge.routing.RoutingProfile`
            (default: detected from the base's keys).

    Returns :class:`MergeResult` with ``state_dict`` (every non-head base tensor, in the base's
    layout and dtype), ``heads[task][name]`` and the per-layer ``report`` (``meta["routing"]``:
    the profile; ``meta["base_only"]``: the keys only the base has, copied).
    """
    m, params, device, dtype, exclude = _prepare(method, params, device, dtype, preset, exclude)
    plan = _Plan(base, experts, tasks, head_pattern, include, exclude, routing)
    report = _new_report(m, params, plan, device, dtype, preset)
    state = {}
    for key, out, row in _stream(plan, m, params, device, dtype, progress):
        state[key] = out
        report.add(**row)
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for task, k, t in _iter_heads(plan):
        heads.setdefault(task, {})[k] = t
        report.add(name=f"{task}/{k}", shape=list(t.shape), route="head")
    return MergeResult(state, heads, report)


def _input_paths(plan: _Plan) -> set[Path]:
    """Every file and directory the merge reads (resolved)."""
    out = {Path(c.label).resolve() for c in [plan.base, *plan.experts] if Path(c.label).is_file()}
    for c in [plan.base, *plan.experts]:
        out.update(p.resolve() for p in c.files())
    return out


def _check_out_dir(out: Path, inputs: set[Path]) -> None:
    """A directory output may replace a previous merge output, never an input or anything else."""
    res = out.resolve()
    for p in inputs:
        if p == res or res in p.parents:
            raise ValueError(f"output {out} is or contains the input {p}; inputs are never modified")
    if out.is_file():
        raise ValueError(f"output {out} is an existing file; a merged model directory needs a new path")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_NAME).is_file():
        raise ValueError(f"output {out} is a non-empty directory that is no merge output (no {REPORT_NAME}); "
                         "refusing to replace it")


def merge_files(base_path, expert_paths: Sequence, out_path, method: str = "swudi", *,
                report_path=None, heads_path=None, tasks: Sequence[str] | None = None, progress: bool = True,
                device="auto", dtype=torch.float32, head_pattern: str | None = PROFILE_HEADS,
                include=None, exclude=None, preset: str | None = None, routing: str | RoutingProfile | None = None,
                max_shard_size: int | str | None = None, **params) -> MergeReport:
    """Merge checkpoints into ``out_path``, streaming tensor by tensor.

    Same semantics as :func:`merge`. ``out_path`` is

    - a ``.safetensors`` file: every non-head base tensor, written in sorted order through a
      temporary file renamed at the end;
    - a directory (a path without that suffix), when the base is a Hugging Face model
      directory or hub id: ``config.json`` copied from the base, ``model.safetensors`` or shards
      ``model-0000k-of-0000n.safetensors`` of at most ``max_shard_size`` (``"5GB"``, ``"500MB"``,
      bytes; default transformers' ``"50GB"``) with ``model.safetensors.index.json``, the merge in
      every shard's metadata (``swudi_lab.method``, ``.params``, ``.experts``, ``.tasks``,
      ``.routing``), ``merge_report.json`` and ``.csv``, heads in ``heads.safetensors``. The
      directory is built under a temporary name beside ``out_path`` and renamed when complete;
      it may replace a previous merge output, never an input or another non-empty directory.
      ``transformers`` loads it with ``from_pretrained(out_path)``.

    On any error (bad input, NaN, a failing layer) nothing is left behind. Heads (if the experts
    have any) go to ``heads_path`` (default ``<out stem>.heads.safetensors``, or inside the
    directory) as ``"<task>/<name>"``. The per-layer report is returned and, with ``report_path``,
    written as JSON and CSV. On CPU two runs give bitwise-identical weight files (fixed
    metadata, sorted keys).
    """
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    to_dir = suffix != ".safetensors"
    if to_dir and suffix in TORCH_SUFFIXES:
        raise ValueError(f"output must be a .safetensors file (or a model directory), got {out_path}")
    if max_shard_size is not None:
        if not to_dir:
            raise ValueError(f"max_shard_size applies to a model directory output, not to the file {out_path}")
        parse_size(max_shard_size)
    m, params, device, dtype, exclude = _prepare(method, params, device, dtype, preset, exclude)
    plan = _Plan(base_path, expert_paths, tasks, head_pattern, include, exclude, routing)
    if to_dir and not isinstance(plan.base, HFDirectoryCheckpoint):
        raise ValueError(f"output must be a .safetensors file, got {out_path} (a model directory output needs "
                         f"a Hugging Face model directory or hub id as the base, not {plan.base.label})")
    inputs = _input_paths(plan)
    targets = [out_path] + ([Path(heads_path)] if heads_path else [])
    for p in targets:
        if p.resolve() in inputs:
            raise ValueError(f"output {p} is one of the inputs; inputs are never modified")
    if to_dir:
        _check_out_dir(out_path, inputs)
    report = _new_report(m, params, plan, device, dtype, preset)
    metadata = {"format": "pt", "swudi_lab.method": m.name,
                "swudi_lab.params": json.dumps(params, sort_keys=True), "swudi_lab.tasks": json.dumps(plan.tasks)}
    t0 = time.perf_counter()
    if to_dir:
        metadata.update({"swudi_lab.experts": json.dumps([c.label for c in plan.experts]),
                         "swudi_lab.base": plan.base.label, "swudi_lab.routing": plan.profile.name})
        _write_model_dir(plan, m, params, device, dtype, progress, out_path, metadata, report, heads_path,
                         max_shard_size or DEFAULT_MAX_SHARD_SIZE, t0)
    else:
        with SafetensorsWriter(out_path, plan.layout(), metadata) as writer:
            for key, out, row in _stream(plan, m, params, device, dtype, progress):
                writer.write(key, out)
                report.add(**row)
            _write_heads(plan, report, heads_path or out_path.with_name(out_path.stem + ".heads.safetensors"))
        report.meta.update(output=str(out_path), seconds=time.perf_counter() - t0)
    if report_path is not None:
        report.write(report_path)
    return report



def _write_heads(plan: _Plan, report: MergeReport, path: Path, shown: Path | None = None) -> None:
    """The experts' heads (if any) into ``path`` as ``"<task>/<name>"``; ``shown``: the path the report names."""
    heads = {}
    for task, k, t in _iter_heads(plan):
        heads[f"{task}/{k}"] = t
        report.add(name=f"{task}/{k}", shape=list(t.shape), route="head")
    if heads:
        save_safetensors(heads, path, {"format": "pt", "swudi_lab.tasks": json.dumps(plan.tasks)})
        report.meta["heads"] = str(shown or path)


def _write_model_dir(plan: _Plan, m: Method, params: dict, device, dtype, progress: bool, out: Path,
                     metadata: dict, report: MergeReport, heads_path, max_shard_size, t0: float) -> None:
    """Build the merged model directory in a temporary one beside ``out`` and rename it onto ``out``."""
    with atomic_dir(out) as tmp:
        shutil.copyfile(plan.base.config_path, tmp / "config.json")
        writer = ShardedSafetensorsWriter(tmp, plan.layout(), metadata, max_shard_size)
        try:
            for key, t, row in _stream(plan, m, params, device, dtype, progress):
                writer.write(key, t)
                report.add(**row)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if heads_path:
            _write_heads(plan, report, Path(heads_path))
        else:
            _write_heads(plan, report, tmp / "heads.safetensors", out / "heads.safetensors")
        report.meta.update(output=str(out), shards=list(writer.shards), max_shard_size=str(max_shard_size),
                           seconds=time.perf_counter() - t0)
        report.write(tmp / REPORT_NAME)


def iter_layer_problems(base, experts, *, device="cpu", dtype=torch.float32,
                        head_pattern: str | None = PROFILE_HEADS, include=None, exclude=None,
                        tasks: Sequence[str] | None = None, progress: bool = False,
                        routing: str | RoutingProfile | None = None) -> Iterator[LayerProblem]:
    """Yield the :class:`LayerProblem` ``(name, taus, C, D, eig, base)`` of every tensor routed to the solver.

    Same inputs, selection and routing as :func:`merge` (every profile: the merged 2-D weights),
    one layer at a time, so notebooks can study spectra, filters and rank rules without
    re-implementing task-vector plumbing. ``C``, ``D`` from
    :func:`~swudi_lab.spectral.interference_operator`, ``eig`` from :func:`~swudi_lab.spectral.eigh`.
    """
    device, dtype = resolve_device(device), _resolve_dtype(dtype)
    plan = _Plan(base, experts, tasks, head_pattern, include, exclude, routing)
    keys = [k for k in plan.keys if plan.routes[k] == "solver"]
    with _no_tf32(), torch.no_grad():
        for key in tqdm(keys, desc="layers", disable=not progress):
            w0, taus = plan.task_vectors(key, device, dtype)
            C, D = interference_operator(taus)
            yield LayerProblem(key, taus, C, D, eigh(C), w0)
