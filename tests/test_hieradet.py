"""HieraDet (SAM 2's Hiera): parity with timm's ``hieradet_sam2`` (fp32, <= 1e-5 relative on every stage), the
encoder interface, SAM 2 / timm / transformers / Hiera checkpoints, and the conversion from Hiera."""

import logging
import math

import pytest
import torch

import hieralab
from conftest import randomize_
from hieralab.errors import CheckpointError
from hieralab.models.hieradet import HieraDet, from_windows, hiera_to_hieradet, init_from_hiera, to_windows
from hieralab.models.layout import pool_level

timm = pytest.importorskip("timm")

TOL = 1e-5  # max |ours - timm| / max |timm|, per stage
NAMES = ["sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large"]
# B+ and L in the default suite: their widths and windows at a depth with a global block in stage 3
REDUCED = dict(stages=(1, 1, 3, 1), global_att_blocks=(3,))
TOY = dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,))  # interface tests, 64 px


def toy(name: str = "sam2_hiera_tiny", **kw) -> HieraDet:
    return hieralab.create_model(name, **{**TOY, **kw})


def relative_errors(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> list[float]:
    assert [a.shape for a in ours] == [b.shape for b in ref]
    return [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, ref, strict=True)]


def pair(name: str, seed: int = 0, **kw):
    """timm's model with random weights of training scale, and ours loaded from its state dict."""
    ref = randomize_(timm.create_model(name, pretrained=False, **kw), seed).eval()
    ours = hieralab.create_model(name, **kw).eval()
    assert hieralab.load_checkpoint(ours, ref.state_dict()) == []
    return ref, ours


def check_parity(name: str, sizes, **kw):
    ref, ours = pair(name, **kw)
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = ref.forward_intermediates(x, intermediates_only=True)
            got = ours.forward_intermediates(x, intermediates_only=True)
        errors = relative_errors(got, expected)
        assert max(errors) <= TOL, (size, errors)


SIZES = [(224, 224), (512, 512), (256, 384)]  # 224 (windows cover stages 3-4 exactly), 512, non-square


@pytest.mark.parametrize("name", ["sam2_hiera_tiny", "sam2_hiera_small"])
def test_full_depth_matches_timm_at_every_size(name):
    check_parity(name, SIZES)


@pytest.mark.parametrize("name", ["sam2_hiera_base_plus", "sam2_hiera_large"])
def test_base_plus_and_large_widths_match_timm_at_reduced_depth(name):
    check_parity(name, [(224, 224), (256, 384)], **REDUCED)  # 512 and 1024: full depth, under -m slow


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_depth_matches_timm_at_1024(name):
    check_parity(name, [(1024, 1024)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2_hiera_base_plus", "sam2_hiera_large"])
def test_base_plus_and_large_full_depth_match_timm(name):
    check_parity(name, SIZES)


def test_logits_with_a_head_match_timm():
    ref, ours = pair("sam2_hiera_tiny", num_classes=10, **REDUCED)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5, rtol=0)
    assert expected.abs().max() > 0.1 and got.shape == (2, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_configs_are_timms():
    for name in NAMES:
        with torch.device("meta"):
            ref, ours = timm.create_model(name), hieralab.create_model(name)
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k.replace("head.norm.", "norm."): v.shape for k, v in ref.state_dict().items()}
        assert [b.window for b in ours.blocks] == [b.window_size[0] for b in ref.blocks]
        assert [b.q_stride for b in ours.blocks] == [b.q_stride for b in ref.blocks]
        assert ours.feature_info == ref.feature_info


# ---------------------------------------------------------------- the window layout
@pytest.mark.parametrize("H, W, window", [(16, 16, 8), (4, 6, 14), (28, 20, 4), (14, 14, 14)])
def test_windows_round_trip_and_pool_like_max_pool(H, W, window):
    x = torch.randn(2, H, W, 3)
    tokens, num = to_windows(x, (window, window))
    assert tokens.shape == (2, math.prod(num), window * window, 3)
    assert torch.equal(from_windows(tokens, num, (window, window), (H, W)), x)
    pooled, num = to_windows(x, (window, window), q_stride=(2, 2))
    pooled = from_windows(pool_level(pooled, 4), num, (window // 2, window // 2), (H // 2, W // 2))
    expected = torch.nn.functional.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(pooled, expected, atol=0, rtol=0)


# ---------------------------------------------------------------- the encoder interface
def test_intermediates_formats_indices_and_features():
    model = toy().eval()
    x = torch.randn(1, 3, 64, 96)  # non-square
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, indices=[-1, 1], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    assert [tuple(m.shape) for m in nhwc] == [(1, 2, 3, 128), (1, 8, 12, 32)]
    torch.testing.assert_close(nhwc[0], maps[3].permute(0, 2, 3, 1))
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [(16, 4), (32, 8), (64, 16), (128, 32)]
    with pytest.raises(ValueError, match="indices="):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCWH")


def test_features_only_gives_timms_feature_interface():
    features = hieralab.create_model("sam2_hiera_tiny", features_only=True, out_indices=[1, 2, 3], **TOY).eval()
    with torch.no_grad():
        out = features(torch.randn(2, 3, 64, 64))
    assert features.feature_info.channels() == [32, 64, 128]
    assert features.feature_info.reduction() == [8, 16, 32]
    assert [tuple(m.shape) for m in out] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]


def test_grad_checkpointing_changes_nothing():
    model = toy(num_classes=5, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    plain = model(x)
    plain.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    again = model(x)
    again.square().sum().backward()
    torch.testing.assert_close(again, plain, atol=1e-6, rtol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_layer_decay_weight_decay_and_classifier_accessors():
    model = toy(num_classes=7)
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert ids["pos_embed"] == ids["pos_embed_window"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.3.mlp.fc2.bias"] == 4
    assert ids["norm.weight"] == ids["head.projection.weight"] == model.num_layers - 1 == 5
    assert model.no_weight_decay() == {"pos_embed", "pos_embed_window"}
    groups = model.group_matcher()
    import re
    assert re.match(groups["stem"], "pos_embed_window") and re.match(groups["blocks"], "blocks.2.norm1.weight")
    assert model.classifier_name() == "head.projection" and model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3) and model.config["num_classes"] == 3
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 128)
    assert model.size_multiple == 32 and model.in_chans == 3


@pytest.mark.parametrize("shape, message", [
    ((1, 1, 64, 64), "expected 3 input channels"),
    ((1, 3, 64, 70), "W=70 -> a multiple of 32"),
    ((3, 64, 64), "takes \\[B, C, H, W\\] images"),
])
def test_bad_input_is_one_line(shape, message):
    with pytest.raises(ValueError, match=message) as e:
        toy()(torch.randn(*shape))
    assert "\n" not in str(e.value)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = toy(num_classes=4).eval()
    model.save_pretrained(tmp_path / "m")
    again = HieraDet.from_pretrained(tmp_path / "m").eval()
    also = hieralab.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and torch.equal(also(x), model(x))
    assert again.config == model.config and again.config["global_att_blocks"] == [2]


def test_torch_export_traces():
    model = toy().eval()
    x = torch.randn(1, 3, 64, 96)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = toy(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 96)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True, dynamic_shapes=({0: batch},),
                      input_names=["pixels"], verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for b in (1, 3):
        y = torch.randn(b, 3, 64, 96)
        out = session.run(None, {"pixels": y.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(y), atol=1e-4, rtol=0)


def test_detector_and_segmenter_take_hieradet():
    from hieralab.models.dense import Detector, Segmenter

    args = {k: list(v) if isinstance(v, tuple) else v for k, v in TOY.items()}
    seg = Segmenter(encoder="sam2_hiera_tiny", encoder_args=args, num_classes=5, neck_channels=16,
                    head_width=16).eval()
    det = Detector(encoder="sam2_hiera_tiny", encoder_args=args, num_classes=3, min_size=64, max_size=96,
                   neck_channels=16, box_head_dim=16, mask_head_layers=(16,), roi_batch=16).eval()
    assert det.backbone.size_multiple == 32 and det.backbone.strides == [4, 8, 16, 32, 64]
    with torch.no_grad():
        assert seg(torch.randn(2, 3, 64, 96)).shape == (2, 5, 64, 96)
        out = det([torch.rand(3, 64, 80), torch.rand(3, 70, 90)])
    assert len(out) == 2 and set(out[0]) >= {"boxes", "labels", "scores"}


# ---------------------------------------------------------------- checkpoints
def sam2_file(trunk: dict[str, torch.Tensor]) -> dict:
    """A SAM 2 / SAM 2.1 file as released: the trunk under image_encoder.trunk (its MLP as mlp.layers.0/1) among
    the rest of SAM 2, inside {"model": ...}."""
    sd = {f"image_encoder.trunk.{k.replace('mlp.fc1', 'mlp.layers.0').replace('mlp.fc2', 'mlp.layers.1')}": v
          for k, v in trunk.items() if not k.startswith("head.")}
    sd.update({"image_encoder.neck.convs.0.conv.weight": torch.zeros(256, 768, 1, 1),
               "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256), "maskmem_tpos_enc": torch.zeros(7, 1, 1, 64),
               "memory_attention.norm.weight": torch.zeros(256)})
    return {"model": sd}


def test_a_sam2_file_loads_and_the_rest_of_sam2_is_counted(tmp_path, caplog):
    ref = randomize_(timm.create_model("sam2_hiera_tiny", pretrained=False, **REDUCED)).eval()
    torch.save(sam2_file(ref.state_dict()), tmp_path / "sam2.1_hiera_tiny.pt")
    with caplog.at_level(logging.INFO, logger="hieralab.models.hieradet"):
        ours = hieralab.create_model("sam2_hiera_tiny", checkpoint=tmp_path / "sam2.1_hiera_tiny.pt", **REDUCED)
    assert "ignoring the other 4 (the rest of SAM 2)" in caplog.text
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        errors = relative_errors(ours.eval().forward_intermediates(x, intermediates_only=True),
                                 ref.forward_intermediates(x, intermediates_only=True))
    assert max(errors) <= TOL
    torch.testing.assert_close(ours.norm.weight, torch.ones(768))  # not in a SAM 2 file: left as initialised


def test_a_file_of_another_size_is_one_line_naming_both(tmp_path):
    with torch.device("meta"):
        large = hieralab.create_model("sam2_hiera_large")
    # L's keys; only the patch embedding's shape is read before the refusal
    sd = {k: torch.zeros(v.shape if k == "patch_embed.proj.weight" else 1) for k, v in large.state_dict().items()}
    torch.save(sam2_file(sd), tmp_path / "sam2_hiera_large.pt")
    with pytest.raises(CheckpointError) as e:
        hieralab.create_model("sam2_hiera_tiny", checkpoint=tmp_path / "sam2_hiera_large.pt")
    message = str(e.value)
    assert "\n" not in message
    assert "width 144 with 48 blocks" in message and "sam2_hiera_tiny has width 96 with 12 blocks" in message
    assert "create sam2_hiera_large" in message
    small = {k: v for k, v in toy("sam2_hiera_small", stages=(1, 2, 11, 2)).state_dict().items()}
    with pytest.raises(CheckpointError, match="width 16 with 16 blocks, .* width 16 with 4 blocks"):
        hieralab.load_checkpoint(toy(), small)


def test_transformers_layout_loads_and_matches():
    transformers = pytest.importorskip("transformers")
    config = transformers.Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads=1, blocks_per_stage=[1, 2, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 2, 4, 8], global_attention_blocks=[4],
        window_positional_embedding_background_size=[7, 7])
    ref = randomize_(transformers.Sam2HieraDetModel(config)).eval()
    ours = hieralab.create_model("sam2_hiera_tiny", embed_dim=16, stages=(1, 2, 2, 1), global_att_blocks=(4,)).eval()
    sd = {f"vision_encoder.backbone.{k}": v for k, v in ref.state_dict().items()}
    sd["vision_encoder.neck.conv.weight"] = torch.zeros(1)  # the rest of a Sam2Model: counted, ignored
    hieralab.load_checkpoint(ours, sd)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        expected = [h for h in ref(x).intermediate_hidden_states]  # NHWC, one per stage
        got = ours.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    assert max(relative_errors(got, expected)) <= TOL


# ---------------------------------------------------------------- from Hiera
def hiera_and_converted(hiera_name: str, name: str, size: int, **kw):
    hiera = randomize_(hieralab.create_model(hiera_name, **kw)).eval()
    det = hieralab.create_model(name, num_classes=1000, global_pos_size=(56, 56), **kw).eval()
    assert hieralab.load_checkpoint(det, hiera.state_dict()) == []  # detected by its keys
    return hiera, det, torch.randn(1, 3, size, size)


@pytest.mark.parametrize("hiera_name, name, size, kw", [
    ("hiera_tiny_224", "sam2_hiera_tiny", 224, {}),  # full depth: windows 14 and 7 cover stages 3 and 4
    ("hiera_large_224", "sam2_hiera_large", 256, dict(stages=(1, 1, 2, 1))),  # windows 16 and 8
])
def test_a_hiera_converted_computes_what_hiera_computes_stage_by_stage(hiera_name, name, size, kw):
    hiera, det, x = hiera_and_converted(hiera_name, name, size, **kw)
    with torch.no_grad():
        ref_final, ref_maps = hiera.forward_intermediates(x)
        final, maps = det.forward_intermediates(x)
        logits, ref_logits = det.forward_head(final), hiera.forward_head(ref_final)
    assert max(relative_errors(maps, ref_maps)) <= TOL
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_the_converted_position_tables():
    hiera = randomize_(hieralab.create_model("hiera_tiny_224", stages=(1, 1, 1, 1)))
    table = hiera.pos_embed.detach().view(1, 56, 56, 96)
    exact = hieralab.create_model("sam2_hiera_tiny", stages=(1, 1, 1, 1), global_pos_size=(56, 56))
    init_from_hiera(exact, hiera.state_dict())
    assert torch.equal(exact._pos_embed((56, 56)), table) and not exact.pos_embed_window.any()
    det = hieralab.create_model("sam2_hiera_tiny", stages=(1, 1, 1, 1))  # SAM 2's 7x7 background table
    missing = init_from_hiera(det, {"model_state": hiera.state_dict()})
    assert missing == []  # Hiera's 1000-class head dropped: this one has no classifier
    left = (table - det._pos_embed((56, 56)).detach()).view(1, 7, 8, 7, 8, 96)
    torch.testing.assert_close(left.mean(dim=(1, 3)), torch.zeros(1, 8, 8, 96), atol=1e-6, rtol=0)  # the window fit
    assert torch.equal(det.blocks[2].attn.qkv.weight, hiera.blocks[2].attn.qkv.weight)
    sd = hiera_to_hieradet(hiera.state_dict(), det)
    assert set(sd) == set(det.state_dict()) | {"head.projection.weight", "head.projection.bias"}


def test_an_mae_hiera_initialises_a_hieradet_and_a_video_hiera_is_refused(tmp_path):
    mae = hieralab.create_model("mae_hiera_tiny_224", stages=(1, 1, 1, 1), decoder_depth=1)
    det = hieralab.create_model("sam2_hiera_tiny", stages=(1, 1, 1, 1))
    missing = hieralab.load_checkpoint(det, mae.state_dict())
    assert sorted(missing) == ["norm.bias", "norm.weight"]
    assert torch.equal(det.blocks[1].proj.weight, mae.encoder.blocks[1].proj.weight)
    video = hieralab.create_model("hiera_base_16x224", stages=(1, 1, 1, 1), embed_dim=96)
    with pytest.raises(CheckpointError, match="video Hiera"):
        hieralab.load_checkpoint(det, video.state_dict())
    with pytest.raises(CheckpointError, match="not a Hiera"):
        init_from_hiera(det, det.state_dict())
