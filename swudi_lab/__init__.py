"""swudi_lab: spectral-regularization model merging as a noisy linear inverse problem.

Import order matters on machines whose torchvision cannot load its compiled ops: the
compatibility shim runs before anything imports timm (see :mod:`swudi_lab.torchvision_compat`).

``import swudi_lab`` stays light: :func:`swudi_lab.setup_notebook` (a notebook's setup cell, from
:mod:`swudi_lab.viz.widgets`) is imported on first use, with plotly and ipywidgets.
"""

from . import torchvision_compat  # noqa: F401  (must run before timm / torchvision imports)

__version__ = "0.1.0"


def __getattr__(name):
    if name == "setup_notebook":
        from .viz.widgets import setup_notebook

        return setup_notebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
