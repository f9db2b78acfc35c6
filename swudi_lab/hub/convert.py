"""HF CLIP vision towers <-> timm CLIP ViTs, on state dicts (torch only), and file conversion.

The paper's experts are Hugging Face ``CLIPVisionModel`` checkpoints (e.g.
``tanganke/clip-vit-base-patch32_<task>`` on ``openai/clip-vit-base-patch32``); timm builds the same
network as ``vit_base_patch32_clip_quickgelu_224`` (and the B/16, L/14 variants). The conversion is
a renaming plus four reshapes and the q/k/v fusion; every float is copied bit for bit, so
HF -> timm -> HF and timm -> HF -> timm are bitwise round trips.

HF keys come in two layouts, told apart by the keys themselves (never by the installed
transformers): with the ``vision_model.`` prefix (FusionBench experts, transformers 4
``CLIPVisionModel``, transformers 5 ``CLIPVisionModelWithProjection`` and ``CLIPModel``) or without
it (transformers 5 ``CLIPVisionModel.state_dict()`` / ``save_pretrained``). ``P`` below is that
prefix; ``i`` a block index, ``D`` the width, ``T`` the token count, ``Pj`` the projection width.

==================================================  =================================  ==========================
HF (``P`` = ``vision_model.`` or ``""``)            timm                               tensor op
==================================================  =================================  ==========================
``P embeddings.class_embedding`` (D,)               ``cls_token`` (1, 1, D)            reshape
``P embeddings.patch_embedding.weight``             ``patch_embed.proj.weight``        copy (no bias on either)
``P embeddings.position_embedding.weight`` (T, D)   ``pos_embed`` (1, T, D)            reshape
``P pre_layrnorm.{weight,bias}``                    ``norm_pre.{weight,bias}``         copy
``P encoder.layers.i.layer_norm1.*``                ``blocks.i.norm1.*``               copy
``P encoder.layers.i.self_attn.{q,k,v}_proj.W``     ``blocks.i.attn.qkv.W`` (3D, ...)  concat q, k, v / split
``P encoder.layers.i.self_attn.out_proj.*``         ``blocks.i.attn.proj.*``           copy
``P encoder.layers.i.layer_norm2.*``                ``blocks.i.norm2.*``               copy
``P encoder.layers.i.mlp.fc1.*`` / ``fc2.*``        ``blocks.i.mlp.fc1.*`` / ``fc2.*``  copy
``P post_layernorm.{weight,bias}``                  ``norm.{weight,bias}``             copy
``visual_projection.weight`` (Pj, D)                ``head.weight`` (Pj, D)            copy
(none: CLIP's projection has no bias)               ``head.bias`` (Pj,)                zeros / must be all zero
==================================================  =================================  ==========================

(``W`` is ``weight`` and ``bias``.) The code reads one table, ``_TABLE``, in both directions: adding a
mapped tensor is one row there. Facts behind the table, checked in timm 1.0.31: timm's CLIP
ViTs are ``VisionTransformer(pre_norm=True, class_token=True, global_pool='token',
no_embed_class=False, act_layer='quick_gelu', norm_layer=LayerNorm(eps=1e-5))``; ``pre_norm`` makes
the patch conv bias-free; with token pooling ``fc_norm`` is off, so ``norm`` is applied to every
token before the class token is taken, which equals HF's ``post_layernorm`` of the pooled token
(LayerNorm is per token); the head is ``nn.Linear(D, Pj)`` *with* a bias, which timm's own
``_convert_openai_clip`` fills with zeros, and so does :func:`hf_to_timm`. ``qkv`` rows are
``[q; k; v]``, each head-major like HF's ``q_proj`` rows.

Keys of a full ``CLIPModel`` outside the vision tower (``text_model.*``, ``text_projection.weight``,
``logit_scale``) and the ``embeddings.position_ids`` buffer that old transformers saved are skipped
(listed in :attr:`ConversionPlan.skipped`). Every other key that is not in the table is a
``ValueError`` naming it, as is a missing key or a wrong shape. Inputs are never modified: every
output tensor is a fresh copy.

API: :func:`hf_to_timm`, :func:`timm_to_hf` (state dicts), :func:`plan_hf_to_timm` /
:func:`plan_timm_to_hf` (the same, lazily, for any :class:`~swudi_lab.merge.io.Checkpoint`),
:func:`detect_hf_prefix`, :class:`TimmSpec` with :func:`timm_spec_from_hf_config` (the timm model
for an HF ``config.json``, tiny ones included), :func:`hf_config_from_timm_spec`,
:func:`infer_hf_config` (shapes only) and :func:`convert_checkpoint` (``swudi-lab convert``). Files are
read by :mod:`swudi_lab.merge.io` (:func:`~swudi_lab.merge.io.open_checkpoint`: an HF model directory,
shards or a weights-only ``pytorch_model.bin`` included, or one ``.safetensors`` file, one tensor at a time).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..files import AtomicFile, atomic_dir
from ..merge.io import (Checkpoint, DictCheckpoint, HFDirectoryCheckpoint, SafetensorsCheckpoint, SafetensorsWriter,
                        open_checkpoint, read_json)
from ..merge.routing import VISION_PREFIX, vision_prefix

__all__ = [
    "HF_PREFIX", "TIMM_CLIP_MODELS", "ConversionPlan", "TimmSpec",
    "detect_hf_prefix", "plan_hf_to_timm", "plan_timm_to_hf", "hf_to_timm", "timm_to_hf",
    "timm_spec_from_hf_config", "hf_config_from_timm_spec", "infer_hf_config", "vision_config",
    "read_timm_spec", "convert_checkpoint",
]

HF_PREFIX = VISION_PREFIX  # "vision_model.": the key layout is merge.routing's (vision_prefix)
_CLS = "embeddings.class_embedding"

# timm's registered CLIP ViTs with OpenAI's QuickGELU (timm/models/vision_transformer.py):
# name -> (patch_size, embed_dim, depth, num_heads, img_size); all have mlp_ratio 4, LayerNorm eps 1e-5.
TIMM_CLIP_MODELS = {
    "vit_base_patch32_clip_quickgelu_224": (32, 768, 12, 12, 224),
    "vit_base_patch16_clip_quickgelu_224": (16, 768, 12, 12, 224),
    "vit_large_patch14_clip_quickgelu_224": (14, 1024, 24, 16, 224),
    "vit_large_patch14_clip_quickgelu_336": (14, 1024, 24, 16, 336),
}

# Parts of a full CLIPModel outside the vision tower, and a buffer old transformers saved: skipped.
_HF_SKIP = re.compile(r"text_model\..*|text_projection\.weight|logit_scale")
_HF_BUFFER = "embeddings.position_ids"

# HF CLIPVisionConfig defaults (transformers), used for keys a config.json leaves out.
_HF_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # HF hidden_act -> timm act_layer (both exact)


@dataclass(frozen=True)
class _Pair:
    """One row of :data:`_TABLE`: a tensor's HF key (after the prefix), its timm key and their shapes.

    ``{i}`` in both keys is the block index; ``{x}`` in the HF key makes the row fused: timm's one
    tensor is HF's ``q``, ``k``, ``v`` stacked on dim 0 (its shape: 3x the first size). Shapes are in
    the sizes ``D`` (width), ``M`` (MLP width), ``T`` (tokens), ``C`` (channels), ``p`` (patch) or
    integers, each size read off the first tensor that has it. ``timm_shape`` ``None`` means the HF
    shape. The tensor op follows: equal shapes copy, different ones reshape, fused rows concatenate
    (HF -> timm) and slice (timm -> HF).
    """

    hf: str
    timm: str
    hf_shape: tuple
    timm_shape: tuple | None = None


_TABLE = (  # every tensor of the vision tower, both directions (the head, which CLIP lacks a bias for, is apart)
    #     HF key (after the prefix P)                      timm key                      HF shape              timm shape
    _Pair("embeddings.class_embedding",                    "cls_token",                  ("D",),               (1, 1, "D")),
    _Pair("embeddings.patch_embedding.weight",             "patch_embed.proj.weight",    ("D", "C", "p", "p")),
    _Pair("embeddings.position_embedding.weight",          "pos_embed",                  ("T", "D"),           (1, "T", "D")),
    _Pair("pre_layrnorm.weight",                           "norm_pre.weight",            ("D",)),
    _Pair("pre_layrnorm.bias",                             "norm_pre.bias",              ("D",)),
    _Pair("post_layernorm.weight",                         "norm.weight",                ("D",)),
    _Pair("post_layernorm.bias",                           "norm.bias",                  ("D",)),
    _Pair("encoder.layers.{i}.layer_norm1.weight",         "blocks.{i}.norm1.weight",    ("D",)),
    _Pair("encoder.layers.{i}.layer_norm1.bias",           "blocks.{i}.norm1.bias",      ("D",)),
    _Pair("encoder.layers.{i}.self_attn.{x}_proj.weight",  "blocks.{i}.attn.qkv.weight", ("D", "D")),
    _Pair("encoder.layers.{i}.self_attn.{x}_proj.bias",    "blocks.{i}.attn.qkv.bias",   ("D",)),
    _Pair("encoder.layers.{i}.self_attn.out_proj.weight",  "blocks.{i}.attn.proj.weight", ("D", "D")),
    _Pair("encoder.layers.{i}.self_attn.out_proj.bias",    "blocks.{i}.attn.proj.bias",  ("D",)),
    _Pair("encoder.layers.{i}.layer_norm2.weight",         "blocks.{i}.norm2.weight",    ("D",)),
    _Pair("encoder.layers.{i}.layer_norm2.bias",           "blocks.{i}.norm2.bias",      ("D",)),
    _Pair("encoder.layers.{i}.mlp.fc1.weight",             "blocks.{i}.mlp.fc1.weight",  ("M", "D")),
    _Pair("encoder.layers.{i}.mlp.fc1.bias",               "blocks.{i}.mlp.fc1.bias",    ("M",)),
    _Pair("encoder.layers.{i}.mlp.fc2.weight",             "blocks.{i}.mlp.fc2.weight",  ("D", "M")),
    _Pair("encoder.layers.{i}.mlp.fc2.bias",               "blocks.{i}.mlp.fc2.bias",    ("D",)),
)


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Rule:
    """One output tensor: ``fn(*[source.get(k) for k in ins])`` of ``shape`` and ``dtype``."""

    out: str
    ins: tuple[str, ...]
    fn: Callable[..., torch.Tensor]
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class ConversionPlan:
    """A conversion of one checkpoint, decided from its keys and shapes before any data is read.

    ``rules`` give every output tensor; ``skipped`` the input keys left out on purpose (text tower,
    ``logit_scale``, the ``position_ids`` buffer); ``dims`` the architecture read off the shapes
    (``embed_dim``, ``depth``, ``mlp_dim``, ``patch_size``, ``in_chans``, ``num_tokens``,
    ``num_classes``); ``prefix`` the HF layout (input for HF -> timm, output for timm -> HF).
    """

    rules: list[_Rule]
    skipped: list[str]
    dims: dict
    prefix: str
    source: Checkpoint = field(repr=False)

    def layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {r.out: (r.shape, r.dtype) for r in self.rules}

    def tensor(self, rule: _Rule) -> torch.Tensor:
        """Compute one output tensor (reads only its inputs) and check its shape."""
        t = rule.fn(*[self.source.get(k) for k in rule.ins])
        if tuple(t.shape) != rule.shape or t.dtype != rule.dtype:  # a bug, not a bad input
            raise RuntimeError(f"{rule.out}: planned {rule.shape} {rule.dtype}, got {tuple(t.shape)} {t.dtype}")
        return t

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every output tensor, in sorted order (one copy of the model)."""
        return {r.out: self.tensor(r) for r in sorted(self.rules, key=lambda r: r.out)}


def _copy(t):
    return t.detach().clone()


def _reshaper(shape):
    return lambda t: t.detach().reshape(shape).clone()


def _cat(*ts):
    return torch.cat([t.detach() for t in ts], 0)


def _slicer(lo, hi):
    return lambda t: t.detach()[lo:hi].clone()


def _source(sd, label) -> Checkpoint:
    if isinstance(sd, Checkpoint):
        return sd
    if isinstance(sd, torch.nn.Module):
        raise ValueError(f"{label}: give a state dict (model.state_dict()), not a {type(sd).__name__}")
    if not isinstance(sd, Mapping):
        raise ValueError(f"{label}: expected a state dict, got a {type(sd).__name__}")
    return DictCheckpoint(sd, label)


def _fmt(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


class _Shapes:
    """Shape checks against a source, with errors naming the key, its shape and the expected one."""

    def __init__(self, src: Checkpoint, what: str, keys: set[str]):
        self.src, self.what, self.keys = src, what, keys

    def need(self, key: str, ndim: int | None = None) -> tuple[int, ...]:
        if key not in self.keys:
            raise ValueError(f"{self.src.label}: {self.what} key {key!r} is missing")
        s = tuple(self.src.shape(key))
        if ndim is not None and len(s) != ndim:
            raise ValueError(f"{self.src.label}: {key!r} has shape {s}, expected a {ndim}-D tensor")
        return s

    def expect(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        s = self.need(key)
        if s != tuple(shape):
            raise ValueError(f"{self.src.label}: {key!r} has shape {s}, expected {tuple(shape)}")
        return s

    def fit(self, key: str, spec: tuple, sizes: dict) -> tuple[int, ...]:
        """``key``'s shape against ``spec`` (ints and size names): known sizes are checked, new ones added to ``sizes``."""
        s = self.need(key)
        new = dict(sizes)
        ok = len(s) == len(spec)
        for n, got in zip(spec, s) if ok else ():
            match = n == got if isinstance(n, int) else new.setdefault(n, got) == got
            ok = ok and match
        if not ok:  # the expected shape, with the sizes read so far (or the size names, for a wrong ndim)
            want = [n if isinstance(n, int) else new.get(n, n) for n in spec]
            raise ValueError(f"{self.src.label}: {key!r} has shape {s}, expected "
                             f"({', '.join(map(str, want))}{',' if len(want) == 1 else ''})")
        sizes.update(new)
        return s


def detect_hf_prefix(keys) -> str:
    """``"vision_model."`` or ``""``: the HF key layout, read from the keys alone.

    The layout is :func:`swudi_lab.merge.routing.vision_prefix`'s (the prefix when some key starts
    with it), validated: ``ValueError`` when that layout's ``embeddings.class_embedding`` is not
    there (the keys are timm's, or no CLIP vision tower) or when keys of both layouts are (mixed).
    """
    keys = set(keys)
    prefix = vision_prefix(keys)
    with_p, without = HF_PREFIX + _CLS in keys, _CLS in keys
    if with_p and without:
        raise ValueError(f"mixed HF layouts: both {HF_PREFIX + _CLS!r} and {_CLS!r} are present")
    if prefix and without:
        raise ValueError(f"mixed HF layouts: {_fmt([k for k in keys if k.startswith(HF_PREFIX)], 3)} have the "
                         f"{HF_PREFIX!r} prefix, {_CLS!r} does not")
    if with_p or without:
        return prefix
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        raise ValueError("these are timm keys (cls_token, patch_embed.proj.weight), not an HF CLIP vision tower; "
                         "convert them with timm_to_hf / --to hf")
    raise ValueError(f"not an HF CLIP vision tower: no {HF_PREFIX + _CLS!r} or {_CLS!r} key")


_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _depth(keys, pattern: re.Pattern, label: str, what: str) -> int:
    idx = sorted({int(m.group(1)) for k in keys if (m := pattern.fullmatch(k))})
    if not idx:
        raise ValueError(f"{label}: no {what} found")
    if idx != list(range(len(idx))):
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise ValueError(f"{label}: {what} {missing} missing (found {idx[0]}..{idx[-1]})")
    return len(idx)


def _table_rules(src: Checkpoint, sh: _Shapes, prefix: str, depth: int, to_timm: bool) -> tuple[list[_Rule], dict]:
    """The rules of every :data:`_TABLE` row in one direction, with the shapes checked; and the sizes read."""
    rows = [(r, None) for r in _TABLE if "{i}" not in r.hf]
    rows += [(r, i) for i in range(depth) for r in _TABLE if "{i}" in r.hf]
    sizes: dict = {}
    rules: list[_Rule] = []
    for row, i in rows:
        fused = "{x}" in row.hf
        hf_keys = tuple(prefix + row.hf.format(i=i, x=x) for x in (("q", "k", "v") if fused else (None,)))
        timm_keys = (row.timm.format(i=i),)
        hf_spec, timm_spec = row.hf_shape, row.timm_shape or row.hf_shape
        if fused:  # its first size is known by now (D: the class embedding comes first)
            timm_spec = (3 * sizes[hf_spec[0]],) + tuple(hf_spec[1:])
        ins, outs, in_spec, out_spec = ((hf_keys, timm_keys, hf_spec, timm_spec) if to_timm
                                        else (timm_keys, hf_keys, timm_spec, hf_spec))
        for k in ins:
            sh.fit(k, in_spec, sizes)
        shape = tuple(n if isinstance(n, int) else sizes[n] for n in out_spec)
        dts = {src.dtype(k) for k in ins}
        if len(dts) > 1:
            raise ValueError(f"{src.label}: {prefix}{row.hf.format(i=i, x='{q,k,v}')} have different dtypes "
                             f"{sorted(map(str, dts))}")
        dtype = dts.pop()
        if fused and to_timm:
            rules.append(_Rule(outs[0], ins, _cat, shape, dtype))
        elif fused:
            n = shape[0]
            rules += [_Rule(k, ins, _slicer(j * n, (j + 1) * n), shape, dtype) for j, k in enumerate(outs)]
        else:
            rules.append(_Rule(outs[0], ins, _copy if in_spec == out_spec else _reshaper(shape), shape, dtype))
    return rules, sizes


def _dims(sizes: dict, depth: int) -> dict:
    return dict(embed_dim=sizes["D"], depth=depth, mlp_dim=sizes["M"], patch_size=sizes["p"], in_chans=sizes["C"],
                num_tokens=sizes["T"], num_classes=0)


def plan_hf_to_timm(source, label: str = "HF state dict") -> ConversionPlan:
    """Plan HF CLIP vision (either layout, a full ``CLIPModel`` too) -> timm ``VisionTransformer`` keys.

    ``source``: a state dict or a :class:`~swudi_lab.merge.io.Checkpoint` (read lazily). Only
    keys and shapes are looked at here. The timm head exists when ``visual_projection.weight`` does.
    """
    src = _source(source, label)
    keys = list(src.keys())
    try:
        prefix = detect_hf_prefix(keys)
    except ValueError as e:
        raise ValueError(f"{src.label}: {e}") from None
    sh = _Shapes(src, "HF", set(keys))
    p = prefix
    skipped = [k for k in keys if _HF_SKIP.fullmatch(k) or k == p + _HF_BUFFER]
    depth = _depth([k[len(p):] for k in keys if k.startswith(p)], _HF_LAYER, src.label, "encoder.layers.<i>")

    rules, sizes = _table_rules(src, sh, p, depth, to_timm=True)
    dims = _dims(sizes, depth)
    dim = dims["embed_dim"]
    if "visual_projection.weight" in keys:
        proj = sh.need("visual_projection.weight", 2)
        if proj[1] != dim:
            raise ValueError(f"{src.label}: 'visual_projection.weight' has shape {proj}, expected (projection_dim, {dim})")
        dims["num_classes"] = proj[0]
        dt = src.dtype("visual_projection.weight")
        rules.append(_Rule("head.weight", ("visual_projection.weight",), _copy, proj, dt))
        rules.append(_Rule("head.bias", (), lambda: torch.zeros(proj[0], dtype=dt), (proj[0],), dt))

    used = {k for r in rules for k in r.ins} | set(skipped)
    unknown = [k for k in keys if k not in used]
    if unknown:
        raise ValueError(f"{src.label}: HF keys with no timm counterpart: {_fmt(unknown)}")
    return ConversionPlan(rules, sorted(skipped), dims, prefix, src)


def plan_timm_to_hf(source, prefix: str = HF_PREFIX, label: str = "timm state dict") -> ConversionPlan:
    """Plan timm CLIP ``VisionTransformer`` -> HF CLIP vision keys with ``prefix`` (``"vision_model."`` or ``""``).

    ``head.weight`` becomes ``visual_projection.weight``, which only the ``vision_model.`` layout
    has (``CLIPVisionModelWithProjection``, ``CLIPModel``); ``head.bias`` must be all zero (CLIP's
    projection has none) and is read here to check it.
    """
    if prefix not in (HF_PREFIX, ""):
        raise ValueError(f"prefix must be {HF_PREFIX!r} or '', got {prefix!r}")
    src = _source(source, label)
    keys = list(src.keys())
    ks = set(keys)
    if _CLS in ks or HF_PREFIX + _CLS in ks:
        raise ValueError(f"{src.label}: these are HF keys (embeddings.class_embedding), not timm's; "
                         "convert them with hf_to_timm / --to timm")
    for k, why in (("patch_embed.proj.bias", "CLIP's patch embedding has no bias (timm builds it without one "
                                             "when pre_norm=True)"),
                   ("fc_norm.weight", "CLIP applies its final norm before pooling (timm: global_pool='token', "
                                      "fc_norm off, the norm in 'norm')")):
        if k in ks:
            raise ValueError(f"{src.label}: {k!r} has no HF CLIP counterpart: {why}")
    if "norm_pre.weight" not in ks:
        raise ValueError(f"{src.label}: no 'norm_pre.weight': not a CLIP ViT (timm builds CLIP towers with pre_norm=True)")
    sh = _Shapes(src, "timm", ks)
    p = prefix
    depth = _depth(keys, _TIMM_BLOCK, src.label, "blocks.<i>")
    rules, sizes = _table_rules(src, sh, p, depth, to_timm=False)
    dims = _dims(sizes, depth)
    dim = dims["embed_dim"]
    used = set()
    if "head.weight" in ks:
        proj = sh.need("head.weight", 2)
        if proj[1] != dim:
            raise ValueError(f"{src.label}: 'head.weight' has shape {proj}, expected (num_classes, {dim})")
        if not prefix:
            raise ValueError(f"{src.label}: 'head.weight' {proj} maps to 'visual_projection.weight', which only the "
                             f"{HF_PREFIX!r} layout has (CLIPVisionModelWithProjection / CLIPModel); use "
                             f"prefix={HF_PREFIX!r}, or drop the head")
        dims["num_classes"] = proj[0]
        rules.append(_Rule("visual_projection.weight", ("head.weight",), _copy, proj, src.dtype("head.weight")))
        if "head.bias" in ks:
            sh.expect("head.bias", (proj[0],))
            b = src.get("head.bias")
            if torch.count_nonzero(b):
                raise ValueError(f"{src.label}: 'head.bias' is not all zero (max |b| = {b.abs().max().item():.3g}); "
                                 "CLIP's visual projection has no bias, so it cannot be carried over")
            used.add("head.bias")
    used |= {k for r in rules for k in r.ins}
    unknown = [k for k in keys if k not in used]
    if unknown:
        raise ValueError(f"{src.label}: timm keys with no HF CLIP counterpart: {_fmt(unknown)}")
    return ConversionPlan(rules, [], dims, prefix, src)


def hf_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP vision state dict (``vision_model.`` layout or bare; a full CLIPModel too) -> timm state dict.

    Loadable by the model of :func:`timm_spec_from_hf_config` (``num_classes`` = projection width when
    ``visual_projection.weight`` is there, else 0). Text-tower keys are skipped; see the module table.
    """
    return plan_hf_to_timm(state_dict).state_dict()


def timm_to_hf(state_dict: Mapping[str, torch.Tensor], prefix: str = HF_PREFIX) -> dict[str, torch.Tensor]:
    """timm CLIP ViT state dict -> HF CLIP vision state dict with key ``prefix`` (``"vision_model."`` or ``""``)."""
    return plan_timm_to_hf(state_dict, prefix).state_dict()


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class TimmSpec:
    """The timm model for a converted checkpoint: a registered ``model`` name (or ``None`` for a custom
    size, built as ``VisionTransformer``), JSON-able ``kwargs`` and the LayerNorm ``layer_norm_eps``.

    :meth:`model_kwargs` adds ``norm_layer``; :meth:`create` builds the (random-init) model.
    """

    model: str | None
    kwargs: dict
    layer_norm_eps: float = 1e-5

    def model_kwargs(self) -> dict:
        from functools import partial

        from timm.layers import LayerNorm

        return dict(self.kwargs, norm_layer=partial(LayerNorm, eps=self.layer_norm_eps))

    def create(self, **overrides):
        """``timm.create_model(model, pretrained=False, **kwargs)`` or ``VisionTransformer(**kwargs)``."""
        import swudi_lab.torchvision_compat  # noqa: F401  (the shim acts before timm imports torchvision)

        kw = dict(self.model_kwargs(), **overrides)
        if self.model is not None:
            import timm

            return timm.create_model(self.model, pretrained=False, **kw)
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**kw)

    def to_json(self) -> dict:
        return {"timm_model": self.model, "timm_kwargs": dict(self.kwargs), "layer_norm_eps": self.layer_norm_eps}

    @classmethod
    def from_json(cls, d: Mapping, label: str = "spec") -> "TimmSpec":
        try:
            return cls(d["timm_model"], dict(d["timm_kwargs"]), float(d.get("layer_norm_eps", 1e-5)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{label}: not a timm spec (needs 'timm_model' and 'timm_kwargs'): {e}") from None


def vision_config(config: Mapping, label: str = "config") -> tuple[dict, int | None]:
    """``(CLIPVisionConfig dict with HF defaults filled in, top-level projection_dim or None)``.

    Accepts a ``CLIPVisionConfig`` dict (``model_type`` ``clip_vision_model``) or a ``CLIPConfig`` one
    (``model_type`` ``clip``, the tower under ``vision_config``).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{label}: expected a JSON object, got {type(config).__name__}")
    proj = None
    if "vision_config" in config or config.get("model_type") == "clip":
        proj = config.get("projection_dim")
        config = config.get("vision_config") or {}
    elif config.get("model_type") not in (None, "clip_vision_model"):
        raise ValueError(f"{label}: model_type {config.get('model_type')!r} is not a CLIP vision config")
    out = dict(_HF_VISION_DEFAULTS)
    out.update({k: v for k, v in config.items() if v is not None})
    return out, (int(proj) if proj is not None else None)


def timm_spec_from_hf_config(config: Mapping, num_classes: int = 0, label: str = "config") -> TimmSpec:
    """The timm model of an HF CLIP vision config (``config.json`` as a dict; a ``CLIPConfig`` too).

    Registered names (:data:`TIMM_CLIP_MODELS`) are used when the size matches one exactly, else
    ``model=None`` (a ``VisionTransformer`` of these kwargs, so tiny configs work).
    ``num_classes``: the projection width (``visual_projection.weight`` rows), 0 for no head.
    """
    c, _ = vision_config(config, label)
    act = c["hidden_act"]
    if act not in _ACTS:
        raise ValueError(f"{label}: hidden_act {act!r} has no timm counterpart (supported: {sorted(_ACTS)})")
    dim, heads, inter = int(c["hidden_size"]), int(c["num_attention_heads"]), int(c["intermediate_size"])
    if heads <= 0 or dim % heads:
        raise ValueError(f"{label}: hidden_size {dim} is not divisible by num_attention_heads {heads}")
    mlp_ratio = inter / dim
    if int(dim * mlp_ratio) != inter:  # timm's Mlp width is int(dim * mlp_ratio)
        raise ValueError(f"{label}: intermediate_size {inter} is not reachable as int(hidden_size * mlp_ratio)")
    img, patch = int(c["image_size"]), int(c["patch_size"])
    if img % patch:
        raise ValueError(f"{label}: image_size {img} is not a multiple of patch_size {patch}")
    kwargs = dict(
        img_size=img, patch_size=patch, in_chans=int(c["num_channels"]), embed_dim=dim,
        depth=int(c["num_hidden_layers"]), num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True,
        act_layer=_ACTS[act], pre_norm=True, class_token=True, no_embed_class=False, global_pool="token",
        fc_norm=False, final_norm=True, num_classes=int(num_classes),
    )
    eps = float(c["layer_norm_eps"])
    name = None
    if act == "quick_gelu" and eps == 1e-5 and mlp_ratio == 4.0 and kwargs["in_chans"] == 3:
        for n, arch in TIMM_CLIP_MODELS.items():
            if arch == (patch, dim, kwargs["depth"], heads, img):
                name = n
    return TimmSpec(name, kwargs, eps)


def hf_config_from_timm_spec(spec: TimmSpec, projection: bool | None = None) -> dict:
    """An HF ``CLIPVisionConfig`` dict (``config.json``) for a timm spec.

    ``projection`` (default: ``num_classes > 0``) sets ``architectures`` to
    ``CLIPVisionModelWithProjection`` and ``projection_dim`` to ``num_classes``.
    """
    kw = spec.kwargs
    inverse = {v: k for k, v in _ACTS.items()}
    for k, want in (("pre_norm", True), ("class_token", True), ("no_embed_class", False), ("global_pool", "token"),
                    ("qkv_bias", True)):
        if kw.get(k, want) != want:
            raise ValueError(f"timm kwargs {k}={kw[k]!r}: not a CLIP ViT (needs {k}={want!r})")
    if kw.get("act_layer") not in inverse:
        raise ValueError(f"timm act_layer {kw.get('act_layer')!r} has no HF CLIP counterpart ({sorted(inverse)})")
    n_cls = int(kw.get("num_classes", 0))
    projection = n_cls > 0 if projection is None else projection
    dim = int(kw["embed_dim"])
    return {
        "architectures": ["CLIPVisionModelWithProjection" if projection else "CLIPVisionModel"],
        "model_type": "clip_vision_model",
        "hidden_size": dim,
        "intermediate_size": int(dim * float(kw.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(kw["depth"]),
        "num_attention_heads": int(kw["num_heads"]),
        "num_channels": int(kw.get("in_chans", 3)),
        "image_size": int(kw["img_size"]),
        "patch_size": int(kw["patch_size"]),
        "hidden_act": inverse[kw["act_layer"]],
        "layer_norm_eps": spec.layer_norm_eps,
        "projection_dim": n_cls if projection else _HF_VISION_DEFAULTS["projection_dim"],
        "attention_dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
    }


def infer_hf_config(dims: Mapping, head_dim: int = 64) -> tuple[dict, list[str]]:
    """An HF vision config from a plan's :attr:`~ConversionPlan.dims` (shapes only), and what was assumed.

    Weights do not store the head count, the activation or the LayerNorm eps: this assumes OpenAI
    CLIP's (``head_dim`` 64, QuickGELU, 1e-5) and says so in the returned list. Give a config.json
    when the checkpoint is not an OpenAI-style CLIP.
    """
    dim, tokens, patch = dims["embed_dim"], dims["num_tokens"], dims["patch_size"]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"{tokens} position embeddings is not 1 + a square grid: give the config.json")
    if dim % head_dim:
        raise ValueError(f"embed_dim {dim} is not a multiple of head_dim {head_dim}: the head count cannot be "
                         "inferred, give the config.json")
    config = dict(_HF_VISION_DEFAULTS, hidden_size=dim, intermediate_size=dims["mlp_dim"],
                  num_hidden_layers=dims["depth"], num_attention_heads=dim // head_dim,
                  num_channels=dims["in_chans"], image_size=grid * patch, patch_size=patch,
                  model_type="clip_vision_model")
    if dims.get("num_classes"):
        config["projection_dim"] = dims["num_classes"]
    assumed = [f"num_attention_heads={dim // head_dim} (head_dim {head_dim})", "hidden_act=quick_gelu",
               "layer_norm_eps=1e-05"]
    return config, assumed


def _check_config(config: dict, proj_dim: int | None, dims: Mapping, label: str) -> None:
    """Config vs the weights' shapes: ``ValueError`` naming the config key and the tensor size."""
    pairs = [("hidden_size", dims["embed_dim"]), ("num_hidden_layers", dims["depth"]),
             ("intermediate_size", dims["mlp_dim"]), ("patch_size", dims["patch_size"]),
             ("num_channels", dims["in_chans"])]
    for k, got in pairs:
        if int(config[k]) != got:
            raise ValueError(f"{label}: {k} is {config[k]} but the weights have {got}")
    want_tokens = (int(config["image_size"]) // int(config["patch_size"])) ** 2 + 1
    if want_tokens != dims["num_tokens"]:
        raise ValueError(f"{label}: image_size {config['image_size']} / patch_size {config['patch_size']} gives "
                         f"{want_tokens} tokens but the position embedding has {dims['num_tokens']}")
    if dims.get("num_classes") and proj_dim is not None and proj_dim != dims["num_classes"]:
        raise ValueError(f"{label}: projection_dim {proj_dim} but the visual projection has {dims['num_classes']} rows")


# ----------------------------------------------------------------------------- reading


def read_timm_spec(path: str | os.PathLike) -> TimmSpec | None:
    """The :class:`TimmSpec` of a converted timm file: its JSON sidecar, else its safetensors metadata."""
    path = Path(path)
    side = path.with_suffix(".json")
    if side.is_file():
        return TimmSpec.from_json(read_json(side, "timm sidecar"), str(side))
    meta = SafetensorsCheckpoint(path).metadata()
    if "swudi_lab.timm_spec" in meta:
        return TimmSpec.from_json(json.loads(meta["swudi_lab.timm_spec"]), f"{path} metadata")
    return None


# ----------------------------------------------------------------------------- files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, config: str | os.PathLike | None = None,
                       prefix: str = HF_PREFIX) -> dict:
    """Convert a checkpoint on disk, streaming one tensor at a time (``swudi-lab convert``).

    ``to="timm"``: ``src`` an HF directory or ``.safetensors`` file (``config`` an HF config.json for a
    bare file; without one the sizes are inferred, see :func:`infer_hf_config`); ``dst`` a
    ``.safetensors`` file, with a JSON sidecar ``dst.with_suffix('.json')`` holding the
    :class:`TimmSpec` and the HF config (the spec is also in the file's metadata).
    ``to="hf"``: ``src`` a timm ``.safetensors`` file (its spec from the sidecar or metadata, else
    ``config``, else inferred); ``dst`` a new directory with ``config.json`` + ``model.safetensors``,
    keys in the ``prefix`` layout.

    Outputs are written to temporaries and renamed at the end: on any error nothing is left at ``dst``.
    Returns a summary dict (tensors written, skipped keys, spec, what was assumed).
    """
    src, dst = Path(src), Path(dst)
    if to not in ("timm", "hf"):
        raise ValueError(f"to must be 'timm' or 'hf', got {to!r}")
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config not found: {config}")
    user_cfg = read_json(Path(config), "config") if config is not None else None
    if to == "timm":
        return _to_timm(src, dst, user_cfg, config)
    return _to_hf(src, dst, user_cfg, config, prefix)


def _to_timm(src: Path, dst: Path, user_cfg, config_path) -> dict:
    if dst.suffix.lower() != ".safetensors":
        raise ValueError(f"--to timm writes a .safetensors file, got {dst}")
    if src.is_file() and src.suffix.lower() != ".safetensors":
        raise ValueError(f"{src}: expected an HF model directory or a .safetensors file")
    ck = open_checkpoint(src)
    hf_dir_cfg = ck.config if isinstance(ck, HFDirectoryCheckpoint) else None
    sidecar = dst.with_suffix(".json")
    inputs = ck.files() + ([Path(config_path)] if config_path else [])
    for out in (dst, sidecar):
        if any(_same_file(out, i) for i in inputs):
            raise ValueError(f"output {out} is one of the inputs; inputs are never modified")
    plan = plan_hf_to_timm(ck, label=ck.label)
    cfg, label, assumed = (user_cfg, str(config_path), []) if user_cfg is not None else (hf_dir_cfg, f"{src}/config.json", [])
    if cfg is None:
        cfg, assumed = infer_hf_config(plan.dims)
        label = "inferred config"
    vc, proj = vision_config(cfg, label)
    _check_config(vc, proj, plan.dims, label)
    spec = timm_spec_from_hf_config(vc, plan.dims["num_classes"], label)
    side = {**spec.to_json(), "format": "swudi_lab.timm_clip", "source": str(src), "hf_prefix": plan.prefix,
            "hf_config": {k: v for k, v in vc.items() if k not in ("transformers_version", "architectures", "dtype")},
            "assumed": assumed}
    _write_atomically(plan, dst, {"format": "pt", "swudi_lab.converted_from": "hf",
                                  "swudi_lab.timm_spec": json.dumps(spec.to_json(), sort_keys=True)},
                      extra_text={sidecar: json.dumps(side, indent=1, sort_keys=True) + "\n"})
    return {"to": "timm", "out": str(dst), "sidecar": str(sidecar), "tensors": len(plan.rules),
            "skipped": plan.skipped, "timm_model": spec.model, "num_classes": plan.dims["num_classes"],
            "hf_prefix": plan.prefix, "assumed": assumed}


def _to_hf(src: Path, dst: Path, user_cfg, config_path, prefix: str) -> dict:
    if not src.is_file() or src.suffix.lower() != ".safetensors":
        raise ValueError(f"--to hf reads a timm .safetensors file, got {src}")
    if dst.exists():
        raise ValueError(f"output directory {dst} already exists; remove it or choose another")
    ck = open_checkpoint(src)
    plan = plan_timm_to_hf(ck, prefix, label=str(src))
    assumed: list[str] = []
    side = src.with_suffix(".json")
    if user_cfg is not None:
        vc, proj = vision_config(user_cfg, str(config_path))
        label = str(config_path)
    else:
        hf_cfg = read_json(side, "timm sidecar").get("hf_config") if side.is_file() else None
        if hf_cfg is not None:
            vc, proj, label = vision_config(hf_cfg, str(side))[0], None, str(side)
        elif (spec := read_timm_spec(src)) is not None:  # read only when the sidecar has no hf_config
            vc, proj, label = hf_config_from_timm_spec(spec), None, f"{src} timm spec"
        else:
            vc, assumed = infer_hf_config(plan.dims)
            proj, label = None, "inferred config"
    _check_config(vc, proj, plan.dims, label)
    spec = timm_spec_from_hf_config(vc, plan.dims["num_classes"], label)  # validates act / heads / sizes
    out_cfg = hf_config_from_timm_spec(spec, projection=bool(plan.dims["num_classes"]))
    for k in ("initializer_range", "initializer_factor", "attention_dropout"):
        if k in vc:
            out_cfg[k] = vc[k]
    with atomic_dir(dst) as tmp:
        _write_atomically(plan, tmp / "model.safetensors", {"format": "pt"},
                          extra_text={tmp / "config.json": json.dumps(out_cfg, indent=2, sort_keys=True) + "\n"})
        os.chmod(tmp, 0o755)
    return {"to": "hf", "out": str(dst), "tensors": len(plan.rules), "skipped": [], "hf_prefix": prefix,
            "num_classes": plan.dims["num_classes"], "assumed": assumed}


def _write_atomically(plan: ConversionPlan, path: Path, metadata: dict, extra_text: Mapping[Path, str] = ()) -> None:
    """Stream the plan into ``path`` (temp + rename) and write ``extra_text`` files next to it, all or nothing."""
    rules = {r.out: r for r in plan.rules}
    staged: list[AtomicFile] = []
    try:
        for p, text in dict(extra_text).items():  # staged under temporary names first
            staged.append(AtomicFile(p))
            staged[-1].tmp.write_text(text)
        with SafetensorsWriter(path, plan.layout(), metadata) as w:
            for k in w.order:
                w.write(k, plan.tensor(rules[k]))
        while staged:
            staged.pop(0).commit()
    finally:
        for f in staged:
            f.abort()

