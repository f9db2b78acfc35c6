"""Make ``import timm`` work when torchvision's compiled ops cannot load.

timm imports torchvision at import time. On a CPU-only torch paired with a torchvision built
for CUDA, torchvision's C++ extension fails to load and its Python code then fails while
registering fake kernels for ``torchvision::nms``/``torchvision::qnms``::

    RuntimeError: operator torchvision::nms does not exist

A Vision Transformer needs none of torchvision's compiled ops. This module declares the two
missing op *schemas* with ``torch.library`` before torchvision is first imported, so that its
import succeeds. It acts only when the ops are missing: with a working torchvision it does
nothing. Calling the declared ops would raise (they have no kernel), which is the honest
behaviour for ops that are genuinely unavailable.

Imported once by ``swudi_lab/__init__.py``; idempotent.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive (dropping it would unregister the ops)


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision_ops() -> list[str]:
    """Declare the torchvision op schemas that are missing; return the names declared.

    Returns an empty list when torchvision's own extension already registered them (nothing
    to do) or when this function already ran.
    """
    global _LIBRARY
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return []
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])
    return missing


def _load_torchvision_extension() -> None:
    """Load torchvision's own ``_C`` extension if it works here (it then registers real ops)."""
    spec = importlib.util.find_spec("torchvision")
    library = os.path.join(os.path.dirname(spec.origin), "_C.so")
    if os.path.exists(library):
        try:
            torch.ops.load_library(library)
        except OSError:  # e.g. a CUDA build of torchvision on a CPU-only torch
            pass


def patch() -> list[str]:
    """Run the fix once, before torchvision's first import; return the op names declared."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return []  # too late to matter, or nothing to fix
    _load_torchvision_extension()
    return ensure_torchvision_ops()


DECLARED = patch()
