"""MAE-Hiera parity with the official ``hiera.mae_hiera_*``: same weights + same mask -> same loss and predictions."""

import pytest
import torch

import hieralab
from conftest import randomize_

hiera = pytest.importorskip("hiera")
TOL = 1e-5

IMAGE = ["mae_hiera_tiny_224", "mae_hiera_small_224", "mae_hiera_base_224", "mae_hiera_base_plus_224",
         "mae_hiera_large_224", "mae_hiera_huge_224"]
VIDEO = ["mae_hiera_base_16x224", "mae_hiera_base_plus_16x224", "mae_hiera_large_16x224", "mae_hiera_huge_16x224"]


def official(name: str, **kw):
    if not kw:
        return getattr(hiera, name)()
    cfg = {**hieralab.model_config(name), **kw}
    cfg["sep_pos_embed"] = cfg.pop("pos_embed", "absolute") == "separate"
    cfg.pop("mask_ratio")
    return hiera.MaskedAutoencoderHiera(**cfg)


def pair(name: str, **kw):
    ref = randomize_(official(name, **kw)).train()
    ours = hieralab.create_model(name, **kw).train()
    hieralab.load_checkpoint(ours, ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("name", IMAGE + VIDEO)
def test_state_dict_keys_map_one_to_one(name, official_on_meta):
    with torch.device("meta"):
        ref = getattr(hiera, name)()
        ours = hieralab.create_model(name)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    from hieralab.models.checkpoint import to_mae_keys

    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: v for k, v in zip(to_mae_keys(ref_shapes), ref_shapes.values())}


def check_same(ref, ours, x, ratio):
    torch.manual_seed(1)
    ref_loss, ref_pred, ref_label, ref_keep = ref(x, mask_ratio=ratio)
    torch.manual_seed(1)  # the same draw: our masking uses MAE's noise-argsort on the same generator
    out = ours(x, mask_ratio=ratio)
    assert torch.equal(out.visible, ref_keep.bool())  # official mask: True = keep
    hidden = ~out.visible_patches
    assert ref_loss > 0.5  # normalised targets against an untrained decoder: a loss of order one
    torch.testing.assert_close(out.loss, ref_loss, atol=TOL, rtol=0)
    torch.testing.assert_close(out.pred[hidden], ref_pred, atol=TOL, rtol=0)
    torch.testing.assert_close(out.target[hidden], ref_label, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["mae_hiera_tiny_224", "mae_hiera_base_plus_224"])
def test_image_loss_and_predictions_match(name):
    ref, ours = pair(name)
    check_same(ref, ours, torch.randn(2, 3, 224, 224), 0.6)


def test_video_loss_and_predictions_match():
    ref, ours = pair("mae_hiera_base_16x224", stages=(1, 1, 2, 1), decoder_depth=2)
    check_same(ref, ours, torch.randn(2, 3, 16, 224, 224), 0.9)


@pytest.mark.parametrize("name", ["mae_hiera_large_224", "mae_hiera_huge_224"])
def test_large_and_huge_match_at_reduced_depth(name):
    ref, ours = pair(name, stages=(1, 1, 2, 1), decoder_depth=2)
    check_same(ref, ours, torch.randn(1, 3, 224, 224), 0.6)


def test_gradients_match():
    ref, ours = pair("mae_hiera_tiny_224", stages=(1, 1, 1, 1), decoder_depth=1)
    x = torch.randn(1, 3, 224, 224)
    torch.manual_seed(3)
    ref(x)[0].backward()
    torch.manual_seed(3)
    ours(x).loss.backward()
    ref_grads = dict(ref.named_parameters())
    from hieralab.models.checkpoint import to_mae_keys

    for ours_name, ref_name in zip(to_mae_keys({k: 0 for k in ref_grads}), ref_grads):
        g = dict(ours.named_parameters())[ours_name].grad
        torch.testing.assert_close(g, ref_grads[ref_name].grad, atol=1e-6, rtol=1e-4, msg=ours_name)


def test_mae_weights_round_trip_into_the_encoder(tmp_path):
    ours = randomize_(hieralab.create_model("mae_hiera_tiny_224", decoder_depth=1))
    ours.save_pretrained(tmp_path)
    enc = hieralab.create_model("hiera_tiny_224", q_pool=2, checkpoint=str(tmp_path))
    torch.testing.assert_close(enc.blocks[5].mlp.fc1.weight, ours.encoder.blocks[5].mlp.fc1.weight)
