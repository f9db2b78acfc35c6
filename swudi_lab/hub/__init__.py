"""Published experts from the Hugging Face hub: HF CLIP <-> timm conversion, zero-shot heads,
the test sets, and the paper's CLIP ViT benchmark (``swudi-lab bench clip``).

Everything here needs the optional extra ``swudi_lab[hub]`` (transformers, huggingface_hub,
pyarrow); ``import swudi_lab``, the offline zoo and the course never do. Modules import those
packages through :func:`require`, which names the extra when one is missing.
"""

from __future__ import annotations

__all__ = ["require"]


def require(module: str):
    """Import ``module`` (a package of the ``[hub]`` extra) or raise a one-line ``ImportError`` naming the extra."""
    import swudi_lab.torchvision_compat  # noqa: F401  (acts before transformers imports torchvision)
    from swudi_lab.files import require_extra

    return require_extra(module, "hub")
