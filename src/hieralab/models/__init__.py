"""Models and their registry. Importing this module registers every named configuration."""

from . import hiera_configs as _hiera_configs  # noqa: F401  (registers the Hiera family)
from .hiera import Hiera
from .registry import create_model, list_models, model_config

__all__ = ["Hiera", "create_model", "list_models", "model_config"]
