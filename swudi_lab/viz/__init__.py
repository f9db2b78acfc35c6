"""Plotly figures and ipywidgets explorers of swudi_lab.

- :mod:`~swudi_lab.viz.theory`: filter factors, Picard plot, spectra, semiconvergence, L-curve,
  empirical factors, noise amplification, solutions.
- :mod:`~swudi_lab.viz.merging`: accuracy bars / heatmap / curves, Adam steps, SWUDI-A ranks,
  Pareto front, time and memory bars.
- :mod:`~swudi_lab.viz.style`: the one template and palette (``color(name)``), ``side_by_side``.
- :mod:`~swudi_lab.viz.widgets`: ``explore`` (widgets / plotly-sliders / static modes),
  ``setup_notebook`` and ``in_colab``.
- :mod:`~swudi_lab.viz.explorers`: the notebooks' ready-made explorers.

Every figure function returns a ``plotly.graph_objects.Figure``.
"""

from .explorers import (
    cutoff_filter,
    filters_explorer,
    gd_explorer,
    inverse_problem_explorer,
    merge_explorer,
)
from .figures import *  # noqa: F401,F403
from .style import PALETTE, TEMPLATE, color, side_by_side
from .widgets import MODES, Explorer, default_grid, explore, in_colab, resolve_mode, setup_notebook
