"""Necks: from an encoder's maps to a feature pyramid of equal width, as dense heads take it.

Each returns an ``OrderedDict`` ``{"0": P_finest, "1": ..., "pool": P_extra}`` (torchvision's convention, so its
detection heads and ``MultiScaleRoIAlign`` read it) and has ``out_channels``.

* :class:`FPN` -- torchvision's ``FeaturePyramidNetwork`` (Lin et al. 2017) over a hierarchical encoder's stages
  (Hiera), with a stride-2 max-pool level on top, as Mask R-CNN uses;
* :class:`TopDownNeck` -- SAM2's lighter neck: 1x1 lateral convs and a nearest-upsampled top-down sum, no 3x3
  output convs;
* :class:`SimpleFeaturePyramid` -- ViTDet's (Li et al. 2022) pyramid from the single last map of a plain ViT or
  T2T-ViT: deconvolutions up to 4x, a max-pool down to 1/2x.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


def _named(maps: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Pyramid levels named as torchvision names them, plus a stride-2 max-pool level ("pool") on the coarsest."""
    out = OrderedDict((str(i), m) for i, m in enumerate(maps))
    out["pool"] = F.max_pool2d(maps[-1], kernel_size=1, stride=2)
    return out


class FPN(nn.Module):
    """torchvision's FPN over ``in_channels`` (finest first) to ``out_channels``, with its max-pool top level."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, maps: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class TopDownNeck(nn.Module):
    """SAM2's neck (``FpnNeck``): each level through a 1x1 conv to ``out_channels``, then from the coarsest down
    ``lateral + nearest-upsampled coarser``; no 3x3 smoothing convs."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out_channels = out_channels

    def forward(self, maps: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        lateral = [conv(m) for conv, m in zip(self.laterals, maps)]
        out = [lateral[-1]]
        for x in reversed(lateral[:-1]):
            out.insert(0, x + F.interpolate(out[0], size=x.shape[-2:], mode="nearest"))
        return _named(out)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one map ``[B, C, H, W]`` at stride s to maps at strides s/4, s/2, s, 2s
    (``scales`` 4, 2, 1, 0.5), each through 1x1 and 3x3 convs with LayerNorm to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int = 256, scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        C = in_channels
        self.stages = nn.ModuleList()
        for scale in scales:
            if scale == 4.0:
                resize, width = [nn.ConvTranspose2d(C, C // 2, 2, stride=2), LayerNorm2d(C // 2), nn.GELU(),
                                 nn.ConvTranspose2d(C // 2, C // 4, 2, stride=2)], C // 4
            elif scale == 2.0:
                resize, width = [nn.ConvTranspose2d(C, C // 2, 2, stride=2)], C // 2
            elif scale == 1.0:
                resize, width = [], C
            elif scale == 0.5:
                resize, width = [nn.MaxPool2d(2, stride=2)], C
            else:
                raise ValueError(f"scale {scale} is not one of ViTDet's 4, 2, 1, 0.5")
            self.stages.append(nn.Sequential(
                *resize, nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)))
        self.out_channels = out_channels

    def forward(self, maps: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return _named([stage(maps[-1]) for stage in self.stages])


NECKS = {"fpn": FPN, "topdown": TopDownNeck, "simple": SimpleFeaturePyramid}
