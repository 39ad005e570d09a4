"""Image transforms (torchvision transforms v2; timm's recipe for fine-tuning). Random steps draw from the sample's
named streams (``Seeded``, see ``data/streams.py``): crops from "crop", flips from "flip", timm's pipeline from
"augment"."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from .streams import Seeded


def mae_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *,
                        scale: Sequence[float] = (0.2, 1.0), hflip: bool = True, channels: int = 3) -> v2.Compose:
    """MAE pretraining augmentation: RandomResizedCrop (bicubic), horizontal flip, normalise."""
    return v2.Compose([
        v2.ToImage(),
        v2.Grayscale(channels) if channels != 3 else v2.RGB(),
        *random_crop_flip(img_size, scale, hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean)[:channels], list(std)[:channels]),
    ])


def random_crop_flip(img_size: int, scale: Sequence[float], hflip: bool) -> list[Callable]:
    """MAE's RandomResizedCrop (bicubic) and horizontal flip, each on its own stream."""
    crop = v2.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC,
                                antialias=True)
    return [Seeded("crop", crop), *([Seeded("flip", v2.RandomHorizontalFlip())] if hflip else [])]


def preprocessing(img_size: int, mean: Sequence[float], std: Sequence[float], *, channels: int = 3,
                  crop_pct: float = 1.0) -> dict:
    """The evaluation preprocessing as plain data (what ``classifier.json`` carries, so a deployment needs nothing
    else): convert to ``"L"`` / ``"RGB"``, resize the short side to ``resize`` (the long side to
    ``int(long * resize / short)``) with PIL's bicubic filter, centre-crop ``crop`` x ``crop`` (offsets
    ``round((side - crop) / 2)``), scale to 0..1, subtract ``mean`` and divide by ``std`` per channel, NCHW."""
    return {"convert": "L" if channels == 1 else "RGB", "resize": int(round(img_size / crop_pct)),
            "interpolation": "bicubic", "crop": img_size, "scale": 1 / 255, "mean": list(mean)[:channels],
            "std": list(std)[:channels], "layout": "NCHW"}


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *, channels: int = 3,
                   crop_pct: float = 1.0) -> v2.Compose:
    """:func:`preprocessing` as a transform: the PIL steps on the PIL image (so PIL alone reproduces them), then
    to a normalised float tensor."""
    pre = preprocessing(img_size, mean, std, channels=channels, crop_pct=crop_pct)
    return v2.Compose([
        v2.Grayscale(1) if pre["convert"] == "L" else v2.RGB(),
        v2.Resize(pre["resize"], interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(pre["crop"]),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre["mean"], pre["std"]),
    ])


def finetune_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *, channels: int = 3,
                       randaug: str | None = "rand-m9-mstd0.5-inc1-mmax9", reprob: float = 0.25,
                       scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5) -> Callable:
    """The MAE / Hiera fine-tuning augmentation, timm's ``create_transform``: RandomResizedCrop (bicubic), flip,
    RandAugment, normalise, random erasing. It runs on RGB; a 1-channel model gets the mean over channels."""
    from timm.data import create_transform

    mean3, std3 = (tuple(mean) * 3)[:3], (tuple(std) * 3)[:3]
    timm_tf = create_transform(img_size, is_training=True, scale=tuple(scale), hflip=hflip, auto_augment=randaug,
                               interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1,
                               mean=mean3, std=std3)
    to_rgb, augment = v2.RGB(), Seeded("augment", timm_tf)

    def transform(image) -> torch.Tensor:
        x = augment(to_rgb(image))  # [3, H, W]
        return x.mean(0, keepdim=True) if channels == 1 else x

    return transform
