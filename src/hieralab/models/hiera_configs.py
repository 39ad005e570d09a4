"""The Hiera family as data: the official image and video sizes, and timm's abswin variants."""

from __future__ import annotations

from .hiera import Hiera
from .registry import register

SIZES = {  # embed_dim, num_heads, stages (Table 2 of the paper; the official factories)
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2)),
    "base": dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4)),
    "huge": dict(embed_dim=256, num_heads=4, stages=(2, 6, 36, 4)),
}

VIDEO_16x224 = dict(  # Kinetics-400: 16 frames at 224 px, tokens 8x56x56, separate space / time embeddings
    input_size=(16, 224, 224), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), pos_embed="separate", num_classes=400,
)

ABSWIN_256 = dict(input_size=(256, 256), pos_embed="abswin", layer_scale=1e-5)

for size, arch in SIZES.items():
    register(f"hiera_{size}_224", Hiera, **arch)
for size in ("base", "base_plus", "large", "huge"):
    register(f"hiera_{size}_16x224", Hiera, **SIZES[size], **VIDEO_16x224)
register("hiera_small_abswin_256", Hiera, **SIZES["small"], **ABSWIN_256, global_pos_size=(16, 16), expand_proj=False)
register("hiera_base_abswin_256", Hiera, **SIZES["base"], **ABSWIN_256, global_pos_size=(14, 14))

# A small Hiera for 32 px images (Fashion-MNIST, CIFAR-sized data, the demo and tests): 2 px patches, 16x16 tokens,
# 4x4-token mask units (8x8 px, 16 units per image) and three stages of widths 64 / 128 / 256.
MINI_32 = dict(
    input_size=(32, 32), embed_dim=64, num_heads=2, stages=(1, 2, 2), q_pool=2, mask_unit_size=(4, 4),
    mask_unit_attn=(True, True, False), patch_kernel=(3, 3), patch_stride=(2, 2), patch_padding=(1, 1),
)
register("hiera_mini_32", Hiera, **MINI_32, num_classes=10)

# A small video Hiera (8 frames at 32 px; tests, CPU demos): 3x3x3 patches at stride 2 -> 4x16x16 tokens, mask units
# of 1x4x4 tokens (64 per clip), separate space / time embeddings as the official video models.
MINI_8x32 = dict(
    input_size=(8, 32, 32), embed_dim=64, num_heads=2, stages=(1, 2, 2), q_pool=2, q_stride=(1, 2, 2),
    mask_unit_size=(1, 4, 4), mask_unit_attn=(True, True, False), patch_kernel=(3, 3, 3), patch_stride=(2, 2, 2),
    patch_padding=(1, 1, 1), pos_embed="separate",
)
register("hiera_mini_8x32", Hiera, **MINI_8x32, num_classes=10)
