"""The plain Vision Transformer encoder, as MAE pretrains and fine-tunes it.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022. Parameter names are those of timm's ``VisionTransformer`` (one class token, no registers), so
its state dicts load directly, and the fp32 outputs match it; written here.

Choices, on purpose:
* the default position embedding is MAE's fixed 2-D sin-cos table (stored, not trained); ``"learned"`` is timm's;
* pixels -> tokens (:meth:`VisionTransformer.embed`) and tokens -> features (:meth:`VisionTransformer.encode`) are
  separate calls, so the MAE wrapper can drop the masked tokens in between;
* any input whose sides are multiples of the patch size works: the table is resampled bicubically (without
  antialiasing, as MAE's ``interpolate_pos_embed``; timm's dynamic-size path antialiases);
* init as MAE: xavier-uniform linears and patch projection, zero linear biases, class token ~ N(0, 0.02).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers import Block, PatchEmbed
from ..layers import pos_embed as pe
from .base import PretrainedMixin, take_indices

log = logging.getLogger(__name__)


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    if len(x) != 2:
        raise ValueError(f"img_size must be an int or (H, W), got {tuple(x)}")
    return int(x[0]), int(x[1])


class ViTBackbone(PretrainedMixin, nn.Module):
    """What every ViT here shares after its tokenizer: a class token, an absolute position table ``[1, 1 + N, C]``
    (class row first; or, ``pos_embed="separate"``, MAE-ST's space and time tables and a class row), pre-norm
    blocks, a final norm and a head. Subclasses build the tokenizer and define :meth:`token_grid` (checks the input,
    returns the token grid ``G``: ``(H', W')``, or ``(T', H', W')`` for clips) and :meth:`tokenize` (pixels ->
    ``[B, *G, C]``).

    ``forward_features`` returns ``[B, 1 + N, C]`` (class token first); ``forward_head`` pools it with the class
    token (``global_pool="token"``, after the final ``norm``) or the mean of the patch tokens (``"avg"``, then
    ``fc_norm``, as MAE fine-tuning and timm's ``global_pool='avg'``) and returns logits.
    """

    ndim = 2  # images: [B, C, H, W] (Hiera's video models have 3)

    def __init__(
        self,
        *,
        grid_size: tuple[int, ...],
        in_chans: int,
        num_classes: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None = None,
        pos_embed: str,
        global_pool: str,
        drop_path_rate: float,
        head_dropout: float,
        norm_eps: float,
    ):
        super().__init__()
        if pos_embed not in ("sincos", "sinusoid", "learned", "separate"):
            raise ValueError(f"pos_embed must be 'sincos' (fixed 2-D, MAE), 'sinusoid' (fixed 1-D, T2T-ViT), "
                             f"'learned' or 'separate' (learned space + time tables, MAE-ST), got {pos_embed!r}")
        if pos_embed == "separate" and len(grid_size) != 3:
            raise ValueError(f"pos_embed='separate' is for clips (a T x H x W token grid), got grid {grid_size}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.grid_size = grid_size  # the token grid the table is stored for
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1
        self.pos_embed_kind = pos_embed
        self.global_pool = global_pool

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = 1 + math.prod(grid_size)
        # Fixed tables are frozen Parameters (not buffers) so that state dicts keep the key `pos_embed` of the
        # timm, MAE and T2T-ViT checkpoints; the 2-D one has a zero class row, the 1-D one gives it position 0.
        if pos_embed == "sincos":
            self.pos_embed = nn.Parameter(pe.sincos_2d(embed_dim, grid_size, class_token=True), requires_grad=False)
        elif pos_embed == "sinusoid":
            self.pos_embed = nn.Parameter(pe.sinusoid_table(num_tokens, embed_dim), requires_grad=False)
        elif pos_embed == "separate":  # MAE-ST's sep_pos_embed with cls_embed: H'*W' + T' + 1 rows, not T'*H'*W' + 1
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, grid_size[1] * grid_size[2], embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, grid_size[0], embed_dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear in depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=dpr[i],
                  norm_eps=norm_eps)
            for i in range(depth)
        )
        # timm's layout: with average pooling the final norm moves after the pool (fc_norm) and `norm` is a no-op.
        avg = global_pool == "avg"
        self.norm = nn.Identity() if avg else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if avg else nn.Identity()
        self.head_drop = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith("pos_embed")} | {"cls_token"}

    hierarchical = False  # one map at the patch stride (the backbone contract)

    @property
    def size_multiple(self) -> int:
        """The side every input must be a multiple of: the token stride (a patch; 16 for T2T-ViT)."""
        return self.patch_size

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's description of the block outputs: one single-scale map per block, at the token stride."""
        return [{"num_chs": self.embed_dim, "reduction": self.patch_size, "module": f"blocks.{i}"}
                for i in range(len(self.blocks))]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` (xavier, zero bias); 0 makes the model a feature extractor."""
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes)
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    def adapt_pos_embed(self, table: torch.Tensor) -> torch.Tensor:
        """A checkpoint's table ``[1, 1 + n*n, C]`` (square grid, class row first) resampled to this model's stored
        grid (bicubic on the patch rows, as the MAE, DeiT and T2T-ViT fine-tuning code); the class row is kept."""
        C = table.shape[-1]
        side = round((table.shape[1] - 1) ** 0.5)
        if table.dim() != 3 or side * side != table.shape[1] - 1 or C != self.embed_dim:
            raise ValueError(f"pos_embed {tuple(table.shape)} is not [1, 1 + n*n, {self.embed_dim}]")
        grid = pe.resample_grid(table[:, 1:].reshape(1, side, side, C), self.grid_size)  # [1, H0, W0, C]
        return torch.cat([table[:, :1], grid.flatten(1, 2)], dim=1)  # [1, 1 + H0*W0, C]

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's position table stored for another input size, resampled to this model's grid (the space
        and time tables of a clip model each on its own axes: bicubic in space, linear in time)."""
        if self.pos_embed_kind == "separate":
            for key, grid in (("pos_embed_spatial", self.grid_size[1:]), ("pos_embed_temporal", self.grid_size[:1])):
                v, own = sd.get(key), getattr(self, key)
                if v is not None and v.dim() == 3 and v.shape != own.shape and v.shape[-1] == own.shape[-1]:
                    side = round(v.shape[1] ** 0.5)
                    if key == "pos_embed_spatial" and side * side != v.shape[1]:
                        raise ValueError(f"{key} {tuple(v.shape)} is not a square grid [1, n*n, C]")
                    stored = v.view(1, side, side, v.shape[-1]) if key == "pos_embed_spatial" else v
                    sd[key] = pe.resample_grid(stored, grid).reshape(own.shape)
                    log.info("checkpoint: resampled %s to %s", key, tuple(grid))
            return sd
        pos = sd.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.shape[-1] == self.pos_embed.shape[-1]:
            sd["pos_embed"] = self.adapt_pos_embed(pos)
            log.info("checkpoint: resampled pos_embed to %s tokens", self.grid_size)
        return sd

    def patch_pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """The patch rows of the position table for a token grid, ``[1, *G, C]`` (resampled if not stored)."""
        if self.pos_embed_kind == "separate":  # row t*H'*W' + s is spatial[s] + temporal[t], as MAE-ST's repeats
            return pe.separate(self.pos_embed_spatial, self.pos_embed_temporal, self.grid_size, grid)  # [1, *G, C]
        C = self.pos_embed.shape[-1]
        table = self.pos_embed[:, 1:].reshape(1, *self.grid_size, C)  # [1, H0, W0, C]
        return pe.resample_grid(table, grid)  # [1, H', W', C]

    def token_grid(self, x: torch.Tensor) -> tuple[int, ...]:
        """Check ``x`` and return its token grid ``G`` (``(H', W')``, clips ``(T', H', W')``); raises a one-line
        error that says which sizes work."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.ndim + 2:
            kind = "[B, C, H, W] images" if self.ndim == 2 else "[B, C, T, H, W] clips"
            raise ValueError(f"this model takes {kind}; got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"convert the input or build the model with in_chans={x.shape[1]}")
        return self.grid_for(tuple(x.shape[2:]))

    def grid_for(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an ``(H, W)`` (clips: ``(T, H, W)``) input, or a one-line error naming the sizes that
        work."""
        raise NotImplementedError

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, *S]`` to tokens ``[B, *G, C]`` (no position embedding)."""
        raise NotImplementedError

    def class_pos_embed(self) -> torch.Tensor:
        """The class token's position row ``[1, 1, C]``."""
        return self.pos_embed_class if self.pos_embed_kind == "separate" else self.pos_embed[:, :1]

    def _init_linears_and_norms(self, init_weight) -> None:
        """``init_weight`` on every Linear weight, zero Linear biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_weight(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, *S]`` to patch tokens plus their position embedding, ``[B, N, C]`` in raster order
        (``N = prod(G)``, time outermost for clips). The class token is not added here: :meth:`encode` prepends it."""
        grid = self.token_grid(x)
        x = self.tokenize(x)  # [B, *G, C]
        x = x + self.patch_pos_embed(grid).to(x.dtype)  # [B, *G, C]; in x's dtype, see Hiera._embed
        return x.flatten(1, -2)  # [B, N, C]

    def _prepend_class_token(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"encode takes tokens [B, N, {self.embed_dim}] from embed(), got {tuple(tokens.shape)}")
        cls = (self.cls_token + self.class_pos_embed()).to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # [B, 1, C]
        return torch.cat([cls, tokens], dim=1)  # [B, 1 + N, C]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer on any subset of tokens from :meth:`embed` (``[B, N', C]``, e.g. only the visible
        ones in MAE): prepend the class token with its position row, apply the blocks and ``norm``: ``[B, 1+N', C]``.
        """
        x = self._prepend_class_token(tokens)  # [B, 1 + N', C]
        for block in self.blocks:
            x = self.run_block(block, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, *S]`` to tokens ``[B, 1 + N, C]``, class token first."""
        return self.encode(self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool ``[B, 1 + N, C]`` from :meth:`forward_features` (class token or patch mean), classify:
        ``[B, num_classes]`` logits, or the pooled ``[B, C]`` with ``pre_logits``."""
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]  # [B, C]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
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
        """Per-block patch-token maps (class token removed), as timm's ``forward_intermediates``.

        Args:
            indices: blocks to return (0-based, negative from the end), or an int ``n`` for the last ``n``; all by
                default.
            norm: apply the final ``norm`` to every returned map (as timm's ViT; a no-op with ``global_pool="avg"``).
            output_fmt: ``"NCHW"`` (``[B, C, H', W']``; clips ``[B, C, T', H', W']``), ``"NHWC"`` (channels
                last) or ``"NLC"`` (``[B, N, C]``).
        Returns:
            the list of maps, or ``(forward_features(x) [B, 1 + N, C], maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        n = len(self.blocks)
        take = take_indices(n, indices, "blocks")
        B = x.shape[0]
        grid = self.token_grid(x)
        x = self._prepend_class_token(self.embed(x))  # [B, 1 + N, C]
        found = {}
        for i, block in enumerate(self.blocks[: (max(take) + 1) if intermediates_only else n]):
            x = self.run_block(block, x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, 1:]  # [B, N, C]
                if output_fmt != "NLC":
                    y = y.reshape(B, *grid, -1)  # [B, *G, C]
                found[i] = y.movedim(-1, 1) if output_fmt == "NCHW" else y  # [B, C, *G]
        maps = [found[i] for i in take]
        return maps if intermediates_only else (self.norm(x), maps)


class VisionTransformer(ViTBackbone):
    """ViT on ``[B, C, H, W]`` images (sides multiples of ``patch_size``). The defaults are ViT-B/16 at 224 px."""

    embed_params = ("patch_embed", "cls_token", "pos_embed")  # layer 0 for layer-wise lr decay

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_embed: str = "sincos",
        global_pool: str = "token",
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        size = _pair(img_size)
        if any(s % patch_size or s <= 0 for s in size):
            raise ValueError(f"img_size {size} must be positive multiples of patch_size {patch_size}")
        super().__init__(
            grid_size=(size[0] // patch_size, size[1] // patch_size), in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            pos_embed=pos_embed, global_pool=global_pool, drop_path_rate=drop_path_rate, head_dropout=head_dropout,
            norm_eps=norm_eps,
        )
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, (patch_size,) * 2, (patch_size,) * 2, (0, 0))
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed.requires_grad:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # MAE: the projection as a Linear over flattened patches
        # (MAE leaves the patch projection's bias at PyTorch's default init; so do we.)
        nn.init.normal_(self.cls_token, std=0.02)
        self._init_linears_and_norms(nn.init.xavier_uniform_)

    # ---------------------------------------------------------------- input geometry
    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        p = self.patch_size
        bad = [(name, s) for name, s in zip("HW", size) if s % p or s == 0]
        if bad:
            fixes = ", ".join(f"{name}={s} -> a multiple of {p} (e.g. {max(p, round(s / p) * p)})" for name, s in bad)
            raise ValueError(f"input size {size} is not a multiple of the patch size: {fixes}; resize or crop")
        return size[0] // p, size[1] // p

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, H, W]`` to patch tokens ``[B, H', W', C]`` (no position embedding)."""
        return self.patch_embed(x)
