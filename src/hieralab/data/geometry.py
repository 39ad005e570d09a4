"""The input geometry of a run, decided in one place: image or clip, frames, frame stride, side, channels. Training,
validation, the online probe, extraction, evaluation and the pictures all take it from here, so that what a model
is evaluated on is what it was trained on (the probe of a video run reads the frames training reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..models import registry
from .transforms import eval_transform
from .video import video_eval_transform


def takes_clips(name: str, model_args: dict[str, Any] | None = None) -> bool:
    """Whether model ``name`` (with ``model_args``) takes clips ``[B, C, T, H, W]``, read from its config before it
    is built (to pick the dataset's kind)."""
    return len({**registry.model_config(name), **(model_args or {})}.get("input_size", ())) == 3


def model_frames(encoder: nn.Module) -> int | None:
    """The frames a video encoder was built for (its ``input_size[0]``), None for an image encoder."""
    if getattr(encoder, "ndim", 2) != 3:
        return None
    return int(encoder.config["input_size"][0])


@dataclass(frozen=True)
class Geometry:
    """What one input is: ``[C, H, W]`` images, or ``[C, T, H, W]`` clips of ``num_frames`` frames taken every
    ``frame_stride``-th."""

    img_size: int
    channels: int
    num_frames: int | None = None  # None: images
    frame_stride: int = 4

    @property
    def video(self) -> bool:
        return self.num_frames is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` or ``(C, T, H, W)``."""
        frames = (self.num_frames,) if self.video else ()
        return (self.channels, *frames, self.img_size, self.img_size)

    @classmethod
    def of(cls, encoder: nn.Module, img_size: int, *, num_frames: int | None = None,
           frame_stride: int = 4) -> Geometry:
        """The geometry of ``encoder``'s input at ``img_size``: clips of ``num_frames`` (default: the frames it was
        built for) for a video encoder, images otherwise."""
        frames = model_frames(encoder)
        return cls(img_size=img_size, channels=encoder.in_chans,
                   num_frames=(num_frames or frames) if frames is not None else None, frame_stride=frame_stride)

    def record(self) -> dict[str, Any]:
        """As plain data, for the files a run writes (``classifier.json``)."""
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "frame_stride" and not self.video)}

    @classmethod
    def from_record(cls, meta: dict[str, Any], img_size: int | None = None) -> Geometry:
        return cls(img_size=img_size or meta["img_size"], channels=meta.get("channels", 3),
                   num_frames=meta.get("num_frames"), frame_stride=meta.get("frame_stride", 4))

    def eval_transform(self, mean: Sequence[float], std: Sequence[float], *, views: tuple[int, int] = (1, 1),
                       decoder: str = "auto"):
        """The evaluation view of an image (resize, centre crop) or a clip (``views`` = temporal x spatial clips
        and crops; one: the middle clip, centre crop)."""
        if self.video:
            return video_eval_transform(self.num_frames, self.frame_stride, self.img_size, mean, std,
                                        temporal_views=views[0], spatial_views=views[1], decoder=decoder)
        return eval_transform(self.img_size, mean, std, channels=self.channels)
