"""Routing profiles: which tensor of a checkpoint gets what, per architecture (docs/design.md §3).

A :class:`RoutingProfile` says, for every tensor name of the base, one of

- ``head``: a task-specific head (full match of the profile's ``head`` pattern), kept per task;
- ``base``: copied from the base unchanged;
- ``solver``: the WUDI-family method's per-layer solver (2-D matrices only);
- ``mean``: the mean of the task vectors.

Its ``rules`` are ``(regex, route)`` pairs tried in order (full match, first wins); a tensor no
rule names gets ``solver`` when it is a 2-D matrix and ``mean`` otherwise. Non-floating tensors
and tensors left out by ``include`` / ``exclude`` are always copied from the base, and a
baseline method (``average``, ``task_arithmetic``, ``ties``) applies its own rule to every
tensor the profile does not copy.

Built-in profiles (:data:`ROUTING`, in detection order):

- ``hf_clip``: Hugging Face CLIP (``CLIPVisionModel``, ``CLIPModel``), as the paper's code does
  it: every 2-D matrix gets the solver, ``position_embedding.weight`` included, and ``q_proj``,
  ``k_proj``, ``v_proj`` separately (they are separate tensors); layer norms, biases,
  ``class_embedding`` and the patch convolution get the mean. Heads: ``head.*`` or
  ``classifier.*`` (``CLIPForImageClassification``). Detected by a key
  ``[vision_model.]embeddings.patch_embedding.weight`` or
  ``[...]encoder.layers.N.self_attn.q_proj.weight``.
- ``timm_vit``: timm ViTs (the offline zoo): 2-D weights (fused ``qkv`` included) get the solver;
  ``pos_embed`` (1, T, D), ``cls_token``, the patch convolution, biases and norms the mean;
  heads ``head.*``. Detected by ``patch_embed.proj.weight`` or ``blocks.N.attn.qkv.weight``.
- ``generic``: the rule without architecture knowledge (2-D: solver, else mean; heads ``head.*``),
  for everything else.

:func:`detect_routing` picks the first profile whose detector accepts the base's keys;
``merge(..., routing="hf_clip")`` / ``swudi-lab merge --routing hf_clip`` override it. Add a
profile with :func:`register_routing`.

Key layouts (:func:`match_keys`): FusionBench's CLIP experts carry ``vision_model.``-prefixed
keys, transformers 5 saves a ``CLIPVisionModel`` without the prefix, and a full ``CLIPModel``
also holds ``text_model.*``, ``visual_projection``, ``text_projection`` and ``logit_scale``. The
prefix is read from each checkpoint's own keys (a checkpoint has it when some key starts with
``vision_model.``), never from the installed library. Expert keys are mapped onto the base's
layout; when the base has the prefix, base keys outside ``vision_model.`` that no expert has are
"base only": copied unchanged and listed in the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..registry import Registry

__all__ = [
    "RoutingProfile", "ROUTING", "register_routing", "get_routing", "detect_routing", "describe_routing",
    "ROUTES", "VISION_PREFIX", "vision_prefix", "KeyMatch", "match_keys", "DEFAULT_HEAD_PATTERN",
]

DEFAULT_HEAD_PATTERN = r"head\..*"
"""Heads of the ``timm_vit`` and ``generic`` profiles (timm's classifier ``head.weight``, ``head.bias``)."""

ROUTES = ("head", "base", "solver", "mean")
VISION_PREFIX = "vision_model."


@dataclass(frozen=True)
class RoutingProfile:
    """A named routing: heads, ``(regex, route)`` rules, and a detector on the base's keys.

    ``route(key, shape)`` -> ``"base"``, ``"solver"`` or ``"mean"`` for a floating tensor a
    WUDI-family method merges (heads are taken out before, by ``head``). A rule may send only a
    2-D tensor to ``solver``.
    """

    name: str
    doc: str
    head: str | None = DEFAULT_HEAD_PATTERN
    rules: tuple[tuple[str, str], ...] = ()
    detect: Callable[[Sequence[str]], bool] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        for pattern, route in self.rules:
            if route not in ("base", "solver", "mean"):
                raise ValueError(f"routing {self.name!r}: rule {pattern!r} -> {route!r}; routes are base, solver, mean")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"routing {self.name!r}: invalid regular expression {pattern!r}: {e}") from None
        if self.head is not None:
            re.compile(self.head)

    def route(self, key: str, shape: Sequence[int]) -> str:
        """``base`` | ``solver`` | ``mean`` for tensor ``key`` of shape ``shape`` (first matching rule, else by rank)."""
        for pattern, route in self._compiled():
            if pattern.fullmatch(key):
                if route == "solver" and len(shape) != 2:
                    raise ValueError(f"routing {self.name!r} sends {key!r} to the solver, but its shape "
                                     f"{tuple(shape)} is not a matrix")
                return route
        return "solver" if len(shape) == 2 else "mean"

    def _compiled(self) -> list[tuple[re.Pattern, str]]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = [(re.compile(p), r) for p, r in self.rules]
            object.__setattr__(self, "_cache", cache)
        return cache


ROUTING = Registry("routing profile")
"""Routing profiles by name, in detection order (the last, ``generic``, accepts everything)."""


def register_routing(profile: RoutingProfile) -> RoutingProfile:
    """Add ``profile`` to :data:`ROUTING`; it is tried before ``generic`` by :func:`detect_routing`."""
    return ROUTING.add(profile.name, profile)


def _any(*patterns: str) -> Callable[[Sequence[str]], bool]:
    compiled = [re.compile(p) for p in patterns]
    return lambda keys: any(p.fullmatch(k) for k in keys for p in compiled)


register_routing(RoutingProfile(
    "hf_clip", "Hugging Face CLIP: every 2-D matrix to the solver (position_embedding.weight, q/k/v/out_proj, "
               "fc1, fc2), norms, biases, class_embedding and the patch conv to the mean",
    head=r"(head|classifier)\..*",
    rules=((r"(.*\.)?position_embedding\.weight", "solver"),),
    detect=_any(r"(vision_model\.)?embeddings\.patch_embedding\.weight",
                r"(.*\.)?encoder\.layers\.\d+\.self_attn\.q_proj\.weight"),
))
register_routing(RoutingProfile(
    "timm_vit", "timm ViT: 2-D weights (fused qkv included) to the solver; pos_embed, cls_token, the patch "
                "conv, biases and norms to the mean; heads head.*",
    rules=((r"pos_embed|cls_token|reg_token|patch_embed\.proj\.weight", "mean"),),
    detect=_any(r"patch_embed\.proj\.weight", r"blocks\.\d+\.attn\.qkv\.weight"),
))
register_routing(RoutingProfile(
    "generic", "any architecture: 2-D tensors to the solver, every other floating tensor to the mean; heads head.*",
    detect=lambda keys: True,
))


def get_routing(profile: str | RoutingProfile) -> RoutingProfile:
    """The profile named ``profile`` (or ``profile`` itself); ``ValueError`` listing the names for an unknown one."""
    if isinstance(profile, RoutingProfile):
        return profile
    return ROUTING.lookup(profile)


def detect_routing(keys: Sequence[str]) -> RoutingProfile:
    """The first registered profile whose detector accepts ``keys`` (``generic`` when none does)."""
    keys = list(keys)
    for profile in ROUTING.values():
        if profile.detect is not None and profile.detect(keys):
            return profile
    return ROUTING["generic"]


def describe_routing() -> str:
    """One line for ``swudi-lab methods``: the profiles and how one is chosen."""
    return (f"routing profiles (--routing; default: detected from the base's keys): {', '.join(ROUTING)} "
            "(docs/design.md §3)\n")


# ----------------------------------------------------------------------------- key layouts


def vision_prefix(keys: Sequence[str]) -> str:
    """``"vision_model."`` when some key starts with it (FusionBench, ``CLIPModel``), else ``""``."""
    return VISION_PREFIX if any(k.startswith(VISION_PREFIX) for k in keys) else ""


@dataclass
class KeyMatch:
    """Expert keys mapped onto the base's layout.

    ``keys``: the base's non-head keys (the output's keys, sorted); ``expert_keys[i][base_key]``:
    the name of that tensor in expert ``i`` (absent for ``base_only`` keys); ``base_only``: base
    keys outside the vision tower that no expert has (copied unchanged); ``prefixes``: the
    detected ``vision_model.`` prefix of the base and of each expert.
    """

    keys: list[str]
    expert_keys: list[dict[str, str]]
    base_only: list[str]
    prefixes: dict[str, str]


def _to_base(key: str, expert_prefix: str, base_prefix: str) -> str:
    if expert_prefix == base_prefix:
        return key
    if base_prefix:  # expert without the prefix (CLIPVisionModel), base with it (CLIPModel, FusionBench)
        return base_prefix + key
    return key[len(expert_prefix):] if key.startswith(expert_prefix) else key


def _few(keys: list[str]) -> str:
    return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"


def match_keys(base_keys: Sequence[str], experts: Sequence[tuple[str, str, Sequence[str]]],
               base_label: str = "the base") -> KeyMatch:
    """Map every expert's (non-head) keys onto the base's (non-head) ``base_keys``.

    ``experts``: ``(task, label, keys)`` per expert. Raises ``ValueError`` naming the expert, its
    file and the keys when an expert lacks a base key of the vision tower, has a key the base
    lacks, or has a key outside the tower that other experts lack.
    """
    keys = sorted(base_keys)
    bp = vision_prefix(keys)
    prefixes = {"base": bp}
    maps: list[dict[str, str]] = []
    for task, label, ek in experts:
        ep = vision_prefix(ek)
        prefixes[task] = ep
        mapping: dict[str, str] = {}
        for k in ek:
            b = _to_base(k, ep, bp)
            if b in mapping:
                raise ValueError(f"expert {task!r} ({label}): keys {mapping[b]!r} and {k!r} both map to {b!r}")
            mapping[b] = k
        maps.append(mapping)
    key_set = set(keys)
    outside = {k for k in keys if bp and not k.startswith(bp)}  # a multi-tower base: text tower, projections
    has = {k: sum(k in m for m in maps) for k in outside}
    base_only = sorted(k for k, n in has.items() if n == 0)
    partial = sorted(k for k, n in has.items() if 0 < n < len(maps))
    if partial:
        k = partial[0]
        who = [t for (t, _, _), m in zip(experts, maps) if k in m]
        lack = [f"{t!r} ({lab})" for (t, lab, _), m in zip(experts, maps) if k not in m]
        raise ValueError(f"tensor {k!r} is in the base ({base_label}) and in expert(s) {who} but not in {', '.join(lack)}: "
                         f"a key outside the vision tower must be in every expert or in none "
                         f"({len(partial)} such keys: {_few(partial)})")
    for (task, label, _), mapping in zip(experts, maps):
        missing = sorted(key_set - set(mapping) - set(base_only))
        extra = sorted(mapping[b] for b in set(mapping) - key_set)
        if missing or extra:
            raise ValueError(f"expert {task!r} ({label}) does not match the base ({base_label}): "
                             f"missing {_few(missing)}, unexpected {_few(extra)}"
                             + (f" (vision_model. prefix: base {'yes' if bp else 'no'}, expert "
                                f"{'yes' if prefixes[task] else 'no'})" if bp != prefixes[task] else ""))
    return KeyMatch(keys, maps, base_only, prefixes)
