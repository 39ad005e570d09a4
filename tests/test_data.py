"""Datasets and batching: Fashion-MNIST from the Debian package, image folders, corrupt files, collate."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_images
from hieralab.data import FashionMNIST, ImageFiles, SeededSamples, Unreadable, collate
from hieralab.data.fashion_mnist import ROOT
from hieralab.data.transforms import eval_transform, mae_train_transform


@pytest.mark.skipif(not (ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_reads_the_debian_files():
    ds = FashionMNIST("test")
    assert len(ds) == 10_000 and len(ds.classes) == 10
    image, label = ds[0]
    assert image.size == (28, 28) and image.mode == "L" and label == 9  # the first test image is an ankle boot
    assert sorted(set(ds.targets.tolist())) == list(range(10))


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", root=tmp_path)


def test_flat_folder_and_corrupt_files(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 10), (i * 60, 0, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFiles(tmp_path)
    assert len(ds) == 4 and ds.classes == []
    assert [label for _, label in ds.samples] == [-1] * 4
    bad = ds[3][0]  # bad.png sorts last and is unreadable
    assert isinstance(bad, Unreadable) and bad.path.endswith("bad.png") and "UnidentifiedImageError" in bad.reason
    samples = SeededSamples(ds, eval_transform(16, (0.5,) * 3, (0.5,) * 3), seed=0, num_units=4, mask_ratio=0.5)
    batch = collate([samples[(0, i)] for i in range(4)])
    assert batch["skipped"] == 1 and batch["size"] == 3 and batch["unreadable"] == [f"{bad.path} ({bad.reason})"]
    assert batch["x"].shape == (3, 3, 16, 16) and batch["visible"].sum(1).tolist() == [2, 2, 2]


def test_samples_are_a_function_of_seed_epoch_and_index():
    ds = [(Image.new("L", (28, 28), 128), 0)] * 4
    t = mae_train_transform(32, (0.5,) * 3, (0.5,) * 3)
    a = SeededSamples(ds, t, seed=1, num_units=16, mask_ratio=0.6)
    torch.manual_seed(123)  # the global generator does not matter
    first = a[(2, 3)]
    torch.manual_seed(456)
    again = a[(2, 3)]
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["visible"], again["visible"])
    assert not torch.equal(first["visible"], a[(3, 3)]["visible"]) or not torch.equal(first["x"], a[(3, 3)]["x"])
    assert first["x"].shape == (3, 32, 32) and int(first["visible"].sum()) == 6


def test_16_bit_and_float_images_are_read_at_their_true_range(tmp_path, caplog):
    from hieralab.data.images import load_image

    ramp = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)  # spans the whole 16-bit range
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    grey = np.asarray(load_image(tmp_path / "deep.png"))
    assert grey.dtype == np.uint8 and np.abs(grey.astype(int) - np.round(ramp / 257)).max() <= 1
    assert (grey == 255).mean() < 0.01  # not clipped: PIL's convert("RGB") made 99.5 % of these pixels 255
    floats = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tiff")
    grey = np.asarray(load_image(tmp_path / "float.tiff"))
    assert np.abs(grey.astype(int) - np.round(floats * 255)).max() <= 1 and grey.max() == 255  # not all 0
    Image.fromarray(floats * 1000 - 200, mode="F").save(tmp_path / "wide.tiff")  # outside 0..1: its own range
    with caplog.at_level("WARNING"):
        grey = np.asarray(load_image(tmp_path / "wide.tiff"))
    assert grey.min() == 0 and grey.max() == 255 and "outside 0..1" in caplog.text


def test_the_input_channels_follow_the_data(tmp_path):
    from hieralab.data.pipeline import data_channels
    from hieralab.engine.encoder import decide_channels
    from hieralab.errors import DataError

    colour, grey = tmp_path / "colour", tmp_path / "grey"
    draw_images(colour, n=6)
    grey.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint16)).save(grey / f"{i}.png")  # 16-bit grey counts too
    assert data_channels(ImageFiles(colour)) == 3 and data_channels(ImageFiles(grey)) == 1
    # explicit in_chans, else the weights', else the data's
    assert decide_channels(None, None, 3, "colour") == 3 and decide_channels(None, None, 1, "grey") == 1
    assert decide_channels(3, None, 1, "grey") == 3  # grey into an RGB model: repeated over the channels
    assert decide_channels(None, 1, 3, "colour") == 1  # a grey encoder's weights: colour converted to grey
    assert decide_channels(3, 1, 3, "colour") == 3  # asked for: the grey patch embedding is widened at load
    with pytest.raises(DataError, match="in_chans=5: images give 1"):
        decide_channels(5, None, 3, "colour")