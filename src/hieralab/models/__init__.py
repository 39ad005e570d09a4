"""Models and their registry. Importing this module registers every named configuration."""

from . import hiera_configs as _hiera_configs  # noqa: F401  (registers the Hiera family)
from . import hieradet_configs as _hieradet_configs  # noqa: F401  (registers SAM 2's HieraDet family)
from . import t2t_configs as _t2t_configs  # noqa: F401  (registers the T2T-ViT family)
from . import vit_configs as _vit_configs  # noqa: F401  (registers the plain ViT family)
from . import dense as _dense  # noqa: F401  (registers the detector and the segmenter)
from . import action as _action  # noqa: F401  (registers the action detector)
from .factory import create_model
from .hiera import Hiera
from .registry import list_models, model_config
from .t2t_vit import T2TViT
from .vit import VisionTransformer

__all__ = ["Hiera", "T2TViT", "VisionTransformer", "create_model", "list_models", "model_config"]
