"""Video data: PyAV decoding, Kinetics clip sampling, clip collections, corrupt clips, and a tiny video MAE run from
the CLI with its frame-strip and GIF reconstructions. Clips the tests encode themselves, and the official examples
in ../shared/media when present."""

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import MEDIA, VIDEO_MAE_TINY, write_clip
from hieralab.cli import main
from hieralab.data.images import Unreadable
from hieralab.engine.artifacts import eval_folder_name
from hieralab.data.pipeline import SeededSamples, collate
from hieralab.data.video import (VideoClips, clip_indices, decode_frames, read_clip, read_clips, uniform_starts,
                                 video_eval_views, video_frame_count, video_train_transform)

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for i in range(6):
        write_clip(root / ("left" if i % 2 else "right") / f"{i}.mp4", frames=20 + i, phase=3 * i)
    (root / "left" / "broken.mp4").write_bytes(b"not a video at all")
    return root


def test_clip_sampling_is_kinetics_and_loops_short_videos():
    assert clip_indices(100, 4, 3, start=10) == [10, 13, 16, 19]
    assert clip_indices(10, 4, 4, start=0) == [0, 4, 8, 2]  # shorter than the span: the video loops
    g = torch.Generator().manual_seed(0)
    starts = {clip_indices(100, 16, 4, generator=g)[0] for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 100 - 64 and len(starts) > 20
    assert uniform_starts(150, 16, 4, 5) == [0, 22, 43, 64, 86] and uniform_starts(30, 16, 4, 3) == [0, 0, 0]


def test_decode_returns_the_requested_frames(tmp_path):
    path = write_clip(tmp_path / "c.mp4", frames=24)
    assert video_frame_count(path) == 24
    frames = decode_frames(path, [9, 2, 2, 20])
    assert frames.shape == (4, 40, 48, 3) and frames.dtype == torch.uint8
    brightness = frames.float().flatten(1).median(1).values  # the background, not the moving bar
    expected = torch.tensor([9, 2, 2, 20]) * 8.0 + 20
    assert (brightness - expected).abs().max() < 6  # lossy codec, each frame within a few levels of its own index
    assert decode_frames(path, [23, 40]).shape[0] == 2  # past the end: the last frame


def test_collections_from_folders_and_lists(tmp_path, clips):
    ds = VideoClips(clips)
    assert ds.classes == ["left", "right"] and len(ds) == 7
    rows = [(str(p.relative_to(clips)), ds.classes[label]) for p, label in ds.items]
    (clips / "list.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    (clips / "list.json").write_text(json.dumps([{"path": p, "label": label} for p, label in rows]))
    for name in ("list.csv", "list.json"):
        listed = VideoClips(clips / name)
        assert listed.classes == ["left", "right"] and [lbl for _, lbl in listed.items] == [lbl for _, lbl in ds.items]
    with pytest.raises(ValueError, match="no clips"):
        VideoClips(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoClips(tmp_path / "missing")


def test_corrupt_clips_are_skipped_and_counted(clips):
    ds = VideoClips(clips)
    broken = next(i for i, (p, _) in enumerate(ds.items) if p.name == "broken.mp4")
    bad = read_clip(ds.items[broken][0], 8, 2)
    assert isinstance(bad, Unreadable) and bad.path.endswith("broken.mp4")
    assert "InvalidData" in bad.reason or "Invalid data found" in bad.reason  # PyAV / torchcodec say it so
    samples = SeededSamples(ds, video_train_transform(8, 2, 32, (0.5,) * 3, (0.25,) * 3), seed=0)
    batch = collate([samples[(0, i)] for i in range(len(ds))])
    assert batch["skipped"] == 1 and batch["x"].shape == (6, 3, 8, 32, 32)
    assert batch["unreadable"] == [f"{bad.path} ({bad.reason})"]
    again = collate([samples[(0, i)] for i in range(len(ds))])
    assert torch.equal(batch["x"], again["x"])  # the clip start and crop are drawn from (seed, epoch, index)


def test_repeated_augmentation_cuts_several_clips_from_one_decoding(clips, monkeypatch):
    import hieralab.data.video as video

    decoded = []  # the videos opened for decoding (torchcodec), or decoded (PyAV)
    real_open, real_pyav = video._torchcodec, video._pyav_frames
    monkeypatch.setattr(video, "_torchcodec", lambda path: (real_open(path), decoded.append(path))[0])  # if it opens
    monkeypatch.setattr(video, "_pyav_frames", lambda path, idx: decoded.append(path) or real_pyav(path, idx))
    ds = VideoClips(clips)
    tf = video_train_transform(4, 1, 32, (0.5,) * 3, (0.25,) * 3, repeats=3)
    samples = SeededSamples(ds, tf, seed=0, num_units=4, mask_ratio=0.5, repeats=3)
    items = [samples[(0, i)] for i in range(len(ds))]
    assert len(decoded) == len(set(decoded)) == len(ds) - 1  # each readable video decoded once (broken: never)
    batch = collate(items)
    assert batch["skipped"] == 1 and batch["size"] == 18 and batch["x"].shape == (18, 3, 4, 32, 32)
    labels = torch.tensor([label for _, label in ds.items if _.name != "broken.mp4"])
    assert torch.equal(batch["label"], labels.repeat_interleave(3))
    # each video's three clips start at their own frames (frame brightness = 8 * index) and draw their own masks
    first_frame = batch["x"][:, :, 0].flatten(1).median(1).values.view(6, 3)
    assert any(len(set(row.tolist())) > 1 for row in first_frame)
    visible = batch["visible"].view(6, 3, 4)
    assert any(not torch.equal(v[0], v[1]) or not torch.equal(v[0], v[2]) for v in visible)
    assert torch.equal(collate([samples[(0, i)] for i in range(len(ds))])["x"], batch["x"])  # reproducible


def test_repeated_augmentation_is_refused_for_images(tmp_path, capsys):
    assert main(["pretrain", "data.repeat_aug=2", "data.limit=8", f"out_dir={tmp_path}"]) == 1
    assert "data.repeat_aug is a video option" in capsys.readouterr().err


def test_eval_views_are_even_crops_along_the_long_side():
    clip = torch.arange(48, dtype=torch.uint8).view(1, 1, 48, 1).expand(2, 24, 48, 3).contiguous()
    views = video_eval_views(clip, 24, (0.0,) * 3, (1.0,) * 3, spatial_crops=3)  # no resize: short side is 24
    assert views.shape == (3, 3, 2, 24, 24)
    firsts = (views[:, 0, 0, 0, 0] * 255).round().tolist()
    assert firsts == [0, 12, 24]  # left, centre, right


@pytest.mark.skipif(not (MEDIA / "dog.mp4").exists(), reason="../shared/media is absent")
def test_real_clips_decode_at_kinetics_sampling():
    for name in ("dog.mp4", "goat.mp4"):
        path = MEDIA / name
        n = video_frame_count(path)
        clip = read_clip(path, 16, 4, start=uniform_starts(n, 16, 4, 1)[0])
        assert clip.shape[0] == 16 and clip.shape[-1] == 3 and clip.float().std() > 10
        views = video_eval_views(clip, 224, (0.45,) * 3, (0.225,) * 3, spatial_crops=3)
        assert views.shape == (3, 3, 16, 224, 224)


def test_cli_video_mae_pretrain_and_reconstruct(tmp_path, clips, capsys):
    tiny = VIDEO_MAE_TINY
    run = tmp_path / "run"
    assert main(["pretrain", *tiny, f"data.source={clips}", "data.num_workers=0", "data.frame_stride=2",
                 "optim.batch_size=3", "data.repeat_aug=2", "epochs=1", "recon_images=2", f"out_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_images"] >= 1
    gif = Image.open(run / "reconstructions" / "recon_000.gif")
    assert gif.n_frames == 4  # 8 frames, one label frame per 2-frame token
    index = json.loads((run / "reconstructions" / "reconstructions.json").read_text())
    assert {e["label"].split(":")[0] for e in index["images"]} == {"left", "right"}  # spread over the classes
    assert (run / "reconstructions" / "overview.png").exists()  # every clip at its middle frame
    w, h = Image.open(run / "reconstructions" / index["images"][0]["file"]).size
    assert 0.7 < w / h < 1.5  # 4 labelled frames across, the 4 panels down
    assert main(["reconstruct", str(run), "--num", "1", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "recon_000.gif").exists() and (tmp_path / "again" / "overview.png").exists()
    assert "overview.png" in capsys.readouterr().out


def test_multiview_scores_average_the_views_probabilities():
    from hieralab.engine.evaluate import multiview_scores

    table = torch.tensor([[10.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # view v of any clip -> these logits

    def fn(x):  # x [B * V, ...]; the view index is written in the input
        return table[x[:, 0, 0, 0, 0].long()]

    views = torch.arange(3.0).view(1, 3, 1, 1, 1, 1).expand(2, 3, 1, 1, 1, 1)
    scores = multiview_scores(fn, views)
    expected = table.softmax(-1).mean(0).log()
    torch.testing.assert_close(scores, expected.expand(2, 2))
    assert scores.argmax(-1).tolist() == [1, 1]  # two views for class 1 win; one saturated view cannot outvote them
    assert table.mean(0).argmax().item() == 0  # as it would if the logits were averaged


def test_cli_video_finetune_and_multiview_eval(tmp_path, clips, capsys):
    tiny = ["model=hiera_mini_8x32", "model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]"]
    run = tmp_path / "ft"
    assert main(["finetune", *tiny, f"data.source={clips}", "data.num_workers=0", "data.frame_stride=2",
                 "optim.batch_size=2", "max_steps=2", "val_fraction=0.3", "eval_every=1", f"out_dir={run}"]) == 0
    meta = json.loads((run / "best" / "classifier.json").read_text())
    assert meta["num_frames"] == 8 and meta["frame_stride"] == 2
    assert main(["eval", str(run), "--data", str(clips), "--temporal-views", "2", "--spatial-views", "3"]) == 0
    metrics = json.loads((run / "best" / eval_folder_name(str(clips), "test", (2, 3)) / "metrics.json").read_text())
    assert metrics["views"] == [2, 3] and metrics["count"] == 6  # the broken clip is skipped
    assert "top-1" in capsys.readouterr().out


def test_cli_extract_video_features(tmp_path, clips):
    out = tmp_path / "v.safetensors"
    assert main(["extract", "--model", "hiera_mini_8x32", "--data", str(clips), "--img-size", "32",
                 "--frame-stride", "2", "--out", str(out)]) == 0
    from safetensors.torch import load_file

    feats = load_file(str(out))
    assert feats["features"].shape == (6, 256) and feats["labels"].tolist() == [0, 0, 0, 1, 1, 1]  # broken: skipped


# ---------------------------------------------------------------- decoders: torchcodec, PyAV as the fallback
def test_torchcodec_and_pyav_give_the_same_frames(tmp_path):
    from hieralab.data.video import pick_decoder, torchcodec_problem
    if torchcodec_problem():
        pytest.skip(f"torchcodec cannot load here: {torchcodec_problem()}")
    paths = [write_clip(tmp_path / "c.mp4", frames=30)] + [MEDIA / n for n in ("dog.mp4", "goat.mp4")
                                                           if (MEDIA / n).exists()]
    assert pick_decoder("auto") == "torchcodec"
    for path in paths:
        n = video_frame_count(path, "pyav")
        assert video_frame_count(path, "torchcodec") == n
        indices = [0, 7, 7, 3, n - 1, n + 5]  # any order, repeats, past the end (the last frame)
        a, b = decode_frames(path, indices, "pyav"), decode_frames(path, indices, "torchcodec")
        assert a.shape == b.shape == (6, *a.shape[1:]) and torch.equal(a, b), path  # bit for bit
        g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        clips = [read_clips(path, 8, 2, count=2, generator=g(), decoder=d) for d in ("pyav", "torchcodec")]
        assert clips[0].shape == (2, 8, *a.shape[1:]) and torch.equal(*clips)  # the sampler's clips too


def test_without_torchcodec_auto_falls_back_to_pyav(tmp_path, monkeypatch, capsys):
    from hieralab.data import video
    monkeypatch.setattr(video, "torchcodec_problem", lambda: "RuntimeError: no FFmpeg libraries")
    assert video.pick_decoder("auto") == "pyav"
    path = write_clip(tmp_path / "c.mp4", frames=12)
    assert decode_frames(path, [1, 2]).shape == (2, 40, 48, 3)
    with pytest.raises(Exception, match="cannot load .*install Debian's ffmpeg .*video_decoder=pyav"):
        video.pick_decoder("torchcodec")


def test_randaugment_draws_once_per_clip_and_erasing_cuts_one_box_through_every_frame():
    """MAE-ST's fine-tuning augmentation of a clip: RandAugment with the same ops and magnitudes for every frame
    (a clip of identical frames stays identical, and changes), random erasing in one box at the same place in every
    frame with noise of its own per frame; each a function of the sample's key, and each view its own draws."""
    from hieralab.data.streams import sample_key
    from hieralab.data.video import erase_clip, randaugment_clip

    frame = torch.randint(0, 256, (1, 3, 40, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    clip = frame.expand(6, -1, -1, -1)
    torch.manual_seed(0)
    changed = []  # random pixels: AutoContrast and a few others leave them as they are
    for seed in range(32):
        random.seed(seed)
        out = randaugment_clip(clip, "rand-m7-mstd0.5-inc1-mmax9")
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(6))  # the same draws for every frame
        changed.append(not torch.equal(out[0], frame[0]))
    assert sum(changed) >= 8  # two ops per clip, each applied with p 0.5 (timm's RandAugment): ~3 clips in 4 change

    x = torch.zeros(3, 5, 32, 32)
    erased = [erase_clip(x, 1.0) for _ in range(20)]
    for e in erased:
        box = (e != 0).any(0)  # [T, H, W]
        assert box[0].any() and all(torch.equal(box[0], box[t]) for t in range(5))  # one box, in every frame
        assert not torch.equal(e[:, 0], e[:, 1])  # noise drawn for each frame
        assert 0.02 * 32 * 32 * 0.9 <= box[0].sum() <= 32 * 32 / 3 * 1.1  # 2-33 % of the frame
    assert len({tuple(e.ne(0).any(0)[0].nonzero()[0].tolist()) for e in erased}) > 1  # boxes at their own places
    assert sum(torch.equal(erase_clip(x, 0.25), x) for _ in range(200)) in range(120, 181)  # p = 0.25: ~150 kept

    tf = video_train_transform(4, 1, 32, (0.5,) * 3, (0.25,) * 3, repeats=2, randaug="rand-m7-mstd0.5-inc1-mmax9",
                               reprob=1.0)
    path = MEDIA / "dog.mp4"
    if not path.exists():
        return
    with sample_key(0, 0, 3):
        a = tf(path)
    with sample_key(0, 0, 3):
        b = tf(path)
    with sample_key(0, 0, 4):
        c = tf(path)
    assert a.shape == (2, 3, 4, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)  # a function of the key
    assert not torch.equal(a[0], a[1])  # the two views: their own start, crop, RandAugment and erasing
