"""Checkpoints -> task vectors -> per-layer solve -> merged checkpoint (docs/design.md §2).

- :mod:`~swudi_lab.merge.registry`: the one method registry (:data:`METHODS`, :func:`get_method`,
  :func:`resolve_params`).
- :mod:`~swudi_lab.merge.methods`: the per-layer rules (average, task_arithmetic, ties, wudi,
  closed_form, iwudi, filtered, swudi, swudi_a).
- :mod:`~swudi_lab.merge.engine`: :func:`merge` (in memory), :func:`merge_files` (streaming; out a
  ``.safetensors`` file or an HF model directory), :func:`iter_layer_problems` (per-layer
  ``(C, D, eig)`` for notebooks).
- :mod:`~swudi_lab.merge.io`: safe loading (safetensors / weights-only torch.load; files, HF model
  directories, hub ids), atomic writing (files, sharded model directories).
- :mod:`~swudi_lab.merge.lora`: PEFT LoRA adapter directories as experts (``tau_i = s_i B_i A_i`` on the
  base, checked against ``adapter_config.json`` and the base; the spectral methods solve in the span of
  the ``A_i`` rows).
- :mod:`~swudi_lab.merge.routing`: routing profiles per architecture (:data:`ROUTING`: ``hf_clip``,
  ``timm_vit``, ``generic``) and key-layout matching.
- :mod:`~swudi_lab.merge.report`: the per-layer report (table, JSON, CSV).

Example::

    from swudi_lab.merge import merge
    result = merge(base_model, [expert_a, expert_b], "swudi", t=1300, ratio=0.65)
    model.load_state_dict(result.state_dict, strict=False)   # heads: result.heads[task]
"""

from . import methods  # noqa: F401  (registers the methods)
from .engine import (DEFAULT_HEAD_PATTERN, PROFILE_HEADS, LayerProblem, MergeResult, iter_layer_problems, merge,
                     merge_files, resolve_device)
from .io import (Checkpoint, HFDirectoryCheckpoint, SafetensorsWriter, ShardedSafetensorsWriter, load_state_dict,
                 load_timm, open_checkpoint, save_safetensors)
from .registry import METHODS, Method, Param, describe_methods, describe_presets, get_method, register, resolve_params
from .report import MergeReport
from .routing import ROUTING, RoutingProfile, describe_routing, detect_routing, get_routing, register_routing

__all__ = [
    "merge", "merge_files", "iter_layer_problems", "MergeResult", "LayerProblem", "MergeReport",
    "METHODS", "Method", "Param", "register", "get_method", "resolve_params", "describe_methods",
    "Checkpoint", "open_checkpoint", "load_state_dict", "load_timm", "save_safetensors", "SafetensorsWriter",
    "resolve_device", "DEFAULT_HEAD_PATTERN", "PROFILE_HEADS", "HFDirectoryCheckpoint", "ShardedSafetensorsWriter",
    "ROUTING", "RoutingProfile", "register_routing", "get_routing", "detect_routing", "describe_routing",
]
