"""Masked-autoencoder pretraining: masks, pixel targets and the MAE models. Importing registers ``mae_*`` names."""

from . import configs as _configs  # noqa: F401  (registers the MAE family)
from .hiera_mae import MaskedAutoencoderHiera
from .masking import keep_count, random_visible
from .output import MAEOutput
from .vit_mae import MaskedAutoencoderViT
from .vit_video_mae import MaskedAutoencoderVideoViT

__all__ = ["MAEOutput", "MaskedAutoencoderHiera", "MaskedAutoencoderVideoViT", "MaskedAutoencoderViT", "keep_count",
           "random_visible"]
