"""Dense prediction on any encoder here: torchvision's detectors (Mask R-CNN, RetinaNet, FCOS) and a semantic FPN
head, on a backbone of our encoder's feature maps (timm's feature interface) and a neck (``layers/necks.py``).

Nothing of torchvision's detection machinery is rewritten: its anchor generator, RPN, RoIAlign, box and mask heads,
losses and post-processing run as they are; this module only builds the backbone they take (an ``OrderedDict`` of
pyramid maps with ``out_channels``) and sizes the heads for small images when asked. Both models are registered
(``detector``, ``segmenter``), so ``save_pretrained`` / ``from_pretrained`` and layer-wise lr decay work as for the
encoders.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ..layers.necks import NECKS
from .base import PretrainedMixin
from .checkpoint import load_checkpoint
from .features import FeatureMaps
from .contract import check_backbone
from .registry import build, register

HEADS = ("maskrcnn", "retinanet", "fcos")


def size_multiple(encoder: nn.Module) -> int:
    """The side every input must be a multiple of (the backbone contract's ``size_multiple``)."""
    return check_backbone(encoder).size_multiple


class DenseBackbone(nn.Module):
    """An encoder's maps through a neck: ``[B, C, H, W] -> OrderedDict`` of pyramid levels (``out_channels``).

    A hierarchical encoder (Hiera) gives every stage to the neck; a plain one (ViT, T2T-ViT) its last block, which
    ViTDet's simple pyramid spreads over four strides. ``neck="auto"`` takes the family's own neck when its encoder
    names one (``default_neck``: SAM 2's ``topdown`` for HieraDet), else torchvision's FPN or that pyramid.
    """

    def __init__(self, encoder: nn.Module, *, neck: str = "auto", channels: int = 256):
        super().__init__()
        hierarchical = check_backbone(encoder).hierarchical
        self.body = FeatureMaps(encoder, None if hierarchical else 1)
        if neck == "auto":
            neck = getattr(encoder, "default_neck", None) or ("fpn" if hierarchical else "simple")
        self.single_scale = neck == "simple"
        if neck not in NECKS:
            raise ValueError(f"neck must be 'auto' or one of {', '.join(NECKS)}, got {neck!r}")
        widths = self.body.feature_info.channels()
        self.neck = NECKS[neck](widths[-1] if neck == "simple" else widths, channels)
        self.out_channels = channels
        self.size_multiple = size_multiple(encoder)

    @property
    def strides(self) -> list[int]:
        """The pixel stride of each pyramid level, finest first (the "pool" level included)."""
        red = self.body.feature_info.reduction()
        levels = [red[-1] // 4, red[-1] // 2, red[-1], red[-1] * 2] if self.single_scale else list(red)
        return [*levels, levels[-1] * 2]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.neck(self.body(x))


class DenseModel(PretrainedMixin, nn.Module):
    """What the dense models share: the encoder by name (``encoder``, ``encoder_args``), its weights from a
    checkpoint, layer ids for layer-wise lr decay (the encoder's, the neck and heads as the last layer)."""

    is_dense = True
    backbone: DenseBackbone
    _prefix = "backbone.body.model."  # where the encoder's parameters are in the state dict

    def _encoder(self, encoder: str, encoder_args: dict[str, Any]) -> nn.Module:
        return build(encoder, **{**encoder_args, "num_classes": 0})

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.body.model

    def load_encoder(self, path_or_state: Any) -> list[str]:
        """Weights for the encoder alone (an MAE run's ``encoder/``, official, timm files ...); returns what they
        did not have."""
        return load_checkpoint(self.encoder, path_or_state)

    # layer-wise lr decay: the encoder's layers, then everything else (neck, heads) as the top layer

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith(self._prefix):
            return self.encoder.layer_id(param_name[len(self._prefix):])
        return self.encoder.num_layers - 1

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        inner = self.encoder.group_matcher(coarse)
        return {k: v.replace("^", "^" + self._prefix.replace(".", r"\."), 1) for k, v in inner.items()}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {self._prefix + n for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError("build the dense model again with num_classes=...")


class Detector(DenseModel):
    """torchvision's Mask R-CNN (default), RetinaNet or FCOS on an encoder here. ``forward(images, targets)``
    takes a list of ``[C, H, W]`` tensors in 0..1 (any sizes) and torchvision's target dicts; it returns the loss
    dict in training and torchvision's detections in eval mode. ``num_classes`` counts the background (torchvision's
    convention): 11 for the 10 Fashion-MNIST classes.

    ``min_size`` / ``max_size``: torchvision's resize of every input (short side, long-side cap); inputs are padded
    to a multiple of the encoder's mask unit / patch. ``anchor_sizes``: one per pyramid level, in pixels (default
    8x each level's stride, Mask R-CNN's 32 px at stride 4).
    ``box_head_dim`` / ``mask_head_layers``: the widths of torchvision's box (``TwoMLPHead``) and mask
    (``MaskRCNNHeads``) heads, 1024 and (256,) * 4 in the paper's Mask R-CNN; smaller for small images.
    ``roi_batch``: the proposals sampled per image to train the box and mask heads (512 in the paper).
    """

    def __init__(
        self,
        *,
        encoder: str = "hiera_mini_32",
        encoder_args: dict[str, Any] | None = None,
        head: str = "maskrcnn",
        num_classes: int = 11,
        neck: str = "auto",
        neck_channels: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        anchor_sizes: Sequence[int] | None = None,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        box_head_dim: int = 1024,
        mask_head_layers: Sequence[int] = (256, 256, 256, 256),
        roi_batch: int = 512,
        detections_per_img: int = 100,
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if head == "fcos" and neck_channels % 32:
            raise ValueError(f"neck_channels={neck_channels}: FCOS's head normalises in 32 groups; "
                             "use a multiple of 32")
        enc = self._encoder(encoder, dict(encoder_args or {}))
        backbone = DenseBackbone(enc, neck=neck, channels=neck_channels)  # held by torchvision's model
        mean, std = list(image_mean)[: enc.in_chans], list(image_std)[: enc.in_chans]
        common = dict(min_size=min_size, max_size=max_size, image_mean=mean, image_std=std)
        levels = len(backbone.strides)
        anchor_sizes = anchor_sizes or [8 * s for s in backbone.strides]  # FPN's 32 px at stride 4
        if len(anchor_sizes) != levels:
            raise ValueError(f"anchor_sizes needs {levels} sizes, one per pyramid level, got {tuple(anchor_sizes)}")
        if head == "maskrcnn":
            names = [str(i) for i in range(levels - 1)]  # RoIs are pooled from every level but "pool"
            C, res = neck_channels, 7
            self.detector = MaskRCNN(
                backbone, num_classes=None, **common,
                rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * levels),
                box_roi_pool=MultiScaleRoIAlign(names, output_size=res, sampling_ratio=2),
                box_head=TwoMLPHead(C * res * res, box_head_dim),
                box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
                mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
                mask_head=MaskRCNNHeads(C, list(mask_head_layers), 1),
                mask_predictor=MaskRCNNPredictor(mask_head_layers[-1], mask_head_layers[-1], num_classes),
                box_batch_size_per_image=roi_batch, box_detections_per_img=detections_per_img)
        else:  # one-stage heads: anchors of three scales per level, as torchvision's RetinaNet
            sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
            anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels) if head == "retinanet" else \
                AnchorGenerator(tuple((s,) for s in anchor_sizes), ((1.0,),) * levels)
            cls = RetinaNet if head == "retinanet" else FCOS
            self.detector = cls(backbone, num_classes, **common, anchor_generator=anchors,
                                detections_per_img=detections_per_img)
        self.detector.transform.size_divisible = backbone.size_multiple
        self.head_kind = head

    _prefix = "detector.backbone.body.model."

    @property
    def backbone(self) -> DenseBackbone:
        return self.detector.backbone

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        return self.detector(images, targets)


class SemanticHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al. 2019): each pyramid level through 3x3 conv + GroupNorm +
    ReLU blocks, upsampled 2x per block down to the finest level, summed, then a 1x1 conv to class logits."""

    def __init__(self, channels: int, num_classes: int, levels: int, width: int = 128):
        super().__init__()
        self.branches = nn.ModuleList()
        for level in range(levels):
            blocks: list[nn.Module] = []
            for k in range(max(1, level)):
                blocks += [nn.Conv2d(channels if k == 0 else width, width, 3, padding=1, bias=False),
                           nn.GroupNorm(min(32, width // 4), width), nn.ReLU(inplace=True)]
                if level > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*blocks))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, pyramid: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
        maps = [v for k, v in pyramid.items() if k != "pool"]
        size = maps[0].shape[-2:]
        x = sum(F.interpolate(branch(m), size=size, mode="bilinear", align_corners=False) if i else branch(m)
                for i, (branch, m) in enumerate(zip(self.branches, maps)))
        return self.classifier(x)  # [B, K, H_0, W_0] logits at the finest level's stride


class Segmenter(DenseModel):
    """Semantic segmentation: encoder -> neck -> :class:`SemanticHead`; ``forward(x [B, C, H, W])`` returns logits
    ``[B, num_classes, H, W]`` at the input's size (``H``, ``W`` multiples of the encoder's mask unit / patch)."""

    def __init__(
        self,
        *,
        encoder: str = "hiera_mini_32",
        encoder_args: dict[str, Any] | None = None,
        num_classes: int = 11,
        neck: str = "auto",
        neck_channels: int = 128,
        head_width: int = 128,
    ):
        super().__init__()
        enc = self._encoder(encoder, dict(encoder_args or {}))
        self.backbone = DenseBackbone(enc, neck=neck, channels=neck_channels)
        self.head = SemanticHead(neck_channels, num_classes, len(self.backbone.strides) - 1, head_width)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


register("detector", Detector)
register("segmenter", Segmenter)
