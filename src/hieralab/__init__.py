"""hieralab: hierarchical vision transformers and sparse masked-autoencoder pretraining."""

from .models import Hiera, T2TViT, VisionTransformer, create_model, list_models, model_config
from .mae import MaskedAutoencoderHiera, MaskedAutoencoderViT
from .models.inference import optimize_for_inference
from .models.checkpoint import from_pretrained, load_checkpoint, save_pretrained

__version__ = "0.1.0"
__all__ = [
    "Hiera", "MaskedAutoencoderHiera", "MaskedAutoencoderViT", "T2TViT", "VisionTransformer", "__version__", "create_model",
    "from_pretrained", "list_models", "load_checkpoint", "model_config",
    "optimize_for_inference", "save_pretrained",
]
