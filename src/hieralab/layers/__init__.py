"""Building blocks, one per file."""

from .attention import MaskUnitAttention
from .drop_path import DropPath
from .heads import ClassifierHead
from .mlp import Mlp
from .patch_embed import PatchEmbed

__all__ = ["ClassifierHead", "DropPath", "MaskUnitAttention", "Mlp", "PatchEmbed"]
