"""hieralab: hierarchical vision transformers and sparse masked-autoencoder pretraining."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `hieralab --version` and `import hieralab` stay instant; the
# first model access imports torch.
_EXPORTS = {
    "Hiera": "models", "T2TViT": "models", "VisionTransformer": "models", "create_model": "models",
    "list_models": "models", "model_config": "models",
    "MaskedAutoencoderHiera": "mae", "MaskedAutoencoderViT": "mae",
    "from_pretrained": "models.checkpoint", "load_checkpoint": "models.checkpoint",
    "save_pretrained": "models.checkpoint", "optimize_for_inference": "models.inference",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hieralab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
