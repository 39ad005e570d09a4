"""Every registered model, at a toy depth and size: shapes, gradients, API, bad input."""

import inspect
import math

import pytest
import torch

import hieralab
from hieralab.layers import pos_embed as pe

TOY = dict(stages=(1, 1, 1, 1))


def toy(name: str, **kw):
    stages = (1,) * len(hieralab.model_config(name)["stages"])  # one block per stage, as many stages as registered
    return hieralab.create_model(name, **{"stages": stages, **kw})


def toy_input(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 64, 64) if model.ndim == 3 else torch.randn(batch, 3, 64, 64)


@pytest.mark.parametrize("name", hieralab.list_models("hiera_*"))
def test_every_model_runs_and_trains(name):
    model = toy(name, drop_path_rate=0.1).train()
    x = toy_input(model)
    logits = model(x)
    assert logits.shape == (2, model.num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


@pytest.mark.parametrize("name", hieralab.list_models("hiera_*"))
def test_every_model_masked_forward(name):
    model = toy(name).eval()
    x = toy_input(model)
    units = math.prod(g // m for g, m in zip(model.token_grid(x), model.mask_unit_size))
    visible = torch.zeros(2, units, dtype=torch.bool)
    visible[0, :2], visible[1, -2:] = True, True
    maps = model.forward_intermediates(x, visible=visible, intermediates_only=True)
    assert [m.shape[1] for m in maps] == [2] * len(model.stage_ends)
    assert maps[0].shape[2:-1] == model.mask_unit_size


def test_head_returns_logits_in_eval():
    model = hieralab.create_model("hiera_tiny_224", **TOY).eval()
    with torch.no_grad():
        model.head.projection.weight.normal_(0, 1)
        out = model(torch.randn(2, 3, 64, 64))
    assert not torch.allclose(out.sum(-1), torch.ones(2))
    assert (out < 0).any()


def test_forward_intermediates_formats_and_indices():
    model = toy("hiera_tiny_224").eval()
    x = torch.randn(1, 3, 64, 96)  # non-square
    final, maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(1, 96, 16, 24), (1, 192, 8, 12), (1, 384, 4, 6), (1, 768, 2, 3)]
    assert final.shape == (1, 2, 3, 768)
    nhwc = model.forward_intermediates(x, indices=[1, -1], output_fmt="NHWC", intermediates_only=True)
    assert [tuple(m.shape) for m in nhwc] == [(1, 8, 12, 192), (1, 2, 3, 768)]
    torch.testing.assert_close(nhwc[1], maps[3].movedim(1, -1))
    torch.testing.assert_close(model.forward_head(final), model(x))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCWH")


def test_video_intermediates_are_5d():
    model = toy("hiera_base_16x224").eval()
    maps = model.forward_intermediates(torch.randn(1, 3, 4, 64, 64), intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 96, 2, 16, 16), (1, 192, 2, 8, 8), (1, 384, 2, 4, 4),
                                               (1, 768, 2, 2, 2)]


def test_other_input_sizes_resample_the_position_embedding():
    model = toy("hiera_tiny_224").eval()
    grid = model._pos_embed((8, 10))
    stored = model.pos_embed.view(1, 56, 56, -1)
    expected = torch.nn.functional.interpolate(stored.movedim(-1, 1), size=(8, 10), mode="bicubic",
                                               align_corners=False).movedim(1, -1)
    torch.testing.assert_close(grid, expected)
    assert model(torch.randn(1, 3, 256, 320)).shape == (1, 1000)
    assert model._pos_embed((56, 56)) is not None and torch.equal(model._pos_embed((56, 56)), stored)


def test_video_takes_other_frame_counts():
    model = toy("hiera_base_16x224").eval()
    assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 400)
    temporal = pe.separate(model.pos_embed_spatial, model.pos_embed_temporal, model.stored_grid, (4, 16, 16))
    assert temporal.shape == (1, 4, 16, 16, 96)
    # linear in time: frame 0 of a 2-step grid lies between stored frames
    t = pe.resample_grid(model.pos_embed_temporal, (4,))
    torch.testing.assert_close(t, torch.nn.functional.interpolate(
        model.pos_embed_temporal.movedim(-1, 1), size=4, mode="linear", align_corners=False).movedim(1, -1))


@pytest.mark.parametrize("shape, message", [
    ((2, 1, 64, 64), "expected 3 input channels"),
    ((2, 3, 4, 64, 64), "takes \\[B, C, H, W\\] images"),
    ((3, 64, 64), "takes \\[B, C, H, W\\] images"),
    ((1, 3, 64, 70), "W=70 -> a multiple of 32"),
    ((1, 3, 16, 64), "H=16 -> a multiple of 32"),
])
def test_bad_input_is_a_clear_error(shape, message):
    model = toy("hiera_tiny_224")
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_bad_visible_masks():
    model = toy("hiera_tiny_224")
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="bool tensor"):
        model(x, visible=torch.ones(2, 4))
    uneven = torch.tensor([[True, True, False, False], [True, False, False, False]])
    with pytest.raises(ValueError, match="same number of visible units"):
        model(x, visible=uneven)


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown model 'hiera_tiny'.*hiera_tiny_224"):
        hieralab.create_model("hiera_tiny")


def test_layer_ids_no_weight_decay_and_reset_classifier():
    model = toy("hiera_tiny_224")
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert ids["pos_embed"] == 0 and ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.3.mlp.fc2.bias"] == 4
    assert ids["norm.weight"] == ids["head.projection.weight"] == model.num_layers - 1 == 5
    assert model.no_weight_decay() == {"pos_embed"}
    assert toy("hiera_base_16x224").no_weight_decay() == {"pos_embed_spatial", "pos_embed_temporal"}
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 768)


def test_model_config_is_data():
    import json

    cfg = toy("hiera_base_16x224").config
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["stages"] == [1, 1, 1, 1] and cfg["pos_embed"] == "separate"


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="mask_unit_size"):
        hieralab.Hiera(mask_unit_size=(4, 4))
    with pytest.raises(ValueError, match="q_pool"):
        hieralab.Hiera(q_pool=4)


def test_mlp_training_path_recomputes_gelu_with_the_same_gradients():
    from hieralab.layers.mlp import Mlp, _GeluLinear

    h = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GeluLinear.apply, (h, w, b))

    mlp = Mlp(8, 32)
    x = torch.randn(4, 6, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = mlp(x)
    assert sum(s == (4, 6, 32) for s in saved) == 1  # only fc1's output is kept, not GELU's as well
    out.square().sum().backward()
    fast = [t.grad.clone() for t in (x, *mlp.parameters())]
    for t in (x, *mlp.parameters()):
        t.grad = None
    mlp.fc2(mlp.act(mlp.fc1(x))).square().sum().backward()
    for a, b_ in zip(fast, (x, *mlp.parameters())):
        torch.testing.assert_close(a, b_.grad, rtol=1e-6, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 path keeps fp32 parameter gradients
        out = mlp(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and all(p.grad.dtype == torch.float32 for p in mlp.parameters())


@pytest.mark.parametrize("name", ["hiera_tiny_224", "vit_mini_patch4_32", "t2t_vit_mini_32"])
def test_forward_intermediates_keep_the_order_asked_and_refuse_out_of_range(name):
    model = toy(name).eval() if name.startswith("hiera") else hieralab.create_model(name).eval()
    x = torch.randn(1, model.in_chans, 64, 64) if name.startswith("hiera") else torch.randn(1, 3, 32, 32)
    n = len(model.stage_ends) if name.startswith("hiera") else len(model.blocks)
    every = model.forward_intermediates(x, intermediates_only=True)
    picked = model.forward_intermediates(x, indices=[n - 1, 1], intermediates_only=True)
    assert [m.shape for m in picked] == [every[n - 1].shape, every[1].shape]  # in the order asked
    torch.testing.assert_close(picked[0], every[-1])
    assert [m.shape for m in model.forward_intermediates(x, indices=[-1], intermediates_only=True)] == \
        [every[-1].shape]
    for bad in ([n + 3], [-n - 1], 0, n + 1):
        with pytest.raises(ValueError, match="indices="):
            model.forward_intermediates(x, indices=bad)


@pytest.mark.parametrize("name", hieralab.list_models())
def test_the_saved_config_is_the_constructors_own_arguments(name):
    """config holds exactly the constructor's arguments (an MAE: its own plus the encoder arguments it was given),
    and rebuilding from it gives the same model."""
    from hieralab.models import registry

    with torch.device("meta"):
        model = hieralab.create_model(name)
        again = registry.build(name, **model.config)
    params = registry.constructor_parameters(registry.model_class(name))
    own = [n for n in inspect.signature(type(model).__init__).parameters if n not in ("self", "encoder_args")]
    assert set(own) <= set(model.config) <= set(params)
    if not getattr(model, "is_mae", False):
        assert set(model.config) == set(params)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


IMAGE_ENCODERS = [n for n in hieralab.list_models() if not n.startswith("mae_")
                  and not getattr(hieralab.models.registry.model_class(n), "is_dense", False)  # dense models wrap these
                  and len(hieralab.model_config(n).get("input_size", (224, 224))) == 2]


def toy_encoder(name: str, **kw):
    """The same class at one block a stage (Hiera) or one block (ViT, T2T-ViT), and an input it takes."""
    cfg = hieralab.model_config(name)
    if "stages" in cfg:
        model = toy(name, **kw)
        side = 32 if "mini" in name else 64
    else:
        model = hieralab.create_model(name, depth=2, **kw)
        side = 32 if "mini" in name or "micro" in name else 64 if "t2t" in name else cfg.get("patch_size", 16) * 4
    return model, torch.randn(2, model.in_chans, side, side)


@pytest.mark.parametrize("name", IMAGE_ENCODERS)
def test_every_image_encoder_has_timms_feature_interface(name):
    model, x = toy_encoder(name)
    model.eval()
    info = model.feature_info
    assert len(info) == (len(model.stage_ends) if hasattr(model, "stage_ends") else len(model.blocks))
    assert all(set(i) >= {"num_chs", "reduction", "module"} for i in info)
    modules = dict(model.named_modules())
    assert all(i["module"] in modules for i in info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))  # the final output is forward_features'
        features = hieralab.create_model(name, features_only=True, out_indices=[0, -1],
                                         **({"stages": model.config["stages"]} if "stages" in model.config
                                            else {"depth": 2}))
        features.model.load_state_dict(model.state_dict(), strict=False)
        out = features.eval()(x)
    assert features.feature_info.channels() == [info[0]["num_chs"], info[-1]["num_chs"]]
    for m, ch, red in zip(out, features.feature_info.channels(), features.feature_info.reduction()):
        assert m.shape == (2, ch, x.shape[-2] // red, x.shape[-1] // red)  # NCHW at the stated stride
    torch.testing.assert_close(out[-1], maps[-1])


@pytest.mark.parametrize("name", IMAGE_ENCODERS)
def test_a_new_head_trains_every_parameter_and_checkpointing_changes_nothing(name):
    model, x = toy_encoder(name, num_classes=42, drop_path_rate=0.1)
    model.train()
    torch.manual_seed(1)
    plain = model(x)
    plain.logsumexp(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert plain.shape == (2, 42)
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}  # every parameter
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)  # the same drop-path draws
    again = model(x)
    again.logsumexp(-1).mean().backward()
    torch.testing.assert_close(again, plain, atol=1e-5, rtol=0)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
