"""torch.hub entry points: every registered hieralab model, with its public weights by name.

    model = torch.hub.load("<this repository's folder>", "hiera_base_224", pretrained=True, source="local")
    model = torch.hub.load("<owner>/hieralab", "hiera_base_224", pretrained="mae_in1k")  # from GitHub

``pretrained=True`` takes the model's default tag, a string names the tag; other keyword arguments are the model's
(as ``hieralab.create_model``). Weights are fetched once into hieralab's cache (``HIERALAB_CACHE``, the hub cache for
hub files); ``HIERALAB_MIRROR`` and ``HIERALAB_OFFLINE`` apply (docs/weights.md).
"""

import os
import sys

dependencies = ["torch", "torchvision", "timm", "safetensors", "huggingface_hub", "filelock"]

try:
    import hieralab  # noqa: F401  (installed, or this checkout on the path already)
except ImportError:  # a checkout torch.hub downloaded or was pointed at: the package lives in src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from hieralab.models import create_model as _create_model  # noqa: E402
from hieralab.models import list_models as _list_models  # noqa: E402


def _entry(name: str):
    def build(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"hieralab's {name}; pretrained=True loads its default public weights, pretrained='TAG' "
                     "another tag (`hieralab weights` lists them); other keyword arguments go to the model.")
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
