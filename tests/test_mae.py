"""MAE building blocks: masks, pixel targets, and the plain-ViT MAE against the MAE paper's own formulas."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hieralab
from hieralab.mae import keep_count, random_visible, targets
from hieralab.seeds import generator


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 5), units=st.integers(1, 400), ratio=st.floats(0.0, 0.95))
def test_masks_keep_the_same_count_in_every_row(batch, units, ratio):
    visible = random_visible(batch, units, ratio, generator=torch.Generator().manual_seed(0))
    assert visible.dtype == torch.bool and visible.shape == (batch, units)
    assert (visible.sum(1) == keep_count(units, ratio)).all()
    assert keep_count(units, ratio) == max(1, int(units * (1 - ratio)))


def test_masks_are_seeded_and_differ_across_seeds():
    a = random_visible(4, 49, 0.6, generator=generator(0, "mask", 1, 2))
    assert torch.equal(a, random_visible(4, 49, 0.6, generator=generator(0, "mask", 1, 2)))
    assert not torch.equal(a, random_visible(4, 49, 0.6, generator=generator(0, "mask", 1, 3)))
    with pytest.raises(ValueError, match="mask_ratio"):
        random_visible(1, 10, 1.0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_patchify_round_trips(channels_last):
    x = torch.randn(2, 3, 32, 48)
    p = targets.patchify(x, 8, channels_last=channels_last)
    assert p.shape == (2, 4 * 6, 8 * 8 * 3)
    torch.testing.assert_close(targets.unpatchify(p, 8, (4, 6), channels_last=channels_last), x, rtol=0, atol=0)


def test_patchify_order_matches_mae():
    x = torch.randn(2, 3, 32, 32)
    # MAE's patchify: x.reshape(N, C, h, p, w, p) -> einsum('nchpwq->nhwpqc') -> (N, h*w, p*p*C)
    ref = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 3, 4, 8, 4, 8)).reshape(2, 16, 192)
    assert torch.equal(targets.patchify(x, 8), ref)


def test_video_labels_take_the_first_frame_of_each_token():
    x = torch.randn(1, 3, 4, 16, 16)
    p = targets.patchify_video(x, 8, 2)  # frames 0 and 2
    assert p.shape == (1, 2 * 4, 192)
    torch.testing.assert_close(targets.unpatchify_video(p, 8, (2, 2, 2)), x[:, :, ::2])


def test_normalize_patches_uses_the_unbiased_variance():
    t = torch.randn(3, 5, 12)
    normed, mean, std = targets.normalize_patches(t)
    torch.testing.assert_close(normed * std + mean, t)
    torch.testing.assert_close(std.squeeze(-1) ** 2, t.var(-1, unbiased=True) + 1e-6)


def mae_reference_loss(imgs, pred, removed, p):
    """The MAE code's forward_loss (norm_pix_loss=True), written out: mask 1 = removed."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    target = torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * removed).sum() / removed.sum()


def test_vit_mae_loss_is_the_papers():
    model = hieralab.create_model("mae_vit_mini_patch4_32", depth=2, decoder_depth=1)
    x = torch.randn(3, 3, 32, 32)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.visible.sum(1).tolist() == [16] * 3  # 25 % of 64 patches
    ref = mae_reference_loss(x, out.pred, (~out.visible).float(), 4)
    torch.testing.assert_close(out.loss, ref)
    assert out.loss > 0.5


def test_vit_mae_encoder_sees_only_the_visible_patches_and_their_order_does_not_matter():
    model = hieralab.create_model("mae_vit_mini_patch4_32", depth=2, decoder_depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    visible = random_visible(2, 64, 0.75, generator=torch.Generator().manual_seed(1))
    latent = model.forward_encoder(x, visible)
    assert latent.shape == (2, 1 + 16, 128)
    # the same tokens through the encoder by hand, in a shuffled order: same class token, permuted patch tokens
    tokens = model.encoder.embed(x)
    idx = [torch.nonzero(v).flatten() for v in visible]
    perm = torch.randperm(16)
    manual = model.encoder.encode(torch.stack([tokens[b, idx[b][perm]] for b in range(2)]))
    torch.testing.assert_close(manual[:, 0], latent[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(manual[:, 1:], latent[:, 1:][:, perm], atol=1e-5, rtol=0)
    # with nothing masked the encoder is the plain ViT
    everything = torch.ones(2, 64, dtype=torch.bool)
    torch.testing.assert_close(model.forward_encoder(x, everything), model.encoder.forward_features(x),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", [n for n in hieralab.list_models("mae_*") if "mini" in n or "micro" in n])
def test_every_trainable_parameter_gets_a_gradient(name):
    model = hieralab.create_model(name)
    x = torch.randn(2, 3, 8, 32, 32) if model.encoder.ndim == 3 else torch.randn(2, 3, 32, 32)
    out = model(x)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert out.pred.shape == out.target.shape
    assert out.visible_patches.shape == out.pred.shape[:2]


@pytest.mark.parametrize("name", [n for n in hieralab.list_models("mae_*") if "mini" in n or "micro" in n])
def test_the_step_runs_under_bf16_autocast(name):
    """amp=auto trains in bf16 on a GPU: the decoder's bf16 tokens go back among fp32 mask tokens (a dtype mismatch
    once crashed every MAE step there; CPU autocast shows it without a GPU). The loss stays close to fp32's."""
    model = hieralab.create_model(name)
    x = torch.randn(2, 3, 8, 32, 32) if model.encoder.ndim == 3 else torch.randn(2, 3, 32, 32)
    visible = model.random_visible(x, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, visible)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    assert out.loss.item() == pytest.approx(model(x, visible).loss.item(), rel=0.05)


@pytest.mark.parametrize("name", ["mae_hiera_mini_32", "mae_vit_mini_patch4_32"])
def test_masked_patches_change_nothing_in_the_encoder(name):
    """Sparse MAE: the pixels of hidden units must not reach the encoder (they are deleted, not zeroed late)."""
    model = hieralab.create_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    visible = model.random_visible(x, generator=torch.Generator().manual_seed(0))
    shown = model.visible_patches(visible, model.num_units(x))[..., None].float()  # [B, N, 1]
    pix = model.target_to_pixels(shown.expand(-1, -1, model.target(x).shape[-1]), x)  # 1 where visible
    y = x + (1 - pix) * torch.randn_like(x) * 10  # change only hidden pixels
    torch.testing.assert_close(model.forward_encoder(x, visible), model.forward_encoder(y, visible))


def test_mae_checkpoint_round_trip_and_registry(tmp_path):
    model = hieralab.create_model("mae_vit_mini_patch4_32", decoder_depth=1)
    model.save_pretrained(str(tmp_path))
    again = hieralab.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert len(hieralab.list_models("mae_hiera_*")) == 12 and len(hieralab.list_models("mae_vit_*")) == 11


@pytest.mark.parametrize("ndim,kernel", [(2, (4, 4)), (2, (2, 2)), (3, (1, 2, 2))])
def test_window_conv_is_the_fusion_conv(ndim, kernel):
    """The fusion head applied as one matmul on channels-last windows equals the conv on channels-first ones."""
    from hieralab.mae.hiera_mae import window_conv

    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(6, 5, kernel, stride=kernel)
    mu = [2 * k for k in kernel]
    x = torch.randn(2, 3, *mu, 6)  # [B, U, *mu_s, C_in]
    expected = conv(x.flatten(0, 1).movedim(-1, 1)).movedim(1, -1).unflatten(0, (2, 3))
    got = window_conv(x, conv)
    assert got.shape == (2, 3, *[2] * ndim, 5)
    assert torch.allclose(got, expected, atol=1e-5)
