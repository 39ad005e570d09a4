"""The plain ViT: parity with timm's VisionTransformer (same weights, fp32, <= 1e-5), MAE's sin-cos table, and the
model API over every registered ``vit_*`` name at a toy size."""

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

import hieralab
from conftest import randomize_
from hieralab.layers import pos_embed as pe
from hieralab.models import VisionTransformer

TOL = 1e-5
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=10)


# The image ViTs (MAE-ST's video ViTs, ``vit_*_video``, have their own tests: tests/test_vit_video.py).
IMAGE_VITS = [n for n in hieralab.list_models("vit_*") if not n.endswith("_video")]


def toy(name: str, **kw) -> VisionTransformer:
    """A registered variant at depth 1, width 64 and a 2x2 token grid (its own patch size)."""
    patch = hieralab.model_config(name)["patch_size"]
    return hieralab.create_model(name, **{**dict(depth=1, embed_dim=64, num_heads=2, img_size=2 * patch), **kw})


def tiny_pair(seed: int = 0, **kw) -> tuple[torch.nn.Module, VisionTransformer]:
    cfg = {**TINY, **kw}
    ref = randomize_(TimmViT(**cfg), seed).eval()
    ours = VisionTransformer(**cfg).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# ---------------------------------------------------------------- parity with timm
@pytest.mark.parametrize("name", [n for n in IMAGE_VITS if "_patch4_32" not in n])  # timm's
def test_state_dict_matches_timm(name):
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False, num_classes=1000)
        ours = hieralab.create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.grid_size == ref.patch_embed.grid_size and ours.num_features == ref.num_features


def _base_parity(global_pool: str):
    with torch.device("meta"):  # skip both inits (seconds at this size); every tensor is overwritten below
        ref = timm.create_model("vit_base_patch16_224", pretrained=False, global_pool=global_pool)
        ours = hieralab.create_model("vit_base_patch16_224", global_pool=global_pool)
    ref = randomize_(ref.to_empty(device="cpu")).eval()
    ours.load_state_dict(ref.state_dict(), assign=True)
    ours.eval()
    assert not ours.pos_embed.requires_grad  # assign keeps the module's requires_grad: still the fixed table slot
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref_feats, feats = ref.forward_features(x), ours.forward_features(x)
        ref_logits, logits = ref.forward_head(ref_feats), ours.forward_head(feats)
    assert ref_logits.abs().max() > 0.1  # outputs of order 1, so the tolerance means something
    torch.testing.assert_close(feats, ref_feats, atol=TOL, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)


def test_base_matches_timm():
    _base_parity("token")


@pytest.mark.slow
def test_base_avg_pool_matches_timm():
    _base_parity("avg")


@pytest.mark.parametrize("kw", [
    dict(global_pool="token"),
    dict(global_pool="avg"),
    dict(global_pool="avg", qkv_bias=False, mlp_ratio=2.0, img_size=(24, 40)),
])
def test_tiny_matches_timm(kw):
    ref, ours = tiny_pair(**kw)
    size = kw.get("img_size", 32)
    x = torch.randn(3, 3, *((size, size) if isinstance(size, int) else size))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=TOL, rtol=0)
        ref_logits = ref(x)
        torch.testing.assert_close(ours(x), ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=TOL, rtol=0)
    assert ref_logits.abs().max() > 0.1


def test_timm_checkpoint_loads_through_load_checkpoint():
    ref, _ = tiny_pair()
    ours = VisionTransformer(**TINY).eval()
    assert hieralab.load_checkpoint(ours, ref.state_dict()) == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=0)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
@pytest.mark.parametrize("indices, norm, fmt", [
    (None, False, "NCHW"), (2, True, "NCHW"), ([0, -1], True, "NLC"), ([1], False, "NLC"),
])
def test_forward_intermediates_match_timm(global_pool, indices, norm, fmt):
    ref, ours = tiny_pair(global_pool=global_pool)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_final, ref_maps = ref.forward_intermediates(x, indices, norm=norm, output_fmt=fmt)
        final, maps = ours.forward_intermediates(x, indices, norm=norm, output_fmt=fmt)
        only = ours.forward_intermediates(x, indices, norm=norm, output_fmt=fmt, intermediates_only=True)
    torch.testing.assert_close(final, ref_final, atol=TOL, rtol=0)
    assert len(maps) == len(ref_maps) == len(only)
    for m, r, o in zip(maps, ref_maps, only):
        assert m.shape == r.shape == ((2, 64, 4, 4) if fmt == "NCHW" else (2, 16, 64))
        torch.testing.assert_close(m, r, atol=TOL, rtol=0)
        torch.testing.assert_close(o, m)


def test_forward_intermediates_formats_and_errors():
    model = VisionTransformer(**TINY).eval()
    x = torch.randn(1, 3, 24, 40)  # non-square: grid 3 x 5
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, [-1], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 3, 5)] * 3
    torch.testing.assert_close(nhwc[0], maps[-1].movedim(1, -1))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCWH")
    for bad in ([0, 3], [-4], 0, 4):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, bad)


# ---------------------------------------------------------------- position embedding
def mae_2d_sincos(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)``, re-derived in numpy as the reference
    (generalised to a rectangular grid): ``[1 + H*W, D]``, first half from the w coordinate, class row zero."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega  # [D/2]
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [M, D/2]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]

    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))  # 'xy': w first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)  # [H*W, D]
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("img_size, dim", [(32, 64), ((24, 40), 64), (224, 768)])
def test_sincos_table_is_mae_and_fixed(img_size, dim):
    model = VisionTransformer(img_size=img_size, patch_size=8 if dim == 64 else 16, embed_dim=dim, depth=1,
                              num_heads=2)
    expected = torch.from_numpy(mae_2d_sincos(dim, *model.grid_size)).float()[None]
    torch.testing.assert_close(model.pos_embed.data, expected, atol=1e-6, rtol=0)
    assert not model.pos_embed.requires_grad
    assert (model.pos_embed[0, 0] == 0).all()
    assert "pos_embed" not in [n for n, p in model.named_parameters() if p.requires_grad]
    assert "pos_embed" in model.state_dict()


def test_learned_pos_embed_is_trainable():
    model = VisionTransformer(**TINY, pos_embed="learned")
    assert model.pos_embed.requires_grad and 0.01 < model.pos_embed.std() < 0.03
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_other_input_sizes_resample_the_table():
    model = randomize_(VisionTransformer(**TINY, pos_embed="learned")).eval()
    table = model.pos_embed[:, 1:].reshape(1, 4, 4, 64)
    assert torch.equal(model.patch_pos_embed((4, 4)), table)  # stored size: no resampling
    expected = F.interpolate(table.movedim(-1, 1), size=(6, 8), mode="bicubic", align_corners=False).movedim(1, -1)
    torch.testing.assert_close(model.patch_pos_embed((6, 8)), expected)
    x = torch.randn(2, 3, 48, 64)
    tokens = model.embed(x)
    patches = model.patch_embed(x) + expected  # [B, 6, 8, C]
    torch.testing.assert_close(tokens, patches.flatten(1, 2))
    assert model(x).shape == (2, 10)


# ---------------------------------------------------------------- the MAE-facing split: embed / encode
def test_embed_encode_split():
    model = randomize_(VisionTransformer(**TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.embed(x)
        assert tokens.shape == (2, 16, 64)
        torch.testing.assert_close(model.encode(tokens), model.forward_features(x))
        # the MAE encoder sees a subset: positions were added in embed, so encode is order-equivariant
        keep = torch.tensor([5, 0, 11, 3])
        out = model.encode(tokens[:, keep])
        assert out.shape == (2, 5, 64)
        perm = torch.tensor([2, 0, 3, 1])
        shuffled = model.encode(tokens[:, keep[perm]])
    torch.testing.assert_close(shuffled[:, 1:], out[:, 1:][:, perm], atol=TOL, rtol=0)
    torch.testing.assert_close(shuffled[:, 0], out[:, 0], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="encode takes tokens"):
        model.encode(torch.randn(2, 4, 32))


# ---------------------------------------------------------------- every registered name, at a toy size
@pytest.mark.parametrize("global_pool", ["token", "avg"])
@pytest.mark.parametrize("name", IMAGE_VITS)
def test_every_model_runs_and_trains(name, global_pool):
    model = toy(name, global_pool=global_pool, drop_path_rate=0.1, head_dropout=0.1).train()
    x = torch.randn(2, 3, *(2 * model.patch_size,) * 2)
    logits = model(x)
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()] == []
    assert model.pos_embed.grad is None  # the fixed sin-cos table stays fixed


def test_registry_sizes():
    expected = {"vit_tiny_patch16_224": (192, 12, 3, 16), "vit_small_patch16_224": (384, 12, 6, 16),
                "vit_base_patch16_224": (768, 12, 12, 16), "vit_large_patch16_224": (1024, 24, 16, 16),
                "vit_huge_patch14_224": (1280, 32, 16, 14), "vit_mini_patch4_32": (128, 6, 4, 4),
                "vit_micro_patch4_32": (64, 4, 4, 4)}
    assert IMAGE_VITS == sorted(expected)
    for name, (dim, depth, heads, patch) in expected.items():
        cfg = hieralab.model_config(name)
        assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["patch_size"]) == (dim, depth, heads, patch)


def test_drop_path_is_linear_in_depth():
    model = VisionTransformer(**{**TINY, "depth": 5}, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_init_is_mae():
    model = VisionTransformer(**TINY)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = (6 / sum(m.weight.shape)) ** 0.5
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.8 * bound, name
            assert (m.bias == 0).all(), name
        elif isinstance(m, torch.nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all(), name
    w = model.patch_embed.proj.weight
    assert w.abs().max() <= (6 / (w.shape[0] + w[0].numel())) ** 0.5
    assert 0.01 < model.cls_token.std() < 0.03


@pytest.mark.parametrize("shape, message", [
    ((2, 1, 32, 32), "expected 3 input channels"),
    ((3, 32, 32), "takes \\[B, C, H, W\\] images"),
    ((1, 3, 4, 32, 32), "takes \\[B, C, H, W\\] images"),
    ((1, 3, 32, 36), "W=36 -> a multiple of 8"),
    ((1, 3, 20, 32), "H=20 -> a multiple of 8"),
])
def test_bad_input_is_a_clear_error(shape, message):
    model = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


@pytest.mark.parametrize("kw, message", [
    (dict(pos_embed="rope"), "pos_embed"),
    (dict(global_pool="max"), "global_pool"),
    (dict(img_size=36), "multiples of patch_size"),
    (dict(num_heads=3), "divisible by 3 heads"),
    (dict(embed_dim=66, num_heads=2), "divisible by 4"),
])
def test_invalid_constructor_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**TINY, **kw})


def test_save_and_load_pretrained(tmp_path):
    model = randomize_(toy("vit_small_patch16_224", num_classes=5, global_pool="avg", img_size=(32, 64))).eval()
    model.save_pretrained(str(tmp_path))
    loaded = VisionTransformer.from_pretrained(str(tmp_path)).eval()
    assert isinstance(loaded, VisionTransformer) and loaded.config == model.config
    assert not loaded.pos_embed.requires_grad and loaded.grid_size == (2, 4)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert hieralab.from_pretrained(str(tmp_path)).model_name == "vit_small_patch16_224"


def test_layer_ids_no_weight_decay_and_reset_classifier():
    model = toy("vit_base_patch16_224", depth=3)
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(model.num_layers)) and model.num_layers == 5
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["norm.weight"] == ids["head.weight"] == 4
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    x = torch.randn(1, 3, 32, 32)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7) and model.config["num_classes"] == 7
    model.reset_classifier(0)
    assert model(x).shape == (1, 64) and model.num_features == 64


def test_config_is_data():
    cfg = toy("vit_huge_patch14_224", img_size=(28, 42)).config
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["img_size"] == [28, 42] and cfg["patch_size"] == 14 and cfg["pos_embed"] == "sincos"
    assert hieralab.create_model("vit_tiny_patch16_224", depth=1).grid_size == (14, 14)


def test_sincos_helper_matches_reference_directly():
    # the layer helper alone, without the class row, for a rectangular grid
    torch.testing.assert_close(pe.sincos_2d(32, (3, 5)), torch.from_numpy(mae_2d_sincos(32, 3, 5)[1:]).float()[None],
                               atol=1e-6, rtol=0)
