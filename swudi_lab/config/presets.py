"""Named presets: the paper's settings per model family, and the zoo's scale-matched ones.

A :class:`Preset` holds, per registry method, the parameters its authors published for one model
family (CLIP ViT-B/32, B/16, Llama-3.2-3B, Qwen2-VL-7B, InternVL2.5-1B), plus the tensors that
family leaves out of the merge. It is pure data: the registry resolves it
(:func:`swudi_lab.merge.resolve_params` with ``preset=``), the CLI exposes it
(``swudi-lab merge --preset NAME``, ``swudi-lab presets``), and the demo, the benchmarks and the
notebooks read their settings from it instead of restating numbers.

The exponential time ``t`` is not scale free: ``trace(C) = N``, so the mean eigenvalue of ``C`` is
``N / d_in`` and ``kappa = t N / d_in`` is the scale-free time (docs/design.md, "Scale"). A preset
that names its reference width ``d_in`` and expert count ``n_experts`` gives its kappas through
:meth:`Preset.kappa`; the ``zoo-matched`` preset carries the CLIP ViT-B/32 kappas to any layer
(``t = kappa d_in / N_live`` per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = ["Preset", "PRESETS", "register_preset", "get_preset", "PAPER", "SWUDI_PLUS", "ZOO_MATCHED"]


@dataclass(frozen=True)
class Preset:
    """Published settings of one model family: ``methods[name]`` are registry parameters.

    ``exclude``: full-match regexes of tensors the family keeps from the base (not merged);
    ``d_in`` / ``n_experts``: the reference layer width and expert count of the setting, for
    :meth:`kappa`; ``source``: where the numbers come from.
    """

    name: str
    doc: str
    methods: Mapping[str, Mapping[str, object]]
    exclude: tuple[str, ...] = ()
    d_in: int | None = None
    n_experts: int | None = None
    source: str = ""

    def __post_init__(self):
        frozen = {m: MappingProxyType(dict(p)) for m, p in self.methods.items()}
        object.__setattr__(self, "methods", MappingProxyType(frozen))

    def params(self, method: str) -> dict:
        """The preset's parameters for ``method`` (a copy); ``KeyError`` naming the covered ones."""
        if method not in self.methods:
            raise KeyError(f"preset {self.name!r} has no setting for method {method!r}; "
                           f"it covers: {', '.join(self.methods)}")
        return dict(self.methods[method])

    def kappa(self, method: str) -> float:
        """Scale-free time ``kappa = t n_experts / d_in`` of ``method``'s exponential time ``t``."""
        if self.d_in is None or self.n_experts is None:
            raise ValueError(f"preset {self.name!r} names no reference width d_in and expert count")
        return float(self.params(method)["t"]) * self.n_experts / self.d_in


PRESETS: dict[str, Preset] = {}
"""Every preset by name, in registration order."""


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str | Preset) -> Preset:
    """The preset ``name``; ``ValueError`` listing the known ones otherwise."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


_AUTHORS = "arXiv 2606.07289 and its authors' public code"

PAPER = register_preset(Preset(
    "clip-vit-b32",
    "CLIP ViT-B/32, eight tasks (the paper's headline table)",
    {
        "task_arithmetic": {"scale": 0.3},
        "ties": {"density": 0.2, "scale": 0.3},
        "wudi": {"lr": 1e-5, "steps": 300},
        "iwudi": {"t": 300.0},
        # not a published setting: the ridge that halves the factors where exp(-lambda t) = 1/e at t = 300
        "filtered": {"filter": "tikhonov", "alpha": 1 / 300},
        "swudi": {"t": 1300.0, "ratio": 0.65},
        "swudi_a": {"rank_rule": "participation_sqrt"},
    },
    d_in=768, n_experts=8, source=_AUTHORS + "; task arithmetic and TIES as in FusionBench",
))

SWUDI_PLUS = register_preset(Preset(
    "swudi-plus",
    "SWUDI+ (CLIP ViT-B/32): SWUDI with the per-layer time alignment (rho 0.5) and gamma 0.98",
    {"swudi": {"t": 1300.0, "ratio": 0.65, "alignment_rho": 0.5, "filter_gamma": 0.98}},
    d_in=768, n_experts=8, source=_AUTHORS,
))

register_preset(Preset("clip-vit-b16", "CLIP ViT-B/16, eight tasks", {"swudi": {"t": 1800.0, "ratio": 0.65}},
                       d_in=768, n_experts=8, source=_AUTHORS))
register_preset(Preset("llama-3.2-3b", "Llama-3.2-3B language experts (embeddings and LM head not merged)",
                       {"swudi": {"t": 300.0, "ratio": 0.85}},
                       exclude=(r".*embed_tokens\..*", r".*lm_head\..*"), source=_AUTHORS))
register_preset(Preset("qwen2-vl-7b", "Qwen2-VL-7B multimodal experts",
                       {"swudi": {"t": 1300.0, "ratio": 0.01, "scale": 0.2}}, source=_AUTHORS))
register_preset(Preset("internvl2.5-1b", "InternVL2.5-1B multimodal experts",
                       {"swudi": {"t": 300.0, "ratio": 0.65, "scale": 0.1}}, source=_AUTHORS))

WUDI_LR_REL = 0.038
"""WUDI's scale-matched learning rate on the zoo: ``lr = 0.038 RMS(tau)`` per layer makes 300 Adam
steps act like the exponential filter at the paper's kappa (``swudi_lab.demo.calibrate_wudi_lr``
on the shipped seed 0; the demo recalibrates it per seed)."""

ZOO_MATCHED = register_preset(Preset(
    "zoo-matched",
    "the paper's CLIP ViT-B/32 regime carried to any layer: the same kappa = t N / d_in, WUDI's lr relative "
    "to the task-vector entries",
    {
        "wudi": {"lr_rel": WUDI_LR_REL, "steps": PAPER.methods["wudi"]["steps"]},
        "iwudi": {"kappa": PAPER.kappa("iwudi")},
        "swudi": {"kappa": PAPER.kappa("swudi"), "ratio": PAPER.methods["swudi"]["ratio"]},
        "swudi_a": dict(PAPER.methods["swudi_a"]),
    },
    source="derived from clip-vit-b32 (kappa) and calibrated on the offline zoo (lr_rel)",
))
