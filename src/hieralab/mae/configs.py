"""MAE models as data: every official Hiera size (``mae_hiera_*``, q_pool 2 as the official factories) and the
plain-ViT MAE sizes, image and video (MAE-ST)."""

from __future__ import annotations

from ..models.hiera_configs import MINI_8x32, MINI_32, SIZES, VIDEO_16x224
from ..models import vit_configs as _vit_configs  # noqa: F401  (the ViT sizes the MAE sizes build on)
from ..models.registry import model_config, register
from .hiera_mae import MaskedAutoencoderHiera
from .vit_mae import MaskedAutoencoderViT
from .vit_video_mae import MaskedAutoencoderVideoViT

for size, arch in SIZES.items():
    register(f"mae_hiera_{size}_224", MaskedAutoencoderHiera, **arch, q_pool=2, mask_ratio=0.6)
for size in ("base", "base_plus", "large", "huge"):
    register(f"mae_hiera_{size}_16x224", MaskedAutoencoderHiera, **SIZES[size], **VIDEO_16x224, q_pool=2,
             mask_ratio=0.9)

register("mae_hiera_mini_32", MaskedAutoencoderHiera, **{**MINI_32, "q_pool": 1}, mask_ratio=0.6, decoder_embed_dim=128,
         decoder_depth=2, decoder_num_heads=4)
register("mae_hiera_mini_8x32", MaskedAutoencoderHiera, **{**MINI_8x32, "q_pool": 1}, mask_ratio=0.9,
         decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)

# Plain-ViT MAE (He et al. 2021): 75 % masking, decoder 512-d x 8 blocks x 16 heads for the ImageNet sizes.
for name in ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224", "vit_tiny_patch16_224",
             "vit_small_patch16_224"):
    register(f"mae_{name}", MaskedAutoencoderViT, **model_config(name), mask_ratio=0.75)
register("mae_vit_mini_patch4_32", MaskedAutoencoderViT, **model_config("vit_mini_patch4_32"), mask_ratio=0.75,
         decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
register("mae_vit_micro_patch4_32", MaskedAutoencoderViT, **model_config("vit_micro_patch4_32"), mask_ratio=0.75,
         decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)

# MAE-ST (Feichtenhofer et al. 2022) on the video ViTs at 16 x 224: 90 % of the tubelet tokens hidden, decoder 512-d x
# 4 blocks x 16 heads (PRETRAIN.md's recipe), 8 predicted frames (one per 2-frame token).
for size in ("base", "large", "huge"):
    register(f"mae_vit_{size}_patch16_video", MaskedAutoencoderVideoViT, **model_config(f"vit_{size}_patch16_video"),
             mask_ratio=0.9, decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16, pred_t_dim=8)
register("mae_vit_mini_patch4_video", MaskedAutoencoderVideoViT, **model_config("vit_mini_patch4_video"),
         mask_ratio=0.9, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, pred_t_dim=4)
