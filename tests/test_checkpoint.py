"""Checkpoint layouts (official, timm, HF transformers, ours) and their failure modes."""

import pickle

import pytest
import torch

import hieralab
from conftest import randomize_

TOY = dict(stages=(1, 1, 1, 1))


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = randomize_(hieralab.create_model("hiera_base_16x224", **TOY)).eval()
    model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    again = hieralab.from_pretrained(tmp_path / "run").eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_timm_layout_matches_timm_outputs():
    timm = pytest.importorskip("timm")
    for name in ("hiera_tiny_224", "hiera_small_abswin_256"):
        ref = randomize_(timm.create_model(name, pretrained=False, stages=(1, 1, 1, 1))).eval()
        ours = hieralab.create_model(name, **TOY).eval()
        assert hieralab.load_checkpoint(ours, ref.state_dict()) == []
        size = 256 if "256" in name else 224
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_transformers_layout_matches_hf_outputs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.HieraConfig(embed_dim=96, num_heads=[1, 2, 4, 8], depths=[1, 2, 1, 1], num_labels=5)
    ref = randomize_(transformers.HieraForImageClassification(cfg)).eval()
    ours = hieralab.create_model("hiera_tiny_224", stages=(1, 2, 1, 1), num_classes=5).eval()
    assert hieralab.load_checkpoint(ours, ref.state_dict()) == []
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x).logits, atol=1e-5, rtol=0)


def test_checkpoint_of_another_config_names_the_right_model(tmp_path):
    small = hieralab.create_model("hiera_base_plus_224", stages=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="does not fit this model.*embed"):
        hieralab.load_checkpoint(hieralab.create_model("hiera_base_224", **TOY), small.state_dict())
    full = {k: v for k, v in hieralab.create_model("hiera_tiny_224").state_dict().items()}
    with pytest.raises(ValueError, match="create hiera_tiny_224 instead"):
        hieralab.load_checkpoint(hieralab.create_model("hiera_base_plus_224"), full)


def test_other_class_count_keeps_the_new_head_and_other_size_resamples_pos_embed():
    src = randomize_(hieralab.create_model("hiera_tiny_224", **TOY))
    dst = hieralab.create_model("hiera_tiny_224", **TOY, num_classes=10, input_size=(256, 256))
    missing = hieralab.load_checkpoint(dst, src.state_dict())
    assert missing == ["head.projection.weight", "head.projection.bias"]
    assert dst.pos_embed.shape == (1, 64 * 64, 96)
    torch.testing.assert_close(dst._pos_embed((64, 64)), src._pos_embed((64, 64)))


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_state": Evil()}, f)
    with pytest.raises(ValueError, match="holds pickled Python objects.*not unpickled"):
        hieralab.load_checkpoint(hieralab.create_model("hiera_tiny_224", **TOY), path)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        hieralab.create_model("hiera_tiny_224", **TOY, checkpoint=str(tmp_path / "nope.pth"))


def test_a_folder_saved_with_other_arguments_is_an_error_naming_them(tmp_path):
    model = randomize_(hieralab.create_model("hiera_tiny_224", **TOY, q_pool=1)).eval()  # same shapes as q_pool 3
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"was saved with q_pool=1 \(this model: q_pool=3\).*from_pretrained"):
        hieralab.create_model("hiera_tiny_224", **TOY, checkpoint=str(tmp_path / "m"))
    same = hieralab.create_model("hiera_tiny_224", **TOY, q_pool=1, checkpoint=str(tmp_path / "m")).eval()
    again = hieralab.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same(x), model(x)) and torch.equal(again(x), model(x))
    # what may differ: the head's class count (a new head) and the input size (the table is resampled)
    hieralab.create_model("hiera_tiny_224", **TOY, q_pool=1, num_classes=7, input_size=(256, 256),
                          checkpoint=str(tmp_path / "m"))


def test_load_checkpoint_takes_the_official_training_dict():
    src = randomize_(hieralab.create_model("hiera_tiny_224", **TOY))
    dst = hieralab.create_model("hiera_tiny_224", **TOY)
    assert hieralab.load_checkpoint(dst, {"model_state": src.state_dict(), "epoch": 3}) == []
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="holds no state dict of tensors"):
        hieralab.load_checkpoint(dst, {"epoch": 3})


def test_from_pretrained_honours_the_class_it_is_called_on(tmp_path):
    mae = hieralab.create_model("mae_hiera_tiny_224", **TOY, decoder_depth=1)
    mae.save_pretrained(tmp_path / "mae")
    MAE = hieralab.MaskedAutoencoderHiera
    assert isinstance(MAE.from_pretrained(tmp_path / "mae"), MAE)
    assert isinstance(hieralab.from_pretrained(tmp_path / "mae"), hieralab.MaskedAutoencoderHiera)
    with pytest.raises(ValueError, match="holds a MaskedAutoencoderHiera .* not a Hiera"):
        hieralab.Hiera.from_pretrained(tmp_path / "mae")
    with pytest.raises(FileNotFoundError, match="holds the save_pretrained folders mae/"):
        hieralab.from_pretrained(tmp_path)
