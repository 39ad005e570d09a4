"""The HieraDet family as data: SAM 2's four image-encoder trunks, under timm's names and with timm's configs (the
same as SAM 2's and SAM 2.1's ``sam2*_hiera_{t,s,b+,l}.yaml``). No classifier (``num_classes=0``), as timm and the
released files: ``forward`` returns the normalised pooled features; pass ``num_classes`` for a head to fine-tune."""

from __future__ import annotations

from .hieradet import HieraDet
from .registry import register

SAM2 = {  # embed_dim, num_heads, blocks per stage, global-attention blocks, windows, background table
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_spec=(8, 4, 14, 7), global_pos_size=(7, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_spec=(8, 4, 14, 7), global_pos_size=(7, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_spec=(8, 4, 14, 7), global_pos_size=(14, 14)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_spec=(8, 4, 16, 8), global_pos_size=(7, 7)),
}

for size, arch in SAM2.items():
    register(f"sam2_hiera_{size}", HieraDet, **arch, num_classes=0)

# The demo's small HieraDet: hiera_mini_32 (models/hiera_configs.py) in SAM 2's layout, so that an MAE of
# mae_hiera_mini_32 initialises it through hiera_to_hieradet (how SAM 2 started from MAE Hiera). Same widths, heads
# and stages (64 / 128 / 256, 2 / 4 / 8 heads, blocks 1, 2, 2, two q-pools); 2 px patches, 16x16 tokens at 32 px.
# Hiera's 4x4-token mask units are the windows of stage 1 (then 2x2 after the pool, with the same one-block lag),
# and its global stage is global_att_blocks=(4,) (block 3 still attends in stage 2's windows, as Hiera's lag does);
# the background table is Hiera's 16x16 grid, so the conversion copies it exactly (window table zero) and the
# converted model computes Hiera's outputs at 32 px.
MINI_32 = dict(embed_dim=64, num_heads=2, stages=(1, 2, 2), q_pool=2, window_spec=(4, 2, 4), global_att_blocks=(4,),
               global_pos_size=(16, 16), patch_kernel=(3, 3), patch_stride=(2, 2), patch_padding=(1, 1))
register("sam2_hiera_mini_32", HieraDet, **MINI_32, num_classes=10)
