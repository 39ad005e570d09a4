"""Building blocks, one per file."""

from .attention import Attention, MaskUnitAttention
from .block import Block
from .drop_path import DropPath
from .heads import ClassifierHead
from .mlp import Mlp
from .patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "ClassifierHead", "DropPath", "MaskUnitAttention", "Mlp", "PatchEmbed"]
