"""WebDataset tar shards: ``hieralab shards`` writes them (images and clips, with labels and an index), they read
back to the same bytes, stream in a seeded order through a shuffle buffer over (process, worker) readers, resume
exactly, and train end to end (pretrain and finetune, images and video)."""

import json
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import VIDEO_MAE_TINY, draw_images, error_lines, losses
from conftest import pretrain_args as args
from conftest import run_pretrain as run
from hieralab.cli import main
from hieralab.data.images import load_image
from hieralab.data.pipeline import collate
from hieralab.data.shards import ShardSet, ShardStream, is_shard_source, shard_source


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("images"))  # 40 images, classes boxes / circles


@pytest.fixture(scope="module")
def shards(images, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shards") / "s"
    return shard_source(str(images), out, shard_size=5)["pattern"]  # 8 shards of 5


def test_shards_hold_the_files_bytes_labels_and_an_index(images, shards):
    index = json.loads((Path(shards).parent / "shards.json").read_text())
    assert index["samples"] == 40 and len(index["shards"]) == 8 and index["classes"] == ["boxes", "circles"]
    assert is_shard_source(shards) and not is_shard_source(str(images))
    ds = ShardSet(shards)
    assert len(ds) == 40 and ds.kind == "images" and ds.classes == ["boxes", "circles"]
    from hieralab.data.images import ImageFiles
    files = ImageFiles(images)
    assert ds.labels() == [label for _, label in files.samples]
    for i in (0, 17, 39):  # random access: the same pixels as the file
        image, label = ds[i]
        assert label == files.samples[i][1]
        assert torch.equal(torch.tensor(list(image.get_flattened_data())),
                           torch.tensor(list(load_image(files.samples[i][0]).get_flattened_data())))
    with tarfile.open(Path(shards).parent / "shard-000000.tar") as tar:
        assert sorted(tar.getnames())[:2] == ["000000000.cls", "000000000.png"]


def test_shards_without_an_index_are_counted_and_writing_never_overwrites(shards, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(Path(shards).parent, copy)
    (copy / "shards.json").unlink()
    ds = ShardSet(str(copy / "shard-{000000..000007}.tar"))
    assert len(ds) == 40 and ds.classes == ["0", "1"]  # names unknown without the index: the indices
    assert main(["shards", "fashion-mnist", str(copy)]) == 1  # not empty
    assert "not empty" in error_lines(capsys.readouterr().err)[0]
    (copy / ".shard-000008.tar.tmp").write_bytes(b"")  # a write killed in the middle of a shard
    assert main(["shards", "fashion-mnist", str(copy)]) == 1
    assert "a write that did not finish" in error_lines(capsys.readouterr().err)[0]
    (copy / ".shard-000008.tar.tmp").unlink()
    assert main(["pretrain", f"data.source={copy}/shard-{{000000..000009}}.tar", f"out_dir={tmp_path / 'r'}"]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "2 of 10 shards do not exist" in errors[0]


def stream_indices(ds, *, world=1, rank=0, workers=2, start=0, stop=10, epoch=0, batch=4):
    """The global sample indices of each batch the stream makes (``SeededSamples.sample`` replaced by one that
    returns the index it is given)."""
    def keep(item, epoch, i):
        return {"x": torch.tensor([i])}
    stream = ShardStream(ds, keep, collate, seed=0, epoch=epoch, rank=rank, world=world, workers=workers,
                         batch_size=batch, start=start, stop=stop, buffer=8)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [b["x"].view(-1).tolist() for b in loader]


def test_an_epoch_streams_every_sample_once_in_a_seeded_order_and_resumes_exactly(shards):
    ds = ShardSet(shards)
    batches = stream_indices(ds)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(40))  # 8 shards over 2 workers: every sample once
    assert flat != sorted(flat)  # shuffled (shard order and buffer)
    assert stream_indices(ds) == batches  # a function of (seed, epoch)
    assert stream_indices(ds, epoch=1) != batches
    assert stream_indices(ds, start=3) == batches[3:]  # a resume at batch 3: the same batches from there
    two = [stream_indices(ds, world=2, rank=r, workers=2, stop=5) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 5  # every process steps the same number of times
    assert not set(sum(two[0], [])) & set(sum(two[1], []))  # and reads its own shards


def test_too_few_shards_for_the_readers_is_one_line(shards, tmp_path, images, capsys):
    one = shard_source(str(images), tmp_path / "one", shard_size=100)["pattern"]
    assert main(["pretrain", *args(tmp_path / "r", images, f"data.source={one}", "data.num_workers=2")]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "1 shards for 1 processes x 2 loader workers" in errors[0]


def test_pretraining_on_shards_resumes_exactly(shards, tmp_path):
    common = ("data.num_workers=2", f"data.source={shards}", "data.shuffle_buffer=8", "epochs=2")
    run(args(tmp_path / "full", Path("."), *common, "max_steps=7"))
    run(args(tmp_path / "part", Path("."), *common, "max_steps=3", "ckpt_every=3"))
    run(args(tmp_path / "part", Path("."), *common, "max_steps=7", "ckpt_every=3"), resume=True)
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert [s for s, _ in part] == list(range(1, 8))
    assert part == full  # bit for bit, across the epoch boundary (5 steps an epoch)


def test_two_processes_stream_their_own_shards_in_step(shards, tmp_path):
    """Under torchrun each process reads its own shards and makes the same number of batches (no rank waits on
    another at the all-reduce), 2 loader workers each."""
    import os
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hieralab.cli",
         "pretrain", *args(tmp_path / "ddp", Path("."), f"data.source={shards}", "data.num_workers=2",
                           "optim.batch_size=4", "epochs=1")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == 5  # 40 samples / (4 x 2 processes)


def test_finetuning_on_shards_and_validating_on_shards(shards, tmp_path):
    out = tmp_path / "ft"
    tiny = ["model=hiera_mini_32", "model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]"]
    assert main(["finetune", *tiny, f"data.source={shards}", f"val_source={shards}", "data.num_workers=0",
                 "optim.batch_size=8", "max_steps=3", "eval_every=3", f"out_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 <= summary["last_top1"] <= 100
    meta = json.loads((out / "last" / "classifier.json").read_text())
    assert meta["classes"] == ["boxes", "circles"]


def test_video_shards_pretrain_end_to_end(tmp_path):
    from test_video import write_clip
    root = tmp_path / "clips"
    for i in range(4):
        write_clip(root / ("left" if i % 2 else "right") / f"{i}.mp4", frames=20 + i, phase=3 * i)
    index = shard_source(str(root), tmp_path / "vs", shard_size=1)
    assert index["kind"] == "clips" and index["samples"] == 4
    tiny = VIDEO_MAE_TINY
    out = tmp_path / "run"
    assert main(["pretrain", *tiny, f"data.source={index['pattern']}", "data.num_workers=0", "data.frame_stride=2",
                 "optim.batch_size=2", "data.repeat_aug=2", "epochs=1", "recon_images=1", f"out_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_images"] == 0
    assert (out / "reconstructions" / "recon_000.gif").exists()
