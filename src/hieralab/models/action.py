"""Spatio-temporal action detection on a video encoder: the RoI head of SlowFast's AVA model (Feichtenhofer et al.
2019, ``slowfast/models/head_helper.py: ResNetRoIHead``), as VideoMAE and Hiera use it for AVA.

The keyframe's clip goes through the encoder; the chosen stage's map ``[B, C, T, H, W]`` is averaged over time, each
person's box is pooled from it with RoIAlign, max-pooled over space, and a linear layer (after dropout) gives one
logit per action. Actions are multi-label: the loss is a sigmoid per action (binary cross-entropy), and the head
returns logits.

Registered as ``action_detector`` (hidden from ``hieralab list``, as the detector is), so ``save_pretrained`` /
``from_pretrained`` and layer-wise lr decay work as for the encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import roi_align

from .contract import check_backbone
from .dense import DenseModel
from .registry import register

FEATURES = ("last", "stage1", "stage2", "stage3", "stage4", "fuse")


# ---------------------------------------------------------------- pure helpers
def feature_stages(feature: str, num_stages: int) -> list[int]:
    """The 0-based stages ``feature`` names: ``"last"`` the last (a plain ViT's only map), ``"stageN"`` the N-th
    (1-based), ``"fuse"`` the last two."""
    if feature == "last":
        return [num_stages - 1]
    if feature == "fuse":
        return [max(num_stages - 2, 0), num_stages - 1] if num_stages > 1 else [0]
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
    stage = int(feature.removeprefix("stage")) - 1
    if stage >= num_stages:
        if num_stages == 1:
            raise ValueError(f"feature={feature!r}: the encoder is a plain ViT with one map (its last block's): pass "
                             "feature=last (the default) or stage1")
        raise ValueError(f"feature={feature!r}: the encoder has {num_stages} stages (stage1..stage{num_stages})")
    return [stage]


def boxes_with_index(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """RoIAlign's ``[sum N_i, 5]`` rows ``(batch index, x1, y1, x2, y2)`` of per-clip boxes ``[N_i, 4]``."""
    rows = [torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype, device=b.device), b], dim=1)  # [N_i, 5]
            for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def pool_boxes(fmap: torch.Tensor, boxes: Sequence[torch.Tensor], stride: int, size: int = 7) -> torch.Tensor:
    """One vector per box ``[sum N_i, C]`` of a map ``[B, C, H, W]`` at ``stride`` pixels a cell: RoIAlign of the
    boxes (pixels, ``[N_i, 4]`` x1, y1, x2, y2 per map) to ``size x size`` cells, then the max over them (SlowFast's
    ``MaxPool2d`` after ``ROIAlign``, with ``aligned=True`` as its detectron2 RoIAlign)."""
    rois = boxes_with_index([b.to(fmap.dtype) for b in boxes])  # [N, 5]
    cells = roi_align(fmap, rois.to(fmap.device), output_size=size, spatial_scale=1.0 / stride,
                      sampling_ratio=0, aligned=True)  # [N, C, size, size]
    return cells.amax(dim=(-2, -1))  # [N, C]


# ---------------------------------------------------------------- model
class ActionDetector(DenseModel):
    """A video encoder (``encoder`` by name, ``encoder_args``) and an RoI head: ``forward(clips [B, C, T, H, W],
    boxes: list of B [N_i, 4] in pixels (x1, y1, x2, y2)) -> logits [sum N_i, num_classes]``, the boxes' rows in
    order (clip 0's first). ``feature``: the stage whose map is pooled (``"stageN"``, 1-based), or ``"fuse"``: the
    last two stages, each pooled at its own stride, concatenated; a plain (video) ViT has one map, ``"stage1"``.
    ``roi_size``: RoIAlign's cells a side (SlowFast: 7)."""

    def __init__(
        self,
        *,
        encoder: str = "hiera_mini_8x32",
        encoder_args: dict[str, Any] | None = None,
        num_classes: int = 80,
        feature: str = "last",
        dropout: float = 0.5,
        roi_size: int = 7,
    ):
        super().__init__()
        self.body = check_backbone(self._encoder(encoder, dict(encoder_args or {})))
        if self.body.ndim != 3:
            raise ValueError(f"encoder={encoder!r} takes images; action detection needs a video encoder "
                             "(hieralab list '*x*', hieralab list '*_video')")
        info = list(self.body.feature_info)
        # The levels to choose from, by the backbone contract: a hierarchical encoder's stages, or a plain one's single
        # map, its last block (as the dense tasks take it; MAE-ST's and VideoMAE's AVA heads pool that one too).
        levels = list(range(len(info))) if self.body.hierarchical else [len(info) - 1]
        self.stages = [levels[s] for s in feature_stages(feature, len(levels))]
        self.strides = [int(info[s]["reduction"]) for s in self.stages]
        width = sum(int(info[s]["num_chs"]) for s in self.stages)
        self.roi_size = roi_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.num_classes = num_classes

    _prefix = "body."  # where the encoder's parameters are in the state dict

    @property
    def encoder(self) -> nn.Module:
        return self.body

    def maps(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """The chosen stages' maps of ``clips [B, C, T, H, W]``, averaged over time: each ``[B, C_s, H_s, W_s]``."""
        maps = self.body.forward_intermediates(clips, self.stages, intermediates_only=True)  # [B, C_s, T_s, H_s, W_s]
        return [m.mean(dim=2) for m in maps]  # [B, C_s, H_s, W_s]

    def pool(self, maps: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """The boxes' features ``[sum N_i, sum C_s]`` from the time-averaged maps."""
        return torch.cat([pool_boxes(m, boxes, s, self.roi_size) for m, s in zip(maps, self.strides)], dim=1)

    def forward(self, clips: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        features = self.pool(self.maps(clips), boxes)  # [N, C]
        return self.head(self.dropout(features))  # [N, K] logits


register("action_detector", ActionDetector)
