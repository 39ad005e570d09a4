"""hieralab: hierarchical vision transformers and sparse masked-autoencoder pretraining."""

__version__ = "0.1.0"  # first, so that modules imported below may read it

from .mae import MaskedAutoencoderHiera, MaskedAutoencoderViT  # noqa: E402
from .models import Hiera, T2TViT, VisionTransformer, create_model, list_models, model_config  # noqa: E402
from .models.checkpoint import from_pretrained, load_checkpoint, save_pretrained  # noqa: E402
from .models.inference import optimize_for_inference  # noqa: E402

__all__ = [
    "Hiera", "MaskedAutoencoderHiera", "MaskedAutoencoderViT", "T2TViT", "VisionTransformer", "__version__",
    "create_model", "from_pretrained", "list_models", "load_checkpoint", "model_config", "optimize_for_inference",
    "save_pretrained",
]
