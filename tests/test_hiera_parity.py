"""Parity with the official ``hiera-transformer`` package: same weights, same outputs (fp32, <= 1e-5)."""

import pytest
import torch

import hieralab
from conftest import randomize_

hiera = pytest.importorskip("hiera")

OFFICIAL = [
    "hiera_tiny_224", "hiera_small_224", "hiera_base_224", "hiera_base_plus_224", "hiera_large_224",
    "hiera_huge_224", "hiera_base_16x224", "hiera_base_plus_16x224", "hiera_large_16x224", "hiera_huge_16x224",
]
TOL = 1e-5


def official(name: str, **kw) -> torch.nn.Module:
    if kw:  # the official factories fix their stages: build the class from our registry's config instead
        cfg = {**hieralab.model_config(name), **kw}
        cfg["sep_pos_embed"] = cfg.pop("pos_embed", "absolute") == "separate"
        model = hiera.Hiera(**cfg).eval()
    else:
        model = getattr(hiera, name)().eval()
    model.head.act_func = lambda x: x  # the official head applies softmax in eval mode; compare pre-softmax logits
    return model


def pair(name: str, seed: int = 0, **kw):
    ref = randomize_(official(name, **kw), seed)
    ours = hieralab.create_model(name, **kw).eval()
    assert hieralab.load_checkpoint(ours, ref.state_dict()) == []
    return ref, ours


def video_or_image(name: str, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 224, 224) if "16x" in name else torch.randn(batch, 3, 224, 224)


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_keys_map_one_to_one(name, official_on_meta):
    with torch.device("meta"):
        ref = getattr(hiera, name)()
        ours = hieralab.create_model(name)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == ref_shapes


@pytest.mark.parametrize("name", ["hiera_tiny_224", "hiera_small_224", "hiera_base_224", "hiera_base_plus_224"])
def test_image_logits_and_intermediates_match(name):
    ref, ours = pair(name)
    x = video_or_image(name, 2)
    with torch.no_grad():
        ref_logits, ref_maps = ref(x, return_intermediates=True)
        logits, (_, maps) = ours(x), ours.forward_intermediates(x, output_fmt="NHWC")
    assert ref_logits.abs().max() > 0.1  # outputs of order 1, so the tolerance means something
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["hiera_tiny_224", "hiera_base_plus_224", "hiera_base_16x224"])
def test_masked_forward_matches(name):
    ref, ours = pair(name)
    x = video_or_image(name, 2)
    visible = ref.get_random_mask(x, mask_ratio=0.6 if "16x" not in name else 0.9)  # official: True = keep
    with torch.no_grad():
        ref_tokens, ref_maps = ref(x, mask=visible, return_intermediates=True)
        maps = ours.forward_intermediates(x, visible=visible, intermediates_only=True)
    for a, b in zip(maps, ref_maps, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_video_logits_and_intermediates_match():
    ref, ours = pair("hiera_base_16x224")
    x = video_or_image("hiera_base_16x224", 1)
    with torch.no_grad():
        ref_logits, ref_maps = ref(x, return_intermediates=True)
        final, maps = ours.forward_intermediates(x, output_fmt="NHWC")
        logits = ours.forward_head(final)
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["hiera_large_224", "hiera_huge_224", "hiera_large_16x224", "hiera_huge_16x224"])
def test_large_and_huge_widths_match_at_reduced_depth(name):
    ref, ours = pair(name, stages=(1, 1, 2, 1))
    x = video_or_image(name, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hiera_large_224", "hiera_huge_224"])
def test_large_and_huge_full_depth(name):
    ref, ours = pair(name)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=0)


def test_mae_checkpoint_loads_into_an_encoder():
    mae = hiera.mae_hiera_tiny_224()
    ours = hieralab.create_model("hiera_tiny_224")
    missing = hieralab.load_checkpoint(ours, {"model_state": mae.state_dict()}["model_state"])
    assert sorted(missing) == ["head.projection.bias", "head.projection.weight", "norm.bias", "norm.weight"]
    torch.testing.assert_close(ours.blocks[3].attn.qkv.weight, mae.blocks[3].attn.qkv.weight)


def test_official_file_format_loads(tmp_path):
    ref = randomize_(official("hiera_tiny_224"))
    torch.save({"model_state": ref.state_dict()}, tmp_path / "hiera_tiny_224.pth")
    ours = hieralab.create_model("hiera_tiny_224", checkpoint=str(tmp_path / "hiera_tiny_224.pth")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=TOL, rtol=0)
