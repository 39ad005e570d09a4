"""The video ViT of MAE-ST: a plain ViT on spatio-temporal tubelets, the baseline the Hiera paper compares with.

Feichtenhofer, Fan, Li and He, "Masked Autoencoders As Spatiotemporal Learners", NeurIPS 2022
(facebookresearch/mae_st: ``models_vit.py``, ``util/video_vit.py``). Learned from that code, written here on the
shared :class:`~hieralab.models.vit.ViTBackbone`; checkpoints of MAE-ST (fine-tuned, or pretrained with the
decoder) load exactly through :func:`checkpoint_filter_fn`, and the fp32 outputs match its forward
(``tests/test_vit_video.py``).

What MAE-ST's model is, as its defaults for Kinetics (``sep_pos_embed=True, cls_embed=True``, 16 frames,
``t_patch_size=2``):
* tubelets of 2 x 16 x 16 pixels through one Conv3d (kernel = stride), tokens in (t, h, w) raster order;
* separate learned position tables: space ``[1, H'*W', C]`` + time ``[1, T', C]``, and a class row ``[1, 1, C]``
  (``pos_embed_spatial``, ``pos_embed_temporal``, ``pos_embed_class``);
* a class token that runs through the blocks but is not pooled: the head takes the mean of the patch tokens, then
  the final LayerNorm (MAE-ST calls it ``norm``; it is our ``fc_norm``, timm's name for a norm after the pool),
  dropout 0.5 and a Linear (400 Kinetics classes);
* global attention over all ``T' * H' * W'`` tokens (1568 at 16 x 224), no relative positions.

Paper-faithful oddities kept: MAE-ST's ``vit_huge_patch14`` factory builds patch 16 (so ours is named
``vit_huge_patch16_video``); its attention has separate ``q``, ``k``, ``v`` linears, fused here into ``qkv`` by
the key conversion (the same numbers, one matmul).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..layers import PatchEmbed
from . import registry
from .convert import MAE_ONLY
from .vit import ViTBackbone

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- key conversion (pure)
def fuse_qkv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MAE-ST's separate ``attn.q`` / ``attn.k`` / ``attn.v`` linears as one ``attn.qkv`` (rows q, then k, then v:
    the order our attention splits them in); every other key unchanged. Works on the encoder's and the decoder's
    blocks alike."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        head, dot, tail = k.rpartition(".attn.")
        if dot and tail in ("q.weight", "q.bias"):
            part = tail.split(".")[1]
            out[f"{head}.attn.qkv.{part}"] = torch.cat([sd[f"{head}.attn.{n}.{part}"] for n in "qkv"], dim=0)
        elif not (dot and tail in ("k.weight", "k.bias", "v.weight", "v.bias")):
            out[k] = v
    return out


def is_mae_st(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is in MAE-ST's layout (separate q / k / v linears)."""
    return any(k.endswith(".attn.q.weight") for k in sd)


def from_mae_st(sd: Mapping[str, torch.Tensor], *, norm_after_pool: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """``(layout name, state dict)``: an MAE-ST checkpoint (fine-tuned, or pretrained with its decoder) with q / k / v
    fused (:func:`fuse_qkv`) and, for a model that normalises after the pool (``norm_after_pool``: average pooling,
    as MAE-ST's classifier), its ``norm`` as ``fc_norm`` (MAE-ST applies that one norm to every token in pretraining
    and to the pooled token in fine-tuning); ours passes through."""
    if not is_mae_st(sd):
        return "hieralab", dict(sd)
    out = fuse_qkv(sd)
    if norm_after_pool:
        out = {("fc_norm." + k.removeprefix("norm.") if k.startswith("norm.") else k): v for k, v in out.items()}
    return "MAE-ST", out


def checkpoint_filter_fn(sd: Mapping[str, torch.Tensor], model: VideoVisionTransformer
                         ) -> tuple[str, dict[str, torch.Tensor]]:
    """Any video-ViT checkpoint as ``model``'s keys: ``(layout name, state dict)``.

    * MAE-ST (``{"model": ...}`` unwrapped by the reader), fine-tuned or pretrained: q / k / v fused
      (:func:`fuse_qkv`), its post-pool ``norm`` -> ``fc_norm``, the MAE decoder dropped;
    * ours (``save_pretrained``, or a video-ViT MAE run under ``encoder.``).
    A checkpoint of another model (an image ViT, a Hiera, another width or depth) is a one-line
    :class:`~hieralab.errors.CheckpointError` naming what it holds and the registered model that fits.
    """
    kind, out = from_mae_st(sd, norm_after_pool=isinstance(model.fc_norm, nn.LayerNorm))
    out = {k.removeprefix("encoder."): v for k, v in out.items()}
    dropped = [k for k in out if k.startswith(MAE_ONLY)]
    for k in dropped:
        del out[k]
    if dropped:
        log.info("checkpoint: dropped %d MAE decoder tensors, loading the encoder only", len(dropped))
    _check_fits(out, model, kind)
    return kind, out


def _check_fits(sd: Mapping[str, torch.Tensor], model: VideoVisionTransformer, kind: str) -> None:
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5 or "pos_embed_class" not in sd:
        what = ("no patch embedding" if w is None else "an image model" if w.dim() == 4
                else "a Hiera (no class token)" if "cls_token" not in sd
                else "a ViT without MAE-ST's space-time tables")
        shape = tuple(w.shape) if w is not None else "missing"
        raise CheckpointError(f"checkpoint ({kind} layout) holds {what} (patch_embed.proj.weight {shape}), not a "
                              f"video ViT; {getattr(model, 'model_name', type(model).__name__)} takes MAE-ST's "
                              "checkpoints or its own: load this file into the model it was saved from")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    theirs = (w.shape[0], depth, tuple(w.shape[2:]))
    mine = (model.embed_dim, len(model.blocks), tuple(model.patch_embed.proj.kernel_size))
    if theirs != mine:
        fits = [n for n in registry.list_models("vit_*_video")
                if (c := registry.model_config(n))["embed_dim"] == theirs[0] and c["depth"] == theirs[1]]
        tube = "" if theirs[2] == (2, 16, 16) else f" with t_patch_size={theirs[2][0]}, patch_size={theirs[2][1]}"
        hint = f"create {' or '.join(fits)}{tube} instead" if fits else "no registered video ViT has that shape"
        raise CheckpointError(f"checkpoint ({kind} layout) is a video ViT of width {theirs[0]}, depth {theirs[1]}, "
                              f"tubelet {theirs[2]}; this model has width {mine[0]}, depth {mine[1]}, tubelet "
                              f"{mine[2]}: {hint}")


# ---------------------------------------------------------------- model
class VideoVisionTransformer(ViTBackbone):
    """ViT on clips ``[B, C, T, H, W]`` (T a multiple of ``t_patch_size``, H and W of ``patch_size``). The defaults
    are MAE-ST's ViT-B at 16 x 224: tokens 8 x 14 x 14, the mean of the patch tokens -> ``fc_norm`` -> dropout 0.5
    -> 400 logits."""

    ndim = 3  # clips [B, C, T, H, W]
    embed_params = ("patch_embed", "cls_token", "pos_embed")  # layer 0 for layer-wise lr decay (pos_embed_* too)

    def __init__(
        self,
        *,
        input_size: Sequence[int] = (16, 224, 224),
        patch_size: int = 16,
        t_patch_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.5,
        norm_eps: float = 1e-6,
    ):
        size = tuple(int(s) for s in input_size)
        tube = (t_patch_size, patch_size, patch_size)
        if len(size) != 3 or any(s % p or s <= 0 for s, p in zip(size, tube)):
            raise ValueError(f"input_size {size} must be (T, H, W), positive multiples of the tubelet {tube}")
        super().__init__(
            grid_size=tuple(s // p for s, p in zip(size, tube)), in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            pos_embed="separate", global_pool=global_pool, drop_path_rate=drop_path_rate, head_dropout=head_dropout,
            norm_eps=norm_eps,
        )
        self.patch_size = patch_size
        self.patch_stride = tube  # what the video pictures and export read (as Hiera's)
        self.stored_grid = self.grid_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, tube, tube, (0, 0, 0))
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE-ST's pretraining init: tables and class token ~ trunc N(0, 0.02), the tubelet projection xavier as a
        Linear over flattened tubelets, xavier linears with zero bias, unit LayerNorms."""
        for p in (self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        self._init_linears_and_norms(nn.init.xavier_uniform_)

    def convert_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """Any supported layout to this model's keys (``load_checkpoint`` calls it; :func:`checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(sd, self)

    # ---------------------------------------------------------------- input geometry
    def grid_for(self, size: tuple[int, ...]) -> tuple[int, ...]:
        bad = [(name, s, p) for name, s, p in zip("THW", size, self.patch_stride) if s % p or s == 0]
        if bad:
            fixes = ", ".join(f"{name}={s} -> a multiple of {p} (e.g. {max(p, round(s / p) * p)})"
                              for name, s, p in bad)
            raise ValueError(f"clip size {tuple(size)} does not divide into {'x'.join(map(str, self.patch_stride))} "
                             f"tubelets: {fixes}; take another frame count or resize")
        return tuple(s // p for s, p in zip(size, self.patch_stride))

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, T, H, W]`` to tubelet tokens ``[B, T', H', W', C]`` (no position embedding)."""
        return self.patch_embed(x)
