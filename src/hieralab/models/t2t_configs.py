"""The T2T-ViT family as data (Table 1 of Yuan et al. 2021 and the official repository), at 224 px.

``t2t_vit_N`` use the Performer T2T layer, ``t2t_vit_t_N`` the Transformer one; the backbone is the same.
"""

from __future__ import annotations

from .registry import register
from .t2t_vit import T2TViT

BACKBONES = {  # depth: embed_dim, num_heads, mlp_ratio
    7: dict(embed_dim=256, num_heads=4, mlp_ratio=2.0),
    10: dict(embed_dim=256, num_heads=4, mlp_ratio=2.0),
    12: dict(embed_dim=256, num_heads=4, mlp_ratio=2.0),
    14: dict(embed_dim=384, num_heads=6, mlp_ratio=3.0),
    19: dict(embed_dim=448, num_heads=7, mlp_ratio=3.0),
    24: dict(embed_dim=512, num_heads=8, mlp_ratio=3.0),
}

for depth, arch in BACKBONES.items():
    register(f"t2t_vit_{depth}", T2TViT, tokens_type="performer", depth=depth, **arch)
for depth in (14, 19, 24):
    register(f"t2t_vit_t_{depth}", T2TViT, tokens_type="transformer", depth=depth, **BACKBONES[depth])

# Small T2T-ViTs for 32 px images (Fashion-MNIST, tests): a 2 x 2 token grid, as ViT-7's backbone but shallower.
register("t2t_vit_mini_32", T2TViT, img_size=32, tokens_type="performer", token_dim=32, embed_dim=128, depth=4,
         num_heads=4, mlp_ratio=2.0, num_classes=10)
register("t2t_vit_t_mini_32", T2TViT, img_size=32, tokens_type="transformer", token_dim=32, embed_dim=128, depth=4,
         num_heads=4, mlp_ratio=2.0, num_classes=10)
