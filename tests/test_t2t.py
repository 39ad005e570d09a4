"""T2T-ViT: parity with fixtures made by the official code (tests/fixtures/t2t/make_fixtures.py), the named sizes,
and the same encoder API as the other families."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import hieralab
from hieralab.layers.t2t import performer_attention
from hieralab.models.checkpoint import load_checkpoint
from hieralab.models.t2t_vit import T2TViT, soft_split_grid

FIXTURES = Path(__file__).parent / "fixtures" / "t2t"
NAMED = hieralab.list_models("t2t_vit_[0-9]*") + hieralab.list_models("t2t_vit_t_[0-9]*")


def read_fixture(kind: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    with safe_open(str(FIXTURES / f"{kind}.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    return config, state, tensors


@pytest.mark.parametrize("kind", ["performer", "transformer"])
def test_matches_the_official_code(kind):
    config, official_state, expected = read_fixture(kind)
    model = T2TViT(tokens_type=kind, **config).eval()
    assert load_checkpoint(model, official_state) == []  # every tensor of ours came from the official checkpoint
    x = expected["input"]
    with torch.no_grad():
        tokens = model.tokens_to_token(x)  # [B, H', W', C]
        features = model.forward_features(x)  # [B, 1 + N, C]
        logits = model.forward_head(features)
    torch.testing.assert_close(tokens.flatten(1, 2), expected["tokens"], rtol=0, atol=1e-5)
    torch.testing.assert_close(features[:, 0], expected["features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    if kind == "performer":  # the random features are the checkpoint's, not a fresh draw
        torch.testing.assert_close(model.tokens_to_token.attention1.w, official_state["tokens_to_token.attention1.w"])


def test_named_sizes_have_the_official_parameter_counts():
    counts = json.loads((FIXTURES / "param_counts.json").read_text())
    assert sorted(counts) == sorted(NAMED)
    for name in NAMED:
        with torch.device("meta"):
            model = hieralab.create_model(name, num_classes=1000)
        assert sum(p.numel() for p in model.parameters()) == counts[name], name


def toy(name: str, **kw):
    return hieralab.create_model(name, depth=1, img_size=48, token_dim=16, **kw)


@pytest.mark.parametrize("name", hieralab.list_models("t2t_*"))
def test_every_t2t_model_runs_and_trains(name):
    model = toy(name, drop_path_rate=0.1).train()
    logits = model(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()] == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed"} | ({"tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
                                      if model.config["tokens_type"] == "performer" else set())


def test_any_input_size_and_resampled_checkpoint():
    config, official_state, expected = read_fixture("performer")
    assert soft_split_grid((224, 224)) == (14, 14) and soft_split_grid((28, 28)) == (2, 2)
    assert soft_split_grid((2, 2))[0] < 1
    model = T2TViT(tokens_type="performer", **{**config, "img_size": 96}).eval()  # a 6 x 6 grid; checkpoint 4 x 4
    load_checkpoint(model, official_state)
    assert model.pos_embed.shape == (1, 37, config["embed_dim"])
    final, maps = model.forward_intermediates(torch.randn(1, 3, 72, 40))  # non-square, not multiples of 16
    assert maps[-1].shape == (1, config["embed_dim"], 5, 3) and final.shape == (1, 16, config["embed_dim"])
    with pytest.raises(ValueError, match="too small for the T2T soft splits"):
        model(torch.randn(1, 3, 2, 64))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model(torch.randn(1, 1, 64, 64))


def test_encoder_api():
    model = toy("t2t_vit_7")
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert ids["tokens_to_token.attention1.kqv.weight"] == ids["cls_token"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["head.weight"] == model.num_layers - 1 == 2
    x = torch.randn(2, 3, 48, 48)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)


def test_save_and_reload(tmp_path):
    model = toy("t2t_vit_t_14").eval()
    model.save_pretrained(tmp_path)
    again = hieralab.models.checkpoint.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_performer_attention_approximates_softmax_attention():
    torch.manual_seed(0)
    B, N, d, m = 2, 20, 8, 8192
    q, k, v = (torch.randn(B, N, d) * 0.3 for _ in range(3))
    w = torch.randn(m, d)  # i.i.d. Gaussian features: unbiased; the layer uses orthogonal ones
    exact = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    approx = performer_attention(q, k, v, w)
    assert (approx - exact).abs().max() < 0.05 * v.abs().max()
    assert math.isclose(performer_attention(q, k, torch.ones_like(v), w).mean().item(), 1.0, rel_tol=1e-5)


def test_official_training_checkpoint_file_loads_its_ema_weights(tmp_path):
    """The official T2T-ViT repository saves timm training checkpoints: ``.pth.tar`` with the weights under
    ``state_dict`` / ``state_dict_ema`` (DDP ``module.`` prefixes) and its argparse ``args``."""
    import argparse

    config, official_state, expected = read_fixture("transformer")
    raw = {f"module.{k}": v for k, v in official_state.items()}
    path = tmp_path / "81.7_T2T_ViTt_14.pth.tar"
    torch.save({"epoch": 3, "state_dict": {k: torch.zeros_like(v) for k, v in raw.items()}, "state_dict_ema": raw,
                "args": argparse.Namespace(model="t2t_vit_t_14", lr=1e-3)}, path)
    model = T2TViT(tokens_type="transformer", **config).eval()
    assert load_checkpoint(model, path) == []
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input"]), expected["logits"], rtol=0, atol=1e-5)
    wrong = T2TViT(tokens_type="transformer", **{**config, "embed_dim": 96})
    with pytest.raises(ValueError, match="checkpoint does not fit"):
        load_checkpoint(wrong, path)
