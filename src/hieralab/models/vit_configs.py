"""The plain ViT family as data: ViT-B/L/H of Dosovitskiy et al. (H at patch 14, as MAE) and DeiT's Ti/S, at 224 px;
MAE-ST's video ViT-B/L/H at 16 x 224."""

from __future__ import annotations

from .registry import register
from .vit import VisionTransformer
from .vit_video import VideoVisionTransformer

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

# MAE-ST's video ViTs (Feichtenhofer et al. 2022) at 16 frames x 224 px: 2x16x16 tubelets, 8x14x14 tokens, separate
# space / time position tables, mean-pooled head for the 400 Kinetics classes. MAE-ST's "huge_patch14" builds patch 16.
VIDEO_16x224 = dict(input_size=(16, 224, 224), patch_size=16, t_patch_size=2)
for size in ("base", "large", "huge"):
    image = VARIANTS[f"vit_{size}_patch{14 if size == 'huge' else 16}_224"]
    arch = {k: v for k, v in image.items() if k != "patch_size"}
    register(f"vit_{size}_patch16_video", VideoVisionTransformer, **arch, **VIDEO_16x224)
# A small one (8 frames at 32 px; tests, CPU demos, the bundled action clips): 2x4x4 tubelets -> 4x8x8 tokens.
register("vit_mini_patch4_video", VideoVisionTransformer, input_size=(8, 32, 32), patch_size=4, t_patch_size=2,
         embed_dim=64, depth=4, num_heads=4, num_classes=10)
