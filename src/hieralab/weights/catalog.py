"""The public weights of the model families hieralab implements, as data: one :class:`Weights` per model and tag.

Sources, read from the releases themselves (URLs as their owners publish them):

- official Hiera: the ``pretrained_model({...})`` decorators of ``hiera/hiera.py`` and ``hiera/hiera_mae.py``
  (hiera-transformer 0.1.4); accuracy from its README (IN-1K top-1, K400 top-1).
- timm: ``default_cfgs`` of ``timm/models/hiera.py``, ``hieradet_sam2.py`` and ``vision_transformer.py`` (timm 1.0.31),
  each a hub repo ``timm/<model>.<tag>`` holding ``model.safetensors``.
- transformers: ``facebook/hiera-<size>-224-hf`` (``HieraModel``, the MAE encoder) and ``-in1k-hf``
  (``HieraForImageClassification``), made by ``convert_hiera_to_hf.py`` from the official files.
- MAE with a plain ViT: facebookresearch/mae README (pre-trained and fine-tuned tables) and its visualisation demo
  (checkpoints with the decoder, trained on raw pixels).
- MAE-ST's video ViTs: the facebookresearch/mae_st README's pre-trained tables (ViT-L / ViT-H on Kinetics-400 / 600 /
  700, 90 % masking, 1600 effective epochs, "converted from the PySlowFast codebase"; md5 prefixes only).
- T2T-ViT: the yitu-opensource/T2T-ViT README's release table.
- SAM 2 / SAM 2.1 image-encoder trunks: the checkpoints the facebookresearch/sam2 README lists (J&F from that README),
  and timm's ``sam2_hiera_*`` copies of their trunks (``hieradet_sam2.py``).

None of these releases publishes a sha256 (the MAE README gives md5 prefixes only), so ``sha256`` is empty
everywhere: a direct download records the hash it got the first time and checks it afterwards; hub files are checked
against the hub's own LFS sha256 (the name of the blob in its cache).

This module knows names and sources only; ``hieralab.models`` builds the models and reads the files.
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

HUB_PREFIX = "hf-hub:"
FORMATS = {  # what the file holds, in the words of the table in docs/weights.md
    "official": "official .pth ({'model_state': ...})",
    "mae": "MAE .pth ({'model': ...})",
    "t2t": "timm training .pth.tar (its EMA weights when present)",
    "timm": "timm safetensors",
    "transformers": "transformers safetensors",
    "hieralab": "hieralab save_pretrained folder",
    "sam2": "SAM 2 .pt ({'model': ...}, the whole SAM 2)",
}


@dataclass(frozen=True)
class Weights:
    """One public checkpoint of a registered model: ``model.tag``, where it is, what it holds and what it is worth.

    ``url`` is a direct download; ``hub`` (``ORG/REPO``) with ``filename`` a file on the Hugging Face hub (exactly one
    of the two). ``model_args`` are the constructor arguments the file was trained with where they differ from the
    registered model's (a class count, an input size, a pooling); the user's own arguments go on top.
    """

    model: str
    tag: str
    format: str
    trained_on: str
    license: str
    accuracy: str = ""  # as its source reports it; empty when it reports none (a pretraining checkpoint)
    url: str = ""
    hub: str = ""
    filename: str = "model.safetensors"
    sha256: str = ""  # published sha256 (hex), empty when none is
    origin: str = ""  # the release a converted copy was made from
    note: str = ""
    default: bool = False
    size: int | None = None  # bytes, when known
    model_args: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if bool(self.url) == bool(self.hub):
            raise ValueError(f"{self.name}: give exactly one of url= and hub=")
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: unknown format {self.format!r} (one of {', '.join(FORMATS)})")
        if "." in self.model or not self.tag:
            raise ValueError(f"{self.name}: a model name has no dot and a tag is not empty")
        object.__setattr__(self, "model_args", types.MappingProxyType(dict(self.model_args)))

    @property
    def name(self) -> str:
        """``model.tag``: how the weights are asked for."""
        return f"{self.model}.{self.tag}"

    @property
    def source(self) -> str:
        """The URL, or ``hf-hub:ORG/REPO/FILE``."""
        return self.url or f"{HUB_PREFIX}{self.hub}/{self.filename}"


# ---------------------------------------------------------------- the entries
_HIERA = "https://dl.fbaipublicfiles.com/hiera"
_NC = "CC-BY-NC-4.0"
_IN1K_MAE = "ImageNet-1k (MAE pretraining)"
_IN1K_FT = "ImageNet-1k (MAE pretraining, supervised fine-tuning)"
_K400_MAE = "Kinetics-400 (MAE pretraining)"
_K400_FT = "Kinetics-400 (MAE pretraining, supervised fine-tuning)"
_ENCODER = "the MAE checkpoint's encoder (pretrained with q_pool 2); decoder dropped, head left initialised"

# size: (official top-1 on IN-1k, transformers' spelling)
_IMAGE_SIZES = {"tiny": ("82.8", "tiny"), "small": ("83.8", "small"), "base": ("84.5", "base"),
                "base_plus": ("85.2", "base-plus"), "large": ("86.1", "large"), "huge": ("86.9", "huge")}
_VIDEO_SIZES = {"base": "84.0", "base_plus": "85.0", "large": "87.3", "huge": "87.8"}  # K400 top-1


def _hiera_image(size: str, top1: str, hf: str) -> list[Weights]:
    model, ft, mae = f"hiera_{size}_224", f"{_HIERA}/hiera_{size}_224.pth", f"{_HIERA}/mae_hiera_{size}_224.pth"
    acc = f"{top1} top-1 IN-1k"
    return [
        Weights(model, "mae_in1k_ft_in1k", "official", _IN1K_FT, _NC, acc, url=ft, default=True),
        Weights(model, "mae_in1k", "official", _IN1K_MAE, _NC, url=mae, note=_ENCODER),
        Weights(model, "mae_in1k_ft_in1k_timm", "timm", _IN1K_FT, _NC, acc,
                hub=f"timm/{model}.mae_in1k_ft_in1k", origin=ft),
        Weights(model, "mae_in1k_timm", "timm", _IN1K_MAE, _NC, hub=f"timm/{model}.mae", origin=mae,
                note="timm's copy of the MAE encoder (no head)"),
        Weights(model, "mae_in1k_ft_in1k_hf", "transformers", _IN1K_FT, _NC, acc,
                hub=f"facebook/hiera-{hf}-224-in1k-hf", origin=ft),
        Weights(model, "mae_in1k_hf", "transformers", _IN1K_MAE, _NC, hub=f"facebook/hiera-{hf}-224-hf", origin=mae,
                note="transformers' HieraModel: the MAE encoder without a head"),
        Weights(f"mae_{model}", "mae_in1k", "official", _IN1K_MAE, _NC, url=mae, default=True,
                note="encoder and decoder"),
    ]


def _hiera_video(size: str, top1: str) -> list[Weights]:
    model = f"hiera_{size}_16x224"
    mae = f"{_HIERA}/mae_{model}.pth"
    return [
        Weights(model, "mae_k400_ft_k400", "official", _K400_FT, _NC, f"{top1} top-1 K400",
                url=f"{_HIERA}/{model}.pth", default=True),
        Weights(model, "mae_k400", "official", _K400_MAE, _NC, url=mae, note=_ENCODER),
        Weights(f"mae_{model}", "mae_k400", "official", _K400_MAE, _NC, url=mae, default=True,
                note="encoder and decoder"),
    ]


def _abswin() -> list[Weights]:
    out = []
    for tag, default in (("sbb2_e200_in12k_ft_in1k", True), ("sbb2_pd_e200_in12k_ft_in1k", False),
                         ("sbb2_e200_in12k", False), ("sbb2_pd_e200_in12k", False)):
        in12k = not tag.endswith("ft_in1k")
        out.append(Weights(
            "hiera_small_abswin_256", tag, "timm",
            "ImageNet-12k" if in12k else "ImageNet-12k, fine-tuned on ImageNet-1k", "Apache-2.0",
            hub=f"timm/hiera_small_abswin_256.{tag}", default=default,
            model_args={"num_classes": 11821} if in12k else {},
            note="timm's own training" + (" (pd: a variant recipe)" if "_pd_" in tag else "")))
    return out


_MAE = "https://dl.fbaipublicfiles.com/mae"
_VIT_SIZES = {"base_patch16": ("base", "83.6"), "large_patch16": ("large", "85.9"), "huge_patch14": ("huge", "86.9")}


def _mae_vit() -> list[Weights]:
    out = []
    for arch, (size, top1) in _VIT_SIZES.items():
        model, pre = f"vit_{arch}_224", f"{_MAE}/pretrain/mae_pretrain_vit_{size}.pth"
        out += [
            Weights(model, "mae_in1k_ft_in1k", "mae", _IN1K_FT, _NC, f"{top1} top-1 IN-1k",
                    url=f"{_MAE}/finetune/mae_finetuned_vit_{size}.pth", default=True,
                    model_args={"global_pool": "avg"}, note="average-pooled tokens (fc_norm), as fine-tuned"),
            Weights(model, "mae_in1k", "mae", _IN1K_MAE, _NC, url=pre, note="the encoder (no decoder, no head)"),
            Weights(model, "mae_in1k_timm", "timm", _IN1K_MAE, _NC, hub=f"timm/{model}.mae", origin=pre,
                    note="timm's copy of the encoder"),
        ]
    for size, tag, default in (("base", "mae_in1k_visualize", True), ("large", "mae_in1k_visualize", True),
                               ("large", "mae_in1k_visualize_ganloss", False)):
        arch = next(a for a, (s, _) in _VIT_SIZES.items() if s == size)
        suffix = "_ganloss" if "ganloss" in tag else ""
        out.append(Weights(
            f"mae_vit_{arch}_224", tag, "mae", _IN1K_MAE, _NC, default=default, model_args={"norm_pix_loss": False},
            url=f"{_MAE}/visualize/mae_visualize_vit_{size}{suffix}.pth",
            note="encoder and decoder, trained on raw pixels for the demo" + (" and a GAN loss" if suffix else "")))
    return out


_MAE_ST = "https://dl.fbaipublicfiles.com/video-mae/pretrain"
_MAE_ST_MD5 = {("large", "k400"): "edf3a5", ("huge", "k400"): "3d7f64", ("large", "k600"): "9a9645",
               ("huge", "k600"): "27495e", ("large", "k700"): "cdbada", ("huge", "k700"): "4c4e3c"}  # the README's


def _mae_st() -> list[Weights]:
    """MAE-ST's pretrained encoders, loaded into the video ViT by its own conversion (q / k / v fused, a decoder in
    the file dropped, the head left initialised: ``models.vit_video.checkpoint_filter_fn``)."""
    return [Weights(f"vit_{size}_patch16_video", f"mae_{data}", "mae", f"Kinetics-{data[1:]} (MAE pretraining)", _NC,
                    url=f"{_MAE_ST}/mae_pretrain_vit_{size}_{data}.pth", default=data == "k400",
                    note=f"MAE-ST's encoder (90 % masking, 1600 effective epochs; md5 prefix {md5} as its README "
                         "gives it); head left initialised")
            for (size, data), md5 in _MAE_ST_MD5.items()]


_T2T = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main"
_T2T_FILES = {  # model: (file, top-1 on IN-1k)
    "t2t_vit_7": ("71.7_T2T_ViT_7.pth.tar", "71.7"), "t2t_vit_10": ("75.2_T2T_ViT_10.pth.tar", "75.2"),
    "t2t_vit_12": ("76.5_T2T_ViT_12.pth.tar", "76.5"), "t2t_vit_14": ("81.5_T2T_ViT_14.pth.tar", "81.5"),
    "t2t_vit_19": ("81.9_T2T_ViT_19.pth.tar", "81.9"), "t2t_vit_24": ("82.3_T2T_ViT_24.pth.tar", "82.3"),
    "t2t_vit_t_14": ("81.7_T2T_ViTt_14.pth.tar", "81.7"), "t2t_vit_t_19": ("82.4_T2T_ViTt_19.pth.tar", "82.4"),
    "t2t_vit_t_24": ("82.6_T2T_ViTt_24.pth.tar", "82.6"),
}


def _t2t() -> list[Weights]:
    out = [Weights(model, "in1k", "t2t", "ImageNet-1k (supervised, from scratch)", "BSD-3-Clause-Clear",
                   f"{top1} top-1 IN-1k", url=f"{_T2T}/{file}", default=True)
           for model, (file, top1) in _T2T_FILES.items()]
    out.append(Weights("t2t_vit_14", "in1k_384", "t2t", "ImageNet-1k at 384 px (supervised, from scratch)",
                       "BSD-3-Clause-Clear", "83.3 top-1 IN-1k (384 px)", url=f"{_T2T}/83.3_T2T_ViT_14.pth.tar",
                       model_args={"img_size": 384}))
    return out


_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2"
# size: (timm's resolution tag, SAM 2 J&F on SA-V test, SAM 2.1 J&F on SA-V test)
_SAM2_SIZES = {"tiny": ("r896", "75.0", "76.5"), "small": ("r896", "74.9", "76.6"),
               "base_plus": ("r896", "74.7", "78.2"), "large": ("r1024", "76.0", "79.5")}


def _sam2() -> list[Weights]:
    out = []
    for size, (res, jf2, jf21) in _SAM2_SIZES.items():
        model = f"sam2_hiera_{size}"
        for version, tag, timm_tag, acc, url in (
                ("2", "sam2", f"fb_{res}", jf2, f"{_SAM2}/072824/sam2_hiera_{size}.pt"),
                ("2.1", "sam2_1", f"fb_{res}_2pt1", jf21, f"{_SAM2}/092824/sam2.1_hiera_{size}.pt")):
            common = dict(format="timm", trained_on="SA-1B and SA-V (SAM 2 data engine)", license="Apache-2.0",
                          accuracy=f"{acc} J&F SA-V test (the whole SAM {version})")
            out += [Weights(model, tag, **{**common, "format": "sam2"}, url=url, default=version == "2.1",
                            note=f"the whole SAM {version}; its image encoder's trunk is loaded"),
                    Weights(model, timm_tag, **common, hub=f"timm/{model}.{timm_tag}", origin=url,
                            note=f"timm's copy of SAM {version}'s trunk alone")]
    return out


def _build() -> dict[str, Weights]:
    entries = [e for size, (top1, hf) in _IMAGE_SIZES.items() for e in _hiera_image(size, top1, hf)]
    entries += [e for size, top1 in _VIDEO_SIZES.items() for e in _hiera_video(size, top1)]
    entries += _abswin() + _mae_vit() + _mae_st() + _t2t() + _sam2()
    return {e.name: e for e in entries}


_ENTRIES: dict[str, Weights] = _build()


# ---------------------------------------------------------------- looking up
def register(entry: Weights) -> Weights:
    """Add an entry (a private mirror's file, a test's tiny model); a name already taken is an error."""
    if entry.name in _ENTRIES:
        raise ValueError(f"weights {entry.name} are already in the catalog")
    _ENTRIES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove an entry added with :func:`register` (or any other)."""
    _ENTRIES.pop(name, None)


def entries(pattern: str | None = None) -> list[Weights]:
    """Catalog entries whose ``model.tag`` matches a glob ``pattern`` (a plain word matches anywhere), sorted."""
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return sorted((e for e in _ENTRIES.values() if not pattern or fnmatch.fnmatch(e.name, pattern)),
                  key=lambda e: (e.model, not e.default, e.tag))


def models() -> list[str]:
    """The models that have weights in the catalog."""
    return sorted({e.model for e in _ENTRIES.values()})


def tags(model: str) -> list[Weights]:
    """``model``'s entries, its default first."""
    return [e for e in entries() if e.model == model]


def split_name(spec: str) -> tuple[str, str | None]:
    """``"hiera_base_224.mae_in1k"`` -> ``("hiera_base_224", "mae_in1k")``; no dot -> ``(spec, None)``."""
    model, dot, tag = spec.partition(".")
    return model, (tag if dot else None)


def lookup(model: str, tag: str | None = None) -> Weights:
    """The entry for ``model`` and ``tag`` (``None``: its default tag). A one-line :class:`CheckpointError` when the
    model has no published weights or the tag is unknown, listing the known tags."""
    known = tags(model)
    if not known:
        raise CheckpointError(f"{model} has no published weights in the catalog (`hieralab weights` lists them); "
                              "pass checkpoint=<a file or folder> instead")
    if tag is None:
        return next((e for e in known if e.default), known[0])
    for e in known:
        if e.tag == tag:
            return e
    listed = ", ".join(e.tag + (" (default)" if e.default else "") for e in known)
    raise CheckpointError(f"unknown tag {tag!r} for {model}; known tags: {listed}")


def find(spec: str) -> Weights | None:
    """The entry a catalog name (``model.tag``, or a model's name for its default tag) stands for; ``None`` when the
    model has no catalog entries (``spec`` is something else: a path, ``hf-hub:...``); an unknown tag of a catalogued
    model is an error."""
    model, tag = split_name(spec)
    if model not in {e.model for e in _ENTRIES.values()}:
        return None
    return lookup(model, tag)


# ---------------------------------------------------------------- the table of docs/weights.md
def catalog_markdown() -> str:
    """The catalog as the Markdown table of ``docs/weights.md`` (the docs hold exactly this text; a test checks)."""
    lines = [
        "| name | format | trained on | licence | accuracy (as its source reports) | source | sha256 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries():
        name = f"**{e.name}**" if e.default else e.name
        source = f"[{e.hub}]({'https://huggingface.co/' + e.hub})" if e.hub else f"<{e.url}>"
        if e.origin:
            source += f" (from <{e.origin}>)"
        if e.note:
            name += f" — {e.note}"
        if e.model_args:
            name += " (built with " + ", ".join(f"{k}={v!r}" for k, v in e.model_args.items()) + ")"
        lines.append(f"| {name} | {FORMATS[e.format]} | {e.trained_on} | {e.license} | {e.accuracy or '—'} | "
                     f"{source} | {e.sha256 or '—'} |")
    return "\n".join(lines) + "\n"
