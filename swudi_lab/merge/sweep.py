"""Many spectral merges for the price of one eigendecomposition per layer.

A sweep over the exponential time ``t`` (or ``kappa``), the SWUDI ratio ``r`` or any other
filter parameter only changes the factors ``f(lambda)``; ``C``, ``D`` and ``eigh(C)`` stay the
same. :func:`filter_sweep` decomposes each 2-D layer once and evaluates the estimator
(docs/design.md)::

    theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T

for every filter of the sweep. Every other tensor follows the WUDI family's reference
semantics (mean of task vectors; heads are not merged), exactly as :func:`merge` does, so
``filter_sweep(b, e, {"x": per_layer(swudi(...))})["x"]`` equals ``merge(b, e, "swudi", ...)``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..spectral import Filter, kappa_time, live_count, spectral_estimate
from .engine import iter_layer_problems, merge

__all__ = ["filter_sweep", "per_layer"]

FilterRule = Callable[[int, int], Filter]
"""``(d_in, n_live) -> Filter``: the filter to use on a layer with that input size and live experts."""


def per_layer(filt: Filter) -> FilterRule:
    """Use the same filter on every layer."""
    return lambda d_in, n_live: filt


def filter_sweep(base, experts, rules: Mapping[str, FilterRule], *, init: str = "sum", scale: float = 1.0,
                 device="cpu", dtype=torch.float32, progress: bool = False, **selection) -> dict[str, dict]:
    """Merged state dicts, one per named filter rule, sharing one ``eigh`` per layer.

    Args:
        base, experts: as for :func:`~swudi_lab.merge.merge` (state dicts, modules or paths).
        rules: ``label -> (d_in, n_live) -> Filter``; e.g. ``{"kappa=3": lambda d, n:
            exponential(kappa_time(3, d, n))}`` (:func:`~swudi_lab.spectral.kappa_time`). Use :func:`per_layer` for a fixed filter.
        init: ``"sum"`` (``theta0 = sum_i tau_i``) or ``"zero"``. scale: ``merged = W0 + scale theta``.
        selection: ``head_pattern``, ``include``, ``exclude``, ``tasks`` as for ``merge``.

    Returns ``label -> state dict`` (heads excluded, tensors in the base's dtype).
    """
    if init not in ("sum", "zero"):
        raise ValueError(f"init must be 'sum' or 'zero', got {init!r}")
    if not rules:
        raise ValueError("rules is empty: give at least one filter")
    # Non-2-D tensors (and untouched ones) follow the mean of task vectors: take them from 'average'.
    common = merge(base, experts, "average", progress=False, device=device, dtype=dtype, **selection).state_dict
    out = {label: dict(common) for label in rules}
    for p in iter_layer_problems(base, experts, device=device, dtype=dtype, progress=progress, **selection):
        n_live = live_count(p.taus)
        theta0 = p.taus.sum(0) if init == "sum" else None
        for label, rule in rules.items():
            if n_live == 0:
                theta = torch.zeros_like(p.base)
            else:
                theta = spectral_estimate(p.C, p.D, theta0, rule(p.C.shape[0], n_live), eig=p.eig)
            target = common[p.name]
            out[label][p.name] = (p.base + scale * theta).to(dtype=target.dtype, device=target.device)
    return out
