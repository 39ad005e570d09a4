"""Datasets and batching: Fashion-MNIST from the Debian package, image folders, corrupt files, collate."""

import pytest
import torch
from PIL import Image

from hieralab.data import FashionMNIST, ImageFiles, SeededSamples, collate
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
    assert ds[3][0] is None  # bad.png sorts last and is unreadable
    samples = SeededSamples(ds, eval_transform(16, (0.5,) * 3, (0.5,) * 3), seed=0, num_units=4, mask_ratio=0.5)
    batch = collate([samples[(0, i)] for i in range(4)])
    assert batch["skipped"] == 1 and batch["size"] == 3
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
