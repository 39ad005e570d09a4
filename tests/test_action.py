"""``hieralab action``: the RoI head on a video encoder (shapes, the region it pools), the data it reads (bad rows and
missing videos counted, boxes jittered per sample, the single-frame baseline) and the task end to end on a few
bundled clips through the command line: train, resume, evaluate, draw, eval and predict on the run."""

import json

import pytest
import torch

from hieralab.cli import main
from hieralab.data.ava import read_csv
from hieralab.data.fashion_mnist import ROOT
from hieralab.data.geometry import Geometry
from hieralab.data.images import Unreadable
from hieralab.models.action import ActionDetector, feature_stages, pool_boxes
from hieralab.models.checkpoint import from_pretrained
from hieralab.tasks.action import collate_actions, jitter_boxes, prepare

needs_fmnist = pytest.mark.skipif(not (ROOT / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
TINY = {"embed_dim": 16, "num_heads": 1}  # the mini video Hiera, narrower
TOY = ["data.actions_train=8", "data.actions_val=4", "data.img_size=32", "optim.batch_size=4",
       "data.num_workers=0", "pictures=2", "model_args.embed_dim=16", "model_args.num_heads=1"]


# ---------------------------------------------------------------- the model
def test_logits_are_one_row_per_box_in_order():
    torch.manual_seed(0)
    model = ActionDetector(encoder="hiera_mini_8x32", encoder_args=TINY, num_classes=5, feature="fuse").eval()
    clips = torch.randn(3, 3, 8, 32, 32)  # [B, C, T, H, W]
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 30.0, 24.0]]), torch.zeros(0, 4),
             torch.tensor([[4.0, 4.0, 20.0, 28.0]])]
    logits = model(clips, boxes)
    assert logits.shape == (3, 5)
    # the third box is clip 2's: alone it gives the same logits
    assert torch.allclose(model(clips[2:], boxes[2:]), logits[2:], atol=1e-5)
    assert model.strides == [4, 8]  # fuse: the last two stages of the mini, each at its own stride
    assert model.layer_id("head.weight") == model.num_layers - 1 and model.layer_id("body.patch_embed.proj.weight") == 0


def test_the_model_saves_and_loads(tmp_path):
    model = ActionDetector(encoder="hiera_mini_8x32", encoder_args=TINY, num_classes=3).eval()
    model.model_name = "action_detector"
    model.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path, expect=ActionDetector).eval()
    x, boxes = torch.randn(1, 3, 8, 32, 32), [torch.tensor([[2.0, 2.0, 20.0, 20.0]])]
    assert torch.equal(model(x, boxes), again(x, boxes))


def test_stage_names():
    assert feature_stages("stage3", 3) == [2] and feature_stages("fuse", 3) == [1, 2]
    assert feature_stages("last", 3) == [2] and feature_stages("last", 4) == [3] and feature_stages("last", 1) == [0]
    assert feature_stages("fuse", 4) == [2, 3]
    with pytest.raises(ValueError, match="3 stages"):
        feature_stages("stage4", 3)
    with pytest.raises(ValueError, match="video encoder"):
        ActionDetector(encoder="hiera_mini_32", encoder_args={"embed_dim": 16, "num_heads": 1})


def test_roi_pooling_takes_the_boxed_region():
    """A map at stride 4 that is 0 everywhere but 5 in cells (rows 2..3, columns 4..5) of channel 1: a box around
    those cells (pixels 16..24 across, 8..16 down) pools 5 there, a box elsewhere 0; and the time average first."""
    fmap = torch.zeros(1, 2, 8, 8)  # [B, C, H, W]
    fmap[0, 1, 2:4, 4:6] = 5.0
    on = torch.tensor([[16.0, 8.0, 24.0, 16.0]])
    off = torch.tensor([[0.0, 20.0, 12.0, 32.0]])
    pooled = pool_boxes(fmap, [torch.cat([on, off])], stride=4)  # [2, C]
    assert torch.allclose(pooled, torch.tensor([[0.0, 5.0], [0.0, 0.0]]))
    model = ActionDetector(encoder="hiera_mini_8x32", encoder_args=TINY, num_classes=2, feature="stage2")
    assert model.strides == [4]
    assert torch.allclose(model.pool([fmap.expand(2, 2, 8, 8)], [on, off]), torch.tensor([[0.0, 5.0], [0.0, 0.0]]))


# ---------------------------------------------------------------- the data
def test_prepare_resizes_and_the_single_frame_baseline_repeats_the_keyframe():
    clip = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8)  # [T, H, W, 3]
    g = Geometry(img_size=32, channels=3, num_frames=8, frame_stride=2)
    x = prepare(clip, g)
    assert x.shape == (3, 8, 32, 32) and 0 <= x.min() and x.max() <= 1
    still = prepare(clip, g, single_frame=True)
    assert torch.equal(still, still[:, 4:5].expand_as(still)) and torch.allclose(still[:, 4], x[:, 4])
    grey = prepare(clip, Geometry(img_size=32, channels=1, num_frames=8))
    assert grey.shape == (1, 8, 32, 32)


def test_box_jitter_is_seeded_and_stays_in_the_frame():
    boxes = torch.tensor([[0.0, 0.0, 0.2, 0.3], [0.5, 0.5, 1.0, 1.0]])
    a = jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(1))
    b = jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, boxes)
    assert a.min() >= 0 and a.max() <= 1 and (a[:, 2:] > a[:, :2]).all()
    assert (a - boxes).abs().max() <= 0.1 * 0.5 + 1e-6
    assert torch.equal(jitter_boxes(boxes, 0.0, torch.Generator()), boxes)


def test_a_batch_keeps_each_clips_boxes_and_drops_unreadable_clips():
    s = {"x": torch.zeros(3, 8, 32, 32), "boxes": torch.ones(2, 4), "target": torch.zeros(2, 5)}
    batch = collate_actions([s, Unreadable("bad.mp4", "broken"), {**s, "boxes": torch.ones(1, 4),
                                                                   "target": torch.ones(1, 5)}])
    assert batch["size"] == 2 and batch["skipped"] == 1 and batch["unreadable"] == ["bad.mp4 (broken)"]
    assert batch["x"].shape == (2, 3, 8, 32, 32) and [len(b) for b in batch["boxes"]] == [2, 1]
    assert batch["target"].shape == (3, 5)


# ---------------------------------------------------------------- the task, end to end
@pytest.fixture(scope="module")
def actions(tmp_path_factory):
    from hieralab.data.fmnist_actions import ensure_actions

    return ensure_actions(tmp_path_factory.mktemp("actions") / "clips", train=8, val=4, seed=0)


@needs_fmnist
def test_action_trains_resumes_evaluates_and_predicts(actions, tmp_path, capsys):
    run = tmp_path / "run"
    toy = [*TOY, f"data.actions_root={actions}", f"out_dir={run}"]
    assert main(["action", *toy, "max_steps=2"]) == 0
    for name in ("metrics.json", "detections.csv", "predictions.png", "motion.png", "curves.png",
                 "model/action.json", "model/config.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["task"] == "action"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["frame_mAP"] <= 100 and metrics["scored"]["keyframes"] == 4
    assert metrics["scored"]["boxes"] == "ground-truth boxes"
    assert set(metrics["AP"]) >= {"move left", "spin", "stand still"}
    rows = read_csv(run / "detections.csv", kind="detections").rows
    people = {(r.video_id, r.value) for r in read_csv(actions / "val.csv").rows}
    assert len(rows) == 11 * len(people)  # every action of every ground-truth box
    meta = json.loads((run / "model" / "action.json").read_text())
    assert meta["geometry"] == {"img_size": 32, "channels": 3, "num_frames": 8, "frame_stride": 2}
    assert len(meta["classes"]) == 11 and meta["label_map"]["5"] == "spin"

    assert main(["action", *toy, "max_steps=3", "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    final = json.loads((run / "metrics.json").read_text())

    # eval on the run's own validation data reproduces the final scores; --limit and --top-k are honoured
    assert main(["eval", str(run), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["frame_mAP"] == pytest.approx(final["frame_mAP"])
    assert main(["eval", str(run), "--limit", "2", "--top-k", "50", "--out", str(tmp_path / "ev2")]) == 0
    two = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert two["scored"]["keyframes"] == 2 and two["scored"]["top_k"] == 50
    # another annotation file and the detected people's boxes
    assert main(["eval", str(run), "--ann", str(actions / "val.csv"), "--videos", str(actions / "videos"),
                 "--boxes", str(actions / "val_person_boxes.csv"), "--out", str(tmp_path / "ev3")]) == 0
    assert json.loads((tmp_path / "ev3" / "metrics.json").read_text())["scored"]["boxes"] == "person boxes"

    capsys.readouterr()
    out = tmp_path / "pred"
    assert main(["predict", str(actions / "videos" / "val_00001.mp4"), "--checkpoint", str(run),
                 "--boxes", str(actions / "val_person_boxes.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed  # the other videos' keyframes
    found = read_csv(out / "detections.csv", kind="detections").rows
    assert {r.video_id for r in found} == {"val_00001"} and len(found) % 11 == 0 and found
    assert (out / "predictions.png").exists() and (out / "motion.png").exists()
    assert main(["predict", str(actions / "videos"), "--checkpoint", str(run), "--out", str(tmp_path / "p2")]) == 1


@needs_fmnist
def test_bad_rows_and_missing_videos_are_counted_not_raised(actions, tmp_path):
    from hieralab.config import ActionDataConfig
    from hieralab.tasks.action import clip_set

    ann = tmp_path / "ann.csv"
    good = (actions / "val.csv").read_text().splitlines()
    ann.write_text("\n".join([*good, "val_00000,1,0.1,0.1,0.3",  # malformed
                              "val_00000,1,0.1,0.1,1.6,0.3,1,0",  # a box outside the frame
                              "nowhere,1,0.1,0.1,0.3,0.3,1,0"]) + "\n")  # a video that is not there
    labels = {i: str(i) for i in range(1, 12)}
    clips = clip_set(ann, actions / "videos", labels, ActionDataConfig(), Geometry(32, 3, 8, 2))
    assert len(clips) == 4
    counts = clips.skipped.counts
    assert counts["malformed rows"] == 1 and counts["boxes outside [0, 1]"] == 1
    assert counts["keyframes of missing videos"] == 1


def test_other_data_needs_its_videos_and_label_map():
    from hieralab.config import ActionDataConfig
    from hieralab.errors import ConfigError
    from hieralab.tasks.action import sources

    with pytest.raises(ConfigError, match="data.labels"):
        sources(ActionDataConfig(train_ann="a.csv", train_videos="v", val_ann="b.csv", val_videos="v"))
    with pytest.raises(ConfigError, match="data.val_videos"):
        sources(ActionDataConfig(train_ann="a.csv", train_videos="v", val_ann="b.csv", labels="l.pbtxt"))


def test_the_study_report_reads_the_runs_it_finds(tmp_path):
    """docs/action_study.md's table and picture come from the runs' metrics.json: the mean and half-range of the
    seeds found, arms without a finished run left out, the chance level scored by the benchmark's metric."""
    from hieralab.experiments import action_study
    from hieralab.metrics.ava import write_label_map

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "val.csv").write_text("v,1,0.1,0.1,0.5,0.5,1,0\nv,1,0.5,0.5,0.9,0.9,2,1\n")
    (clips / "labels.pbtxt").write_text(write_label_map({1: "a", 2: "b"}))
    root = tmp_path / "runs"
    for name, value in (("random-stage3-s0", 30.0), ("random-stage3-s1", 34.0), ("single-stage3-s0", 20.0)):
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps({"frame_mAP": value, "AP": {"a": value, "b": None}}))
    (root / "mae-stage3-s0").mkdir()  # started, never finished: no metrics.json
    out = action_study.report(root, tmp_path / "docs", clips)
    assert [r["arm"] for r in out["arms"]] == ["random init, stage3", "single frame, random init, stage3"]
    text = (tmp_path / "docs" / "action_study_tables.md").read_text()
    assert "| random init, stage3 | 30.00 | 34.00 | 32.00 ± 2.00 |" in text and "20.00 (1 seed)" in text
    assert 0 < out["chance"][0] <= 100 and (tmp_path / "docs" / "action_study.png").stat().st_size > 10_000
