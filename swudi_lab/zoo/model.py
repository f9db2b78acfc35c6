"""The zoo's backbone: a small timm ``VisionTransformer`` (``pretrained=False``).

Default: image 32, patch 4 (64 tokens + class token), width 128, depth 4, 4 heads, MLP ratio 4,
``num_classes=0`` and ``global_pool='token'`` (the class token's final-norm output is the
feature, as in CLIP's image tower); 0.81 M parameters. Why these numbers:

* patch 4 on 32x32 keeps a plain linear patch stem (a conv with stride = kernel, the timm/CLIP
  stem, so all merge code sees standard ViT key names) while giving 64 tokens -- enough spatial
  resolution for counting, flags and orientation; patch 2 would cost 4x the attention FLOPs
  and patch 8 (16 tokens) cannot resolve dots of 3 px;
* width 128 / depth 4 is the size at which a 2-core CPU trains ~250 images/s, so eight experts
  fine-tune in a few minutes; every block has the four 2-D matrices the spectral merges act on
  (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``), with d_in of 128 and 512 -- the same
  structure as ViT-B/32, only 6x narrower;
* a class token and ``global_pool='token'`` mirror CLIP ViT-B/32 (the merged quantity is the
  same kind of feature).

Checkpoints hold the backbone state dict only, with timm key names (``blocks.0.attn.qkv.weight``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["BackboneConfig", "make_backbone"]


@dataclass(frozen=True)
class BackboneConfig:
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    class_token: bool = True
    global_pool: str = "token"

    def to_dict(self) -> dict:
        return asdict(self)


def make_backbone(config, seed: int | None = None) -> torch.nn.Module:
    """A fresh backbone (``num_classes=0``: returns features ``(B, D)``) for ``config``: a timm
    ``VisionTransformer`` for a :class:`BackboneConfig`, the hub model of a
    :class:`~swudi_lab.zoo.online.HubBackboneConfig`. ``seed`` seeds torch's generator first.
    """
    import swudi_lab.torchvision_compat  # noqa: F401  (timm imports torchvision)
    from timm.models.vision_transformer import VisionTransformer

    if seed is not None:
        torch.manual_seed(seed)
    if not isinstance(config, BackboneConfig):  # a hub model (online recipe)
        from .online import create_hub_backbone

        return create_hub_backbone(config)
    return VisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        num_classes=0,
        class_token=config.class_token,
        global_pool=config.global_pool,
    )
