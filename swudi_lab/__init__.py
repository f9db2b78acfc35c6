"""swudi_lab: spectral-regularization model merging as a noisy linear inverse problem.

Import order matters on machines whose torchvision cannot load its compiled ops: the
compatibility shim runs before anything imports timm (see :mod:`swudi_lab.torchvision_compat`).
"""

from . import torchvision_compat  # noqa: F401  (must run before timm / torchvision imports)

__version__ = "0.1.0"
