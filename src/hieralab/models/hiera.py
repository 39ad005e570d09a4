"""Hiera: a hierarchical vision transformer without the bells and whistles.

Ryali et al., "Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles", ICML 2023.
Checkpoint-compatible with the official ``hiera-transformer`` package (parameter names and numerics); written here.

Differences from the official code, on purpose:
* the head returns logits in train and eval (the official one applies softmax in eval mode);
* any input size that divides into mask units works, with the position embedding resampled (bicubic in space,
  linear in time); the official model is fixed to its construction size;
* attention runs on 4-D tensors (see ``layers/attention.py``), in the token layout of ``models/layout.py``;
* the masked forward takes ``visible`` (True = the encoder sees the unit), the same meaning as the official ``mask``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers import ClassifierHead, DropPath, MaskUnitAttention, Mlp, PatchEmbed
from ..layers import pos_embed as pe
from .base import PretrainedMixin, run_stages, take_indices
from .layout import gather_units, pool_level, reroll, traced, units_to_windows, unroll

log = logging.getLogger(__name__)


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT), used by the abswin variants of timm."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class HieraBlock(nn.Module):
    """Pre-norm transformer block on ``[B, #MU, L, C]``. At a stage change it widens ``dim -> dim_out`` and, with
    ``q_stride > 1``, pools the queries and the skip path (``[B, #MU, L, C] -> [B, #MU, L / q_stride, C_out]``)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        windowed: bool = False,
        norm_eps: float = 1e-6,
        layer_scale: float | None = None,
        expand_proj: bool = True,
    ):
        super().__init__()
        self.dim, self.dim_out, self.q_stride = dim, dim_out, q_stride
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        pool = functools.partial(pool_level, stride=q_stride) if q_stride > 1 else None
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_pool=pool, windowed=windowed)
        self.norm2 = nn.LayerNorm(dim_out, eps=norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ls1 = LayerScale(dim_out, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim_out, layer_scale) if layer_scale is not None else nn.Identity()
        self.expand_proj = expand_proj
        if dim != dim_out:
            if expand_proj:
                self.proj = nn.Linear(dim, dim_out)
            elif dim_out != 2 * dim:
                raise ValueError("expand_proj=False widens by concatenating max and mean pools, so dim_mul must be 2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)  # [B, #MU, L, C]
        if self.dim != self.dim_out:
            if self.expand_proj:
                x = pool_level(self.proj(x_norm), self.q_stride)  # [B, #MU, L/s, C_out]
            else:  # timm abswin: widen by [max-pool, mean-pool] of the un-normalised input
                x = torch.cat([pool_level(x, self.q_stride), pool_level(x, self.q_stride, "mean")], dim=-1)
        x = x + self.drop_path(self.ls1(self.attn(x_norm)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _ints(x: Sequence[int] | int, n: int) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,) * n


class Hiera(PretrainedMixin, nn.Module):
    """Hiera for images (``input_size=(H, W)``) and video (``input_size=(T, H, W)``).

    Inputs are ``[B, C, H, W]`` or ``[B, C, T, H, W]`` pixels; any size whose token grid divides into mask units
    works (multiples of 32 pixels for the official image configs). The defaults are Hiera-B at 224 px.
    """

    hierarchical = True  # stages at strides 4, 8, 16, 32 (the backbone contract)

    def __init__(
        self,
        *,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        num_classes: int = 1000,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        mask_unit_size: Sequence[int] = (8, 8),
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        head_init_scale: float = 1e-3,
        pos_embed: str = "absolute",
        global_pos_size: Sequence[int] = (14, 14),
        layer_scale: float | None = None,
        expand_proj: bool = True,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        ndim = len(input_size)
        if ndim not in (2, 3):
            raise ValueError(f"input_size must be (H, W) or (T, H, W), got {tuple(input_size)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        if pos_embed not in ("absolute", "separate", "abswin"):
            raise ValueError(f"pos_embed must be 'absolute', 'separate' or 'abswin', got {pos_embed!r}")
        self.ndim = ndim
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.patch_stride = _ints(patch_stride, ndim)
        self.mask_unit_size = _ints(mask_unit_size, ndim)
        # One pooling level per stage change; the mask unit is exactly what the levels pool away.
        self.schedule = [_ints(q_stride, ndim)] * (len(stages) - 1)
        if any(math.prod(s[d] for s in self.schedule) != self.mask_unit_size[d] for d in range(ndim)):
            raise ValueError(
                f"mask_unit_size {self.mask_unit_size} must equal q_stride {tuple(q_stride)} ** {len(stages) - 1}")
        self.q_pool = q_pool
        self.stored_grid = tuple(i // s for i, s in zip(input_size, self.patch_stride))  # token grid G0
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed_kind = pos_embed
        if pos_embed == "separate":
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, math.prod(self.stored_grid[1:]), embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.stored_grid[0], embed_dim))
        elif pos_embed == "abswin":
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
            self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, *self.mask_unit_size))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.stored_grid), embed_dim))

        depth = sum(stages)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear in depth
        pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        dim, heads, stage = embed_dim, num_heads, 0
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = dim
            # A stage's first block still uses the previous stage's attention kind (the official one-block lag), so
            # the block that pools from mask-unit windows into global attention still attends inside windows.
            windowed = bool(mask_unit_attn[stage])
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), stage + 1
            self.blocks.append(HieraBlock(
                dim, dim_out, heads, mlp_ratio=mlp_ratio, drop_path=dpr[i],
                q_stride=math.prod(self.schedule[0]) if i in pool_blocks else 1, windowed=windowed,
                norm_eps=norm_eps, layer_scale=layer_scale, expand_proj=expand_proj))
            dim = dim_out
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = ClassifierHead(dim, num_classes, dropout=head_dropout)
        self._init_weights(head_init_scale)

    # ---------------------------------------------------------------- init and bookkeeping
    def _init_weights(self, head_init_scale: float) -> None:
        for p in (getattr(self, n, None) for n in ("pos_embed", "pos_embed_win", "pos_embed_spatial",
                                                   "pos_embed_temporal")):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.constant_(m.bias, 0.02)  # the official init: biases start at 0.02, not 0
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 0.02)
        if isinstance(self.head.projection, nn.Linear):
            self.head.projection.weight.data.mul_(head_init_scale)
            self.head.projection.bias.data.mul_(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith("pos_embed")}

    @property
    def size_multiple(self) -> int:
        """The side every input must be a multiple of: a mask unit in pixels."""
        return max(p * m for p, m in zip(self.patch_stride, self.mask_unit_size))

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's description of the stage outputs: channels, stride in pixels, the block that makes each."""
        info, reduction = [], self.patch_stride[-1]
        for s, end in enumerate(self.stage_ends):
            if 0 < s <= self.q_pool:  # the first block of this stage pooled
                reduction *= self.schedule[s - 1][-1]
            info.append({"num_chs": self.blocks[end].dim_out, "reduction": reduction, "module": f"blocks.{end}"})
        return info

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.head.projection = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample the position tables of a checkpoint stored for another input size to this model's stored grid
        (bicubic in space, linear in time, as :meth:`forward` resamples them for other inputs)."""
        C = self.patch_embed.proj.out_channels
        pos = sd.get("pos_embed")
        if self.pos_embed_kind == "absolute" and pos is not None and pos.dim() == 3 and pos.shape[-1] == C \
                and pos.shape != self.pos_embed.shape and self.ndim == 2:
            side = int(round(pos.shape[1] ** 0.5))
            if side * side == pos.shape[1]:
                grid = pe.resample_grid(pos.view(1, side, side, C), self.stored_grid)
                sd["pos_embed"] = grid.reshape(self.pos_embed.shape)
                log.info("checkpoint: resampled pos_embed from %dx%d to %s tokens", side, side, self.stored_grid)
        if self.pos_embed_kind == "separate":
            grids = (("pos_embed_spatial", self.stored_grid[1:]), ("pos_embed_temporal", self.stored_grid[:1]))
            for key, grid in grids:
                v, own = sd.get(key), getattr(self, key)
                if v is not None and v.shape != own.shape and v.shape[-1] == own.shape[-1]:
                    if key == "pos_embed_spatial":
                        side = int(round(v.shape[1] ** 0.5))
                        v = v.view(1, side, side, v.shape[-1])
                    sd[key] = pe.resample_grid(v, grid).reshape(own.shape)
        return sd

    # ---------------------------------------------------------------- input geometry
    def token_grid(self, x: torch.Tensor) -> tuple[int, ...]:
        """Check ``x`` and return its token grid ``G``; raises a one-line error that says which sizes work."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Hiera expects a torch.Tensor, got {type(x).__name__}")
        kind = "[B, C, H, W] images" if self.ndim == 2 else "[B, C, T, H, W] clips"
        if x.dim() != self.ndim + 2:
            raise ValueError(f"this Hiera takes {kind}; got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"convert the input or build the model with in_chans={x.shape[1]}")
        sizes = x.shape[2:]
        step = [p * m for p, m in zip(self.patch_stride, self.mask_unit_size)]
        bad = [d for d in range(self.ndim) if sizes[d] % step[d] or sizes[d] == 0]
        if bad:
            names = ("T", "H", "W")[-self.ndim:]
            fixes = ", ".join(f"{names[d]}={sizes[d]} -> a multiple of {step[d]} (e.g. "
                              f"{max(step[d], round(sizes[d] / step[d]) * step[d])})" for d in bad)
            raise ValueError(f"input size {tuple(sizes)} does not divide into mask units: {fixes}; resize or crop")
        return tuple(s // p for s, p in zip(sizes, self.patch_stride))

    def _pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        if self.pos_embed_kind == "separate":
            return pe.separate(self.pos_embed_spatial, self.pos_embed_temporal, self.stored_grid, grid)
        if self.pos_embed_kind == "abswin":
            return pe.abswin(self.pos_embed, self.pos_embed_win, grid)
        return pe.absolute(self.pos_embed, self.stored_grid, grid)

    def _schedule_after(self, pools: int) -> list[tuple[int, ...]]:
        """The pooling levels still in the layout after ``pools`` q-pools."""
        return self.schedule[min(pools, self.q_pool):]

    # ---------------------------------------------------------------- forward
    def _embed(self, x: torch.Tensor, visible: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Pixels to unrolled tokens ``[B, #MU, L, C]``; with ``visible`` only the visible units, in unit order."""
        grid = self.token_grid(x)
        num_units = [g // m for g, m in zip(grid, self.mask_unit_size)]
        if visible is not None:
            visible = self._check_visible(visible, x.shape[0], num_units)
            visible_grid = visible.view(x.shape[0], *num_units)  # [B, *#MU]
        x = self.patch_embed(x, visible_grid if visible is not None else None)  # [B, *G, C]
        # in the patch embedding's dtype: under bf16 autocast an fp32 position embedding would promote the whole
        # residual stream to fp32, and every matmul would cast its input back (and its gradient up) again
        x = x + self._pos_embed(grid).to(x.dtype)
        x = unroll(x, num_units, self.schedule)  # [B, #MU, L, C]
        if visible is not None:
            x = gather_units(x, visible)  # [B, #visible, L, C]
        return x, tuple(num_units)

    def _check_visible(self, visible: torch.Tensor, batch: int, num_units: Sequence[int]) -> torch.Tensor:
        n = math.prod(num_units)
        if visible.dtype != torch.bool or visible.shape not in ((batch, n), (batch, *num_units)):
            raise ValueError(f"visible must be a bool tensor [B, #MU] = [{batch}, {n}] (True = the encoder sees the "
                             f"unit), got {visible.dtype} {tuple(visible.shape)}")
        visible = visible.reshape(batch, n)
        counts = visible.sum(dim=1)
        if not traced(visible) and (counts != counts[0]).any():
            raise ValueError("every sample must keep the same number of visible units (got "
                             f"{sorted(set(counts.tolist()))}); draw masks with a fixed keep count")
        return visible

    def _stages(self, x: torch.Tensor, stages: Sequence[int] | None = None):
        """Run the blocks, yielding ``(stage index, tokens [B, #MU, L, C])`` at each requested stage end."""
        return run_stages(self, x, stages)

    def _to_map(self, x: torch.Tensor, stage: int, num_units: Sequence[int], masked: bool) -> torch.Tensor:
        """Tokens of a stage to its map: ``[B, *G_s, C]``, or ``[B, #visible, *mu_s, C]`` for a masked forward."""
        schedule = self._schedule_after(stage)
        if masked:
            return units_to_windows(x, schedule, self.ndim)
        return reroll(x, num_units, schedule)

    def forward_features(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Last-stage features before the norm: ``[B, *G_4, C]`` channels last (``[B, 7, 7, C]`` at 224 px), or with
        ``visible`` ``[B, #visible, *mu_4, C]`` (only the units the encoder saw)."""
        tokens, num_units = self._embed(x, visible)
        stage, out = next(self._stages(tokens, [len(self.stage_ends) - 1]))
        return self._to_map(out, stage, num_units, visible is not None)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean-pool a feature map from :meth:`forward_features`, normalise, classify: ``[B, num_classes]``."""
        x = self.norm(x.flatten(1, -2).mean(dim=1))  # [B, C]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]``; with ``visible``, pooled over the visible units only."""
        return self.forward_head(self.forward_features(x, visible))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        visible: torch.Tensor | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage maps, as timm's ``forward_intermediates``.

        Args:
            indices: stages to return (0-based, negative from the end) in the order given, or an int ``n`` for the
                last ``n``; all of them by default. Out of range is an error
                (:func:`~hieralab.models.base.take_indices`).
            visible: masked forward; maps are then ``[B, #visible, *mu_s, C]`` per stage (``output_fmt`` ignored).
            norm: apply the final norm to the last stage's map.
            output_fmt: ``"NCHW"`` (``[B, C, H, W]`` / ``[B, C, T, H, W]``) or ``"NHWC"`` (channels last).
        Returns:
            the list of maps, or ``(final features as forward_features returns them, maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        n = len(self.stage_ends)
        stages = take_indices(n, indices, "stages")
        tokens, num_units = self._embed(x, visible)
        masked = visible is not None
        found: dict[int, torch.Tensor] = {}
        final = None
        for stage, out in self._stages(tokens, stages if intermediates_only else sorted(set(stages) | {n - 1})):
            m = self._to_map(out, stage, num_units, masked)
            if stage == n - 1:
                final = m
                if norm:
                    m = self.norm(m)
            found[stage] = m if masked or output_fmt == "NHWC" else m.movedim(-1, 1)
        maps = [found[s] for s in stages]  # in the order asked
        return maps if intermediates_only else (final, maps)

