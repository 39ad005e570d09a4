"""HieraDet: the Hiera of SAM 2, as an encoder of this library.

Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024 (the image encoder's trunk); Bolya et al., "Window
Attention is Bugged: How not to Interpolate Position Embeddings", ICLR 2024 (its position embedding). Checkpoint-
compatible with the released SAM 2 / SAM 2.1 files, timm's ``hieradet_sam2`` and transformers' ``Sam2HieraDetModel``
(parameter names and numerics); written here.

What differs from Hiera (``models/hiera.py``), all to match SAM 2:

* tokens stay a map ``[B, H, W, C]`` between blocks (no mask-unit layout: SAM 2 never masks its input);
* each stage attends inside square windows of ``window_spec[stage]`` tokens (8, 4, 14, 7 for T/S/B+; 8, 4, 16, 8 for
  L) laid from the map's top-left corner, with the map zero-padded at the bottom and right to whole windows; the
  padded tokens are real keys and values of the attention (what their zeros make through ``qkv``), as in SAM 2;
* the blocks in ``global_att_blocks`` attend over the whole map;
* as in Hiera, a stage's first block still uses the previous stage's window (one-block lag) and pools the queries
  and the skip path by 2x2 max at the first blocks of stages 2..``q_pool + 1``;
* the position embedding is a small background table ``[1, C, *global_pos_size]`` resized bicubically to the token
  grid plus a window-sized table ``[1, C, w, w]`` (``w = window_spec[0]``) tiled over it.

Inside a block the map is put into windows with ``models.layout.unroll`` (windows as its units), so a window's query
pooling is ``layout.pool_level`` and attention is the 4-D ``MaskUnitAttention`` Hiera uses; the order of tokens
inside a window changes nothing else, since attention does not see it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..layers import ClassifierHead, DropPath, MaskUnitAttention, Mlp, PatchEmbed
from ..layers import pos_embed as pe
from . import registry
from .base import PretrainedMixin, run_stages, take_indices
from .checkpoint import adapt_state_dict
from .convert import read_state_dict, to_hieralab_keys, unwrap_state_dict
from .hiera import Hiera, LayerScale
from .layout import pool_level, reroll, unroll

log = logging.getLogger(__name__)

SAM2_TRUNK = "image_encoder.trunk."  # where a SAM 2 / SAM 2.1 file keeps this model
HF_BACKBONE = "backbone."  # transformers: Sam2Model's vision_encoder.backbone., Sam2VisionModel's backbone.


# ---------------------------------------------------------------- windows (pure helpers)
def to_windows(x: torch.Tensor, window: Sequence[int], q_stride: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """A map ``[B, H, W, C]`` into windows ``[B, #W, L, C]`` of ``window`` tokens, zero-padded at the bottom and
    right to whole windows (SAM 2's padding); returns the windows and ``#W`` per dim.

    With ``q_stride`` the tokens of a window are ordered stride offset first (the unrolled layout of
    ``models/layout.py`` with the levels ``[q_stride, window / q_stride]``), so ``pool_level(., prod(q_stride))`` is
    the 2x2 max-pool of each window and leaves its tokens in raster order; without, they are in raster order.
    """
    H, W = x.shape[1:3]
    wh, ww = window
    pad_h, pad_w = -H % wh, -W % ww
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # [B, Hp, Wp, C]
    num = ((H + pad_h) // wh, (W + pad_w) // ww)
    levels = [(wh, ww)] if q_stride is None else [tuple(q_stride), (wh // q_stride[0], ww // q_stride[1])]
    return unroll(x, num, levels), num  # [B, #W, L, C]


def from_windows(x: torch.Tensor, num: Sequence[int], window: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`to_windows` (after any pooling): windows ``[B, #W, L, C]`` of ``window`` tokens in raster
    order back to the map, with the padding cut off: ``[B, *size, C]``."""
    x = reroll(x, num, [tuple(window)])  # [B, Hp, Wp, C]
    return x[:, : size[0], : size[1]]  # [B, H, W, C]


def max_pool_map(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """2-D max-pool of a map by a reshape: ``[B, H, W, C]`` to ``[B, H / s_h, W / s_w, C]`` (sides divide)."""
    B, H, W, C = x.shape
    x = x.view(B, H // stride[0], stride[0], W // stride[1], stride[1], C)  # [B, H', s_h, W', s_w, C]
    return x.amax(dim=(2, 4))  # [B, H', W', C]


# ---------------------------------------------------------------- block
class HieraDetBlock(nn.Module):
    """Pre-norm block on a map ``[B, H, W, C]``: attention inside ``window`` x ``window`` tokens (0: the whole map),
    then the MLP. At a stage change it widens ``dim -> dim_out`` and, with ``q_stride``, pools the queries and the
    skip path: ``[B, H, W, C] -> [B, H / 2, W / 2, C_out]``."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        *,
        window: int = 0,
        q_stride: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window = window
        self.q_stride = tuple(q_stride) if q_stride else None
        if self.q_stride and window and window % self.q_stride[0]:
            raise ValueError(f"a block that pools by {self.q_stride} needs a window divisible by it, got {window}")
        pool = functools.partial(pool_level, stride=math.prod(self.q_stride)) if self.q_stride else None
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_pool=pool, windowed=True)
        self.norm2 = nn.LayerNorm(dim_out, eps=norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ls1 = LayerScale(dim_out, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim_out, layer_scale) if layer_scale is not None else nn.Identity()
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        x_norm = self.norm1(x)  # [B, H, W, C]
        shortcut = self.proj(x_norm) if self.dim != self.dim_out else x  # [B, H, W, C_out]
        if self.q_stride:
            # SAM 2 pools only a widened skip (an unwidened one would not fit); here both are pooled.
            shortcut = max_pool_map(shortcut, self.q_stride)  # [B, H', W', C_out]
        window = (self.window, self.window) if self.window else (H, W)  # global: one window, the whole map
        tokens, num = to_windows(x_norm, window, self.q_stride)  # [B, #W, L, C]
        out = self.attn(tokens)  # [B, #W, L / s, C_out]
        if self.q_stride:
            window = (window[0] // self.q_stride[0], window[1] // self.q_stride[1])
        x = shortcut + self.drop_path(self.ls1(from_windows(out, num, window, shortcut.shape[1:3])))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))  # [B, H', W', C_out]


# ---------------------------------------------------------------- model
class HieraDet(PretrainedMixin, nn.Module):
    """SAM 2's Hiera: ``[B, C, H, W]`` pixels to per-stage maps, and a classifier (mean-pool, LayerNorm, Linear ->
    logits) for fine-tuning. H and W must be multiples of :attr:`size_multiple` (32 px for the SAM 2 configs); SAM 2
    runs at 1024 px. The defaults are SAM 2's Hiera-B+ trunk; the four SAM 2 sizes are in ``hieradet_configs.py``.
    """

    embed_params = ("patch_embed", "pos_embed")  # pos_embed and pos_embed_window: layer 0 for lr decay
    ndim = 2
    hierarchical = True  # stages at strides 4, 8, 16, 32 (the backbone contract)
    default_neck = "topdown"  # neck="auto" of Detector / Segmenter: SAM 2's FpnNeck (layers/necks.TopDownNeck)

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 112,
        num_heads: int = 2,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        global_pos_size: Sequence[int] = (14, 14),
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        head_init_scale: float = 1e-3,
        layer_scale: float | None = None,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if len(window_spec) != len(stages):
            raise ValueError(f"window_spec needs one window per stage ({len(stages)}), got {tuple(window_spec)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.patch_stride = tuple(patch_stride)
        self.q_stride = tuple(q_stride)
        self.q_pool = q_pool
        self.window_spec = tuple(window_spec)
        self.global_att_blocks = tuple(global_att_blocks)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))  # background, resized
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))  # tiled

        depth = sum(stages)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear in depth
        pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        dim, heads, stage = embed_dim, num_heads, 0
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = dim
            # The one-block lag of Hiera and SAM 2: a stage's first block still uses the previous stage's window.
            window = 0 if i in self.global_att_blocks else window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), stage + 1
            self.blocks.append(HieraDetBlock(
                dim, dim_out, heads, window=window, q_stride=self.q_stride if i in pool_blocks else None,
                mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_eps=norm_eps, layer_scale=layer_scale))
            dim = dim_out
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = ClassifierHead(dim, num_classes, dropout=head_dropout)
        self._init_weights(head_init_scale)

    # ---------------------------------------------------------------- init and bookkeeping
    def _init_weights(self, head_init_scale: float) -> None:
        """timm's ViT init (SAM 2 itself starts from an MAE Hiera: see :func:`hiera_to_hieradet`)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head.projection, nn.Linear):
            self.head.projection.weight.data.mul_(head_init_scale)
            self.head.projection.bias.data.mul_(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "pos_embed_window"}

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's description of the stage outputs: channels, stride in pixels, the block that makes each."""
        info, reduction = [], self.patch_stride[-1]
        for s, end in enumerate(self.stage_ends):
            if 0 < s <= self.q_pool:  # the first block of this stage pooled
                reduction *= self.q_stride[-1]
            info.append({"num_chs": self.blocks[end].dim_out, "reduction": reduction, "module": f"blocks.{end}"})
        return info

    @property
    def size_multiple(self) -> int:
        """What input sides must be a multiple of: the token grid must hold whole tiles of the window position
        table and halve at every q-pool (32 px for the SAM 2 configs)."""
        pooled = self.q_stride[0] ** self.q_pool
        return self.patch_stride[0] * math.lcm(pooled, self.window_spec[0])

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.head.projection = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def takes_weights_of(cls: type) -> bool:
        """Whether a ``save_pretrained`` folder of another class loads into this one (``load_checkpoint`` asks):
        an image Hiera or its MAE, converted by :func:`hiera_to_hieradet` (how SAM 2 started its trunk)."""
        return issubclass(cls, Hiera) or issubclass(getattr(cls, "encoder_class", type(None)), Hiera)

    def convert_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """Any supported layout to this model's keys (``load_checkpoint`` calls it; :func:`checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(sd, self)

    # ---------------------------------------------------------------- forward
    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Check ``x`` and return its token grid ``(H / 4, W / 4)``; a one-line error says which sizes work."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"HieraDet takes [B, C, H, W] images, got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"convert the input or build the model with in_chans={x.shape[1]}")
        step = self.size_multiple
        bad = [(n, s) for n, s in zip("HW", x.shape[2:]) if s % step or s == 0]
        if bad:
            fixes = ", ".join(f"{n}={s} -> a multiple of {step} (e.g. {max(step, round(s / step) * step)})"
                              for n, s in bad)
            raise ValueError(f"input size {tuple(x.shape[2:])} does not fit HieraDet: {fixes}; resize or pad")
        return x.shape[2] // self.patch_stride[0], x.shape[3] // self.patch_stride[1]

    def _pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """``[1, *grid, C]``: the background table resized to the grid plus the window table tiled over it."""
        # SAM 2 (and timm's hieradet_sam2, transformers) resize with F.interpolate's bicubic *without* antialias;
        # timm's abswin Hiera (layers/pos_embed.abswin) antialiases, which uses another cubic (a = -0.5, not -0.75)
        # and so differs even when upsampling (by up to ~0.25 of the table's scale for a 7x7 -> 64x64 resize).
        background = pe.resample_grid(self.pos_embed.movedim(1, -1), grid)  # [1, *G, C]
        window = self.pos_embed_window.movedim(1, -1)  # [1, w, w, C]
        reps = [g // w for g, w in zip(grid, window.shape[1:3])]
        return background + window.tile(1, *reps, 1)  # [1, *G, C]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.token_grid(x)
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        return x + self._pos_embed(grid).to(x.dtype)  # in x's dtype: the bf16 stream stays bf16 (see Hiera._embed)

    def _stages(self, x: torch.Tensor, stages: Sequence[int] | None = None):
        """Run the blocks, yielding ``(stage index, map [B, H_s, W_s, C_s])`` at each requested stage end."""
        return run_stages(self, x, stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features before the norm, channels last: ``[B, H / 32, W / 32, C]``."""
        _, out = next(self._stages(self._embed(x), [len(self.stage_ends) - 1]))
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean-pool a map from :meth:`forward_features`, normalise, classify: ``[B, num_classes]`` logits."""
        x = self.norm(x.flatten(1, -2).mean(dim=1))  # [B, C]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (pooled features ``[B, C]`` with ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage maps, as timm's ``forward_intermediates`` (SAM 2's trunk returns the same four, NCHW).

        Args:
            indices: stages to return (0-based, negative from the end) in the order given, or an int ``n`` for the
                last ``n``; all of them by default; out of range is an error
                (:func:`~hieralab.models.base.take_indices`).
            norm: apply the final norm to the last stage's map.
            output_fmt: ``"NCHW"`` (``[B, C, H, W]``) or ``"NHWC"``.
        Returns:
            the list of maps, or ``(final features as forward_features returns them, maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        n = len(self.stage_ends)
        stages = take_indices(n, indices, "stages")
        found: dict[int, torch.Tensor] = {}
        final = None
        for stage, m in self._stages(self._embed(x), stages if intermediates_only else sorted(set(stages) | {n - 1})):
            if stage == n - 1:
                final = m
                if norm:
                    m = self.norm(m)
            found[stage] = m if output_fmt == "NHWC" else m.permute(0, 3, 1, 2)  # [B, C, H, W]
        maps = [found[s] for s in stages]  # in the order asked
        return maps if intermediates_only else (final, maps)


# ---------------------------------------------------------------- checkpoints: key conversion beside the model
def _rename(sd: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


_SAM2_RULES = [(r"\.mlp\.layers\.0\.", ".mlp.fc1."), (r"\.mlp\.layers\.1\.", ".mlp.fc2.")]
_HF_RULES = [(r"^patch_embed\.projection\.", "patch_embed.proj."), (r"\.layer_norm1\.", ".norm1."),
             (r"\.layer_norm2\.", ".norm2."), (r"\.mlp\.proj_in\.", ".mlp.fc1."), (r"\.mlp\.proj_out\.", ".mlp.fc2.")]


def _take_prefix(sd: Mapping[str, torch.Tensor], prefix: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (the prefix removed), counting the rest in a log line."""
    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    rest = len(sd) - len(inner)
    if rest:
        log.info("checkpoint: %s file: loading the %d tensors of %s, ignoring the other %d (the rest of %s)",
                 what, len(inner), prefix.rstrip("."), rest, what)
    return inner


def _shape_of(sd: Mapping[str, torch.Tensor]) -> tuple[int | None, int]:
    w = sd.get("patch_embed.proj.weight")
    return (w.shape[0] if w is not None else None), len({k.split(".")[1] for k in sd if k.startswith("blocks.")})


def _check_size(sd: Mapping[str, torch.Tensor], model: HieraDet, what: str) -> None:
    """One line naming both sizes when the checkpoint is another width or depth than the model."""
    width, depth = _shape_of(sd)
    own = (model.patch_embed.proj.out_channels, len(model.blocks))
    if width is None or (width, depth) == own:
        return
    names = [n for n in registry.list_models("sam2_hiera_*") if (c := registry.model_config(n)).get("embed_dim")
             == width and sum(c.get("stages", ())) == depth]
    hint = f"create {' or '.join(names)} instead" if names else "build a HieraDet of that width and depth"
    mine = getattr(model, "model_name", None) or "this HieraDet"
    raise CheckpointError(f"checkpoint is a {what} of width {width} with {depth} blocks, {mine} has width {own[0]} "
                          f"with {own[1]} blocks; {hint}")


def checkpoint_filter_fn(sd: Mapping[str, torch.Tensor], model: HieraDet) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename a checkpoint to :class:`HieraDet`'s keys; returns ``(layout name, state dict)``.

    * SAM 2 / SAM 2.1 as released (``{"model": ...}`` unwrapped by the reader): ``image_encoder.trunk.*``, MLP as
      ``mlp.layers.0/1``; the rest of SAM 2 (neck, prompt encoder, mask decoder, memory) is ignored and counted;
    * transformers ``Sam2HieraDetModel`` (or ``Sam2Model`` / ``Sam2VisionModel``, under ``...backbone.``);
    * timm ``hieradet_sam2`` (``head.fc`` / ``head.norm``) and ours;
    * any Hiera (official, timm, transformers, MAE, ours): converted by :func:`hiera_to_hieradet`.

    A checkpoint of another width or depth is a one-line :class:`~hieralab.errors.CheckpointError` naming both.
    """
    if any(k.startswith(SAM2_TRUNK) for k in sd):
        kind, out = "SAM 2", _rename(_take_prefix(sd, SAM2_TRUNK, "SAM 2"), _SAM2_RULES)
    elif any(".layer_norm1." in k or "patch_embed.projection." in k for k in sd):
        prefix = next((k[: k.index(HF_BACKBONE) + len(HF_BACKBONE)] for k in sd if HF_BACKBONE in k), "")
        inner = _take_prefix(sd, prefix, "transformers SAM 2") if prefix else dict(sd)
        kind, out = "transformers Sam2HieraDet", _rename(inner, _HF_RULES)
    else:
        kind, out = to_hieralab_keys(sd)  # timm's head.fc / head.norm; Hiera's layouts; MAE decoders dropped
        if ("pos_embed" in out and "pos_embed_window" not in out) or "pos_embed_spatial" in out:
            _check_size(out, model, f"Hiera ({kind} layout)")
            return f"{kind} Hiera, converted to HieraDet", hiera_to_hieradet(out, model)
        kind = "hieralab" if kind == "hiera" else kind  # convert.py's name for our keys (the official Hiera's)
    _check_size(out, model, f"HieraDet ({kind} layout)")
    return kind, out


# ---------------------------------------------------------------- from Hiera to HieraDet
def hiera_to_hieradet(sd: Mapping[str, torch.Tensor], model: HieraDet) -> dict[str, torch.Tensor]:
    """A Hiera state dict (our keys, :func:`~hieralab.models.convert.to_hieralab_keys`) as a HieraDet one for
    ``model``, of the same widths and depth: how SAM 2 started from MAE Hiera.

    Carried over as they are: the patch embedding, every block (norms, ``qkv``, attention ``proj``, MLP, the skip
    ``proj`` at stage changes), the final ``norm`` and the head: Hiera and HieraDet name and shape them alike.
    New: the position embedding. Hiera's table ``[1, H0*W0, C]`` (one row per token of its stored grid) becomes the
    background table, resized to ``model``'s ``global_pos_size`` (bicubic, antialiased: it shrinks), and the window
    table is what that resize loses, averaged over the windows of the stored grid (the least-squares periodic fit of
    the difference). When ``global_pos_size`` is Hiera's stored grid the table is copied unchanged and the window
    table is zero, so the converted model adds exactly Hiera's embedding at every input size. An abswin Hiera's two
    tables are resized / copied; a video Hiera has no 2-D counterpart and is refused.

    What the two then compute alike: Hiera's mask units in stages 1-2 (8x8, then 4x4 tokens, with the same one-block
    lag) are SAM 2's windows 8 and 4; its stages 3-4 attend globally, which SAM 2's windows (14, 7; Hiera-L 16, 8)
    equal when they cover the whole map without padding: at 224 px (256 px for L), the converted model gives Hiera's
    outputs stage by stage (``tests/test_hieradet.py``). At other sizes the windows of stages 3-4 differ, as in
    SAM 2, which was trained that way from MAE Hiera.
    """
    if "pos_embed_spatial" in sd:
        raise CheckpointError("checkpoint is a video Hiera (separate space / time position tables); HieraDet takes "
                              "image Hiera weights")
    out = {k: v for k, v in sd.items() if not k.startswith("pos_embed")}
    C = model.pos_embed.shape[1]
    pos = sd["pos_embed"].detach().float()
    if pos.dim() == 4:  # an abswin Hiera: [1, C, *G_g] background and [1, C, *mu] window tables
        out["pos_embed"] = pe.resample_grid(pos.movedim(1, -1), model.pos_embed.shape[2:],
                                            antialias=True).movedim(-1, 1)
        win = sd.get("pos_embed_win")
        out["pos_embed_window"] = win if win is not None and win.shape == model.pos_embed_window.shape \
            else torch.zeros_like(model.pos_embed_window)
        return out
    side = math.isqrt(pos.shape[1])
    if pos.dim() != 3 or side * side != pos.shape[1] or pos.shape[-1] != C:
        raise CheckpointError(f"Hiera pos_embed {tuple(pos.shape)} is not a square table of width {C}")
    table = pos.view(1, side, side, C)  # [1, H0, W0, C]
    size = tuple(model.pos_embed.shape[2:])
    background = pe.resample_grid(table, size, antialias=True)  # [1, *G_g, C]
    missing = table - pe.resample_grid(background, (side, side))  # [1, H0, W0, C] what HieraDet's resize loses
    w = model.pos_embed_window.shape[-1]
    if side % w == 0:
        window = missing.view(1, side // w, w, side // w, w, C).mean(dim=(1, 3))  # [1, w, w, C]
    else:
        window = torch.zeros(1, w, w, C)
    out["pos_embed"] = background.movedim(-1, 1).contiguous()  # [1, C, *G_g]
    out["pos_embed_window"] = window.movedim(-1, 1).contiguous()  # [1, C, w, w]
    log.info("checkpoint: Hiera position table %dx%d converted to a %dx%d background and a %dx%d window table",
             side, side, *size, w, w)
    return out


def init_from_hiera(model: HieraDet, hiera: str | os.PathLike | Mapping[str, Any]) -> list[str]:
    """Initialise ``model`` from Hiera weights (a file, a ``save_pretrained`` folder, a state dict or a training
    checkpoint; official, timm, transformers, MAE or ours) with :func:`hiera_to_hieradet`; returns the model keys
    they did not have (``norm`` and ``head`` for an MAE). ``load_checkpoint`` does the same when it sees Hiera keys."""
    sd = unwrap_state_dict(hiera, "the state dict given") if isinstance(hiera, Mapping) else read_state_dict(hiera)
    kind, sd = to_hieralab_keys(sd)
    if "pos_embed_window" in sd or "pos_embed" not in sd:
        raise CheckpointError(f"init_from_hiera: the checkpoint ({kind} layout) is not a Hiera (no 'pos_embed' "
                              "table, or a HieraDet's); load it with load_checkpoint")
    _check_size(sd, model, "Hiera")
    result = model.load_state_dict(adapt_state_dict(model, hiera_to_hieradet(sd, model)), strict=False)
    return list(result.missing_keys)
