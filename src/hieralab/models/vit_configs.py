"""The plain ViT family as data: ViT-B/L/H of Dosovitskiy et al. (H at patch 14, as MAE) and DeiT's Ti/S, at 224 px."""

from __future__ import annotations

from .registry import register
from .vit import VisionTransformer

VARIANTS = {  # name: embed_dim, depth, num_heads, patch_size (Table 1 of the ViT paper; DeiT for tiny and small)
    "vit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
    "vit_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    "vit_huge_patch14_224": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}

for name, arch in VARIANTS.items():
    register(name, VisionTransformer, **arch)

# A small ViT for 32 px images (Fashion-MNIST, the demo and tests): 4 px patches, 8x8 tokens.
register("vit_mini_patch4_32", VisionTransformer, img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
         num_classes=10)
# A smaller one for the MAE study (`hieralab study`): 64-d, 4 blocks, so that 10 MAE epochs fit in about 25 minutes.
register("vit_micro_patch4_32", VisionTransformer, img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4,
         num_classes=10)
