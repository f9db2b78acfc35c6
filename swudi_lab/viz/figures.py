"""All swudi_lab figures in one namespace: theory figures and merging figures.

The code lives in :mod:`swudi_lab.viz.theory` (filters, spectra, Picard, L-curve, noise) and
:mod:`swudi_lab.viz.merging` (accuracy, ranks, Pareto, cost); the look in :mod:`swudi_lab.viz.style`.
"""

from .merging import (  # noqa: F401
    LAYER_TYPES,
    accuracy_bar_figure,
    published_comparison_figure,
    accuracy_curve_figure,
    adam_steps_figure,
    cost_bars_figure,
    layer_ranks_figure,
    pareto_figure,
    pareto_front,
    task_heatmap_figure,
)
from .theory import (  # noqa: F401
    empirical_factors_figure,
    error_curve_figure,
    filter_factors_figure,
    l_curve_figure,
    noise_amplification_figure,
    picard_figure,
    solutions_figure,
    spectra_figure,
)

__all__ = [
    "LAYER_TYPES", "accuracy_bar_figure", "published_comparison_figure", "accuracy_curve_figure", "adam_steps_figure", "cost_bars_figure",
    "layer_ranks_figure", "pareto_figure", "pareto_front", "task_heatmap_figure",
    "empirical_factors_figure", "error_curve_figure", "filter_factors_figure", "l_curve_figure",
    "noise_amplification_figure", "picard_figure", "solutions_figure", "spectra_figure",
]
