"""Dense prediction: the Fashion-MNIST scenes, COCO annotations as users have them (bad ones included), necks at
any size, torchvision's detectors and the semantic head on our encoders, COCO AP and mIoU on known answers, and
``hieralab detect`` / ``segment`` / ``eval`` / ``predict`` end to end on tiny scenes."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hieralab
from conftest import error_lines
from hieralab.cli import main
from hieralab.data.coco import CocoInstances, DenseSamples, collate_dense, train_transform
from hieralab.data.fashion_mnist import ROOT
from hieralab.metrics.coco import coco_metrics, to_coco_results
from hieralab.metrics.segmentation import confusion, iou_from_confusion
from hieralab.layers.necks import FPN, SimpleFeaturePyramid, TopDownNeck
from hieralab.models.dense import Detector, Segmenter

needs_fmnist = pytest.mark.skipif(not (ROOT / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST is not installed (make data)")
TINY = {"embed_dim": 16, "num_heads": 1, "stages": [1, 1, 1]}
TINY_ARGS = [f"model_args.{k}={json.dumps(v)}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    from hieralab.data.scenes import ensure_scenes

    return ensure_scenes(tmp_path_factory.mktemp("scenes") / "s", train=16, val=8, seed=0)


# ---------------------------------------------------------------- the scenes
@needs_fmnist
def test_scenes_are_deterministic_and_their_annotations_match_the_pixels(scenes, tmp_path):
    from hieralab.data.scenes import ensure_scenes

    again = ensure_scenes(tmp_path / "again", train=16, val=8, seed=0)
    for split in ("train", "val"):
        assert (again / split / "annotations.json").read_text() == (scenes / split / "annotations.json").read_text()
    coco = json.loads((scenes / "train" / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    ds = CocoInstances(scenes / "train" / "annotations.json", scenes / "train" / "images")
    sizes = {(i["height"], i["width"]) for i in coco["images"]}
    assert all(128 <= h <= 192 and 128 <= w <= 192 for h, w in sizes) and len(sizes) > 1  # not all square
    for i in range(len(ds)):
        image, t = ds[i]
        assert 1 <= len(t["labels"]) <= 6 and t["masks"].shape[1:] == (image.size[1], image.size[0])
        semantic = np.asarray(Image.open(scenes / "train" / "semantic" / coco["images"][i]["file_name"]))
        for box, label, mask in zip(t["boxes"], t["labels"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert torch.equal(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
            assert (semantic[mask.numpy().astype(bool)] == label.item()).all()  # the semantic PNG agrees
    assert ensure_scenes(scenes, train=16, val=8, seed=0) == scenes  # reused, not written again


# ---------------------------------------------------------------- COCO files as users have them
def write_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(images / name)
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]  # a polygon
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 42, "bbox": [40, 30, 30, 30], "segmentation": square, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 42, "bbox": [5, 5, 0, 8], "segmentation": square, "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [60, 50, 10, 10], "segmentation": square, "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 1, 1, 1, 1]],
         "iscrowd": 0},
        {"id": 6, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "segmentation": square, "iscrowd": 0},
        {"id": 7, "image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10], "segmentation": square, "iscrowd": 1},
        {"id": 8, "image_id": 4, "category_id": 7, "bbox": [0, 0, 10, 10], "segmentation": square, "iscrowd": 0},
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                       {"id": 2, "file_name": "b.png", "height": 40, "width": 50},  # crowd only: a negative
                       {"id": 3, "file_name": "c.png", "height": 40, "width": 50},  # no annotation: a negative
                       {"id": 4, "file_name": "gone.png", "height": 40, "width": 50}],  # a missing file
            "annotations": anns, "categories": [{"id": 42, "name": "bag"}, {"id": 7, "name": "shoe"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json", images


def test_bad_annotations_are_clipped_or_skipped_and_counted(tmp_path, caplog):
    ann, images = write_coco(tmp_path)
    with caplog.at_level("WARNING"):
        ds = CocoInstances(ann, images)
    assert ds.classes == ["shoe", "bag"] and ds.cat_ids == [7, 42]  # ids in order, labels 1..K
    assert ds.dropped == {"zero-area boxes skipped": 1, "boxes outside their image skipped": 1,
                          "boxes clipped to their image": 1, "annotations of unknown categories skipped": 1,
                          "crowd regions not trained on": 1}
    assert "zero-area boxes skipped" in caplog.text
    image, t = ds[0]
    assert t["labels"].tolist() == [1, 2]  # the empty-mask polygon (id 5) dropped when decoded
    assert t["boxes"][1].tolist() == [40.0, 30.0, 50.0, 40.0]  # clipped to the 50 x 40 image
    for i in (1, 2):  # negatives stay, with empty targets
        image, t = ds[i]
        assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 40, 50)
    bad, _ = ds[3]
    assert bad.path.endswith("gone.png")
    batch = collate_dense([DenseSamples(ds, train_transform(32), seed=0)[(0, i)] for i in range(4)])
    assert batch["size"] == 3 and batch["skipped"] == 1 and "gone.png" in batch["unreadable"][0]
    assert all(x.shape == (3, 32, 32) for x in batch["x"])
    assert [len(t["boxes"]) == len(t["masks"]) == len(t["labels"]) for t in batch["target"]] == [True] * 3


def test_a_bad_annotation_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"images": [}')
    assert main(["detect", f"data.train_ann={tmp_path / 'bad.json'}", f"data.train_images={tmp_path}",
                 f"data.val_ann={tmp_path / 'bad.json'}", f"data.val_images={tmp_path}",
                 f"out_dir={tmp_path / 'r'}"]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "bad.json is not a COCO annotation file" in line


def test_coco_ap_and_miou_on_known_answers(tmp_path):
    ann, images = write_coco(tmp_path)
    coco = json.loads(ann.read_text())  # the clean part of the file: what a perfect detector would find
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] in (1, 7)]
    coco["images"] = coco["images"][:3]
    ann.write_text(json.dumps(coco))
    ds = CocoInstances(ann, images)
    perfect = []
    for i in range(3):
        _, t = ds[i]
        perfect.append((t["image_id"], {"boxes": t["boxes"], "labels": t["labels"],
                                         "scores": torch.ones(len(t["labels"])),
                                         "masks": t["masks"][:, None].float()}))
    metrics, table = coco_metrics(ds.coco, to_coco_results(perfect, ds.category_id), image_ids=ds.ids[:3])
    assert metrics["bbox_AP"] == metrics["segm_AP"] == 100.0 and "Average Precision" in table
    assert coco_metrics(ds.coco, [], image_ids=ds.ids)[0]["bbox_AP"] == 0.0
    truth = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    m = iou_from_confusion(confusion(pred, truth, 3), ["a", "b", "c"])
    assert m["per_class_IoU"] == {"a": 50.0, "b": pytest.approx(66.667, abs=1e-3), "c": 100.0}
    assert m["mIoU"] == pytest.approx((50 + 200 / 3 + 100) / 3, abs=1e-3)


# ---------------------------------------------------------------- necks and models at any size
@pytest.mark.parametrize("size", [(512, 640), (1024, 1024)])
def test_necks_on_hiera_at_large_non_square_sizes(size):
    body = hieralab.create_model("hiera_tiny_224", stages=(1, 1, 1, 1), features_only=True).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = body(x)
        for neck in (FPN(body.feature_info.channels(), 32), TopDownNeck(body.feature_info.channels(), 32)):
            out = neck(maps)
            assert list(out) == ["0", "1", "2", "3", "pool"]
            assert [tuple(v.shape[-2:]) for v in out.values()] == [(size[0] // s, size[1] // s)
                                                                   for s in (4, 8, 16, 32, 64)]
    abswin = hieralab.create_model("hiera_small_abswin_256", stages=(1, 1, 1, 1), features_only=True).eval()
    with torch.no_grad():  # abswin position embeddings: a small global table resized, a window table tiled
        assert abswin(x)[-1].shape == (1, 768, size[0] // 32, size[1] // 32)


def test_the_simple_pyramid_spreads_a_plain_vit_over_four_strides():
    vit = hieralab.create_model("vit_base_patch16_224", depth=1, features_only=True, out_indices=1).eval()
    neck = SimpleFeaturePyramid(768, 32)
    with torch.no_grad():
        out = neck(vit(torch.randn(1, 3, 224, 320)))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(56, 80), (28, 40), (14, 20), (7, 10), (4, 5)]


@pytest.mark.parametrize("encoder, head", [("hiera_mini_32", "maskrcnn"), ("hiera_mini_32", "retinanet"),
                                           ("hiera_mini_32", "fcos"), ("vit_mini_patch4_32", "maskrcnn"),
                                           ("t2t_vit_t_mini_32", "fcos")])
def test_every_head_trains_and_predicts_on_our_encoders(encoder, head):
    args = TINY if encoder.startswith("hiera") else {"depth": 1}
    model = Detector(encoder=encoder, encoder_args=args, head=head, num_classes=3, min_size=96, max_size=128,
                     neck_channels=32 if head == "fcos" else 16, box_head_dim=32, mask_head_layers=(16,), roi_batch=32)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]  # any sizes: padded to the encoder's multiple
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 10:50, 20:60] = 1
    targets = [{"boxes": torch.tensor([[20.0, 10, 60, 50]]), "labels": torch.tensor([2]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 80, 112, dtype=torch.uint8)}]  # a negative image
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder" in n or "body" in n
               if p.requires_grad and "pos_embed" not in n)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) >= {"boxes", "labels", "scores"}
    groups = model.group_matcher()
    assert groups["blocks"].startswith(r"^detector\.backbone\.body\.model\.blocks")


def test_the_segmenter_gives_logits_at_the_input_size_and_loads_back(tmp_path):
    model = Segmenter(encoder="hiera_mini_32", encoder_args=TINY, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 5, 96, 64)
    model.model_name = "segmenter"
    model.save_pretrained(tmp_path / "s")
    again = hieralab.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert torch.equal(again(x), y)


# ---------------------------------------------------------------- the commands, end to end
@needs_fmnist
def test_cli_detect_trains_scores_draws_resumes_evaluates_and_predicts(scenes, tmp_path, capsys):
    run = tmp_path / "det"
    common = ["detect", *TINY_ARGS, f"data.scenes_root={scenes}", "data.scenes_train=16", "data.scenes_val=8",
              "data.num_workers=0", "optim.batch_size=4", "neck_channels=16", "box_head_dim=32",
              "mask_head_layers=[16]", "pictures=2", f"out_dir={run}", "data.img_size=96"]
    assert main([*common, "max_steps=2"]) == 0
    assert "box AP" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"bbox_AP", "bbox_AP50", "segm_AP"} <= set(metrics) and metrics["images"] == 8
    results = json.loads((run / "predictions.json").read_text())
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    assert (run / "predictions.png").exists() and (run / "model" / "detector.json").exists()
    assert main([*common, "max_steps=3", "--resume"]) == 0  # continues the same run
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "again")]) == 0
    assert "box AP" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())  # the run's final scoring, reproduced
    final = json.loads((run / "metrics.json").read_text())
    assert again["bbox_AP"] == final["bbox_AP"] and again["images"] == final["images"] == 8
    assert main(["predict", str(scenes / "val" / "images"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "new")]) == 0
    rows = json.loads((tmp_path / "new" / "detections.json").read_text())
    assert len(rows) == 8 and (tmp_path / "new" / "detections.png").exists()


@needs_fmnist
def test_cli_segment_trains_scores_and_draws(scenes, tmp_path, capsys):
    run = tmp_path / "seg"
    assert main(["segment", *TINY_ARGS, f"data.scenes_root={scenes}", "data.scenes_train=16", "data.scenes_val=8",
                 "data.num_workers=0", "optim.batch_size=4", "neck_channels=16", "head_width=16", "pictures=2",
                 "max_steps=2", "data.img_size=96", f"out_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_class_IoU"]) == 11 and metrics["images"] == 8 == metrics["given"]
    scored = [v for v in metrics["per_class_IoU"].values() if v is not None]
    assert metrics["mIoU"] == pytest.approx(sum(scored) / len(scored), abs=1e-3)  # the mean of what it scored
    assert (run / "predictions.png").exists()
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "again")]) == 0  # the same model, data and inference:
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())  # the same answer, to the digit
    assert again["mIoU"] == metrics["mIoU"] and again["per_class_IoU"] == metrics["per_class_IoU"]
    assert main(["eval", str(run), "--inference", "slide"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["predict", str(scenes / "val" / "images"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "masks")]) == 0
    assert len(os.listdir(tmp_path / "masks" / "masks")) == 8
    # inputs of the same name from two folders get a mask each; an unreadable one gets its reason
    other = tmp_path / "other"
    other.mkdir()
    first = sorted((scenes / "val" / "images").iterdir())[0]
    (other / first.name).write_bytes(first.read_bytes())
    (other / "broken.png").write_bytes(b"not a png")
    assert main(["predict", str(first), str(other), "--checkpoint", str(run), "--out", str(tmp_path / "two")]) == 0
    rows = json.loads((tmp_path / "two" / "masks.json").read_text())
    assert [r.get("mask") for r in rows if "mask" in r] == [f"masks/{first.stem}.png", f"masks/{first.stem}-2.png"]
    assert [Path(r["file"]).name for r in rows if "error" in r] == ["broken.png"]


def test_mask_indices_beyond_the_named_classes_are_ignored_and_said_once(tmp_path, caplog):
    from hieralab.data.masks import IGNORE, MaskFolder
    (tmp_path / "img").mkdir(), (tmp_path / "ann").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{name}.png")
        Image.fromarray(np.array([[0, 1, 5, 255]] * 8, np.uint8).repeat(2, 1)).save(tmp_path / "ann" / f"{name}.png")
    folder = MaskFolder(tmp_path / "img", tmp_path / "ann", classes=["background", "shirt"])
    with caplog.at_level(logging.WARNING):
        masks = [folder[i][1]["mask"] for i in range(2)]
    assert masks[0][0].tolist() == [0, 0, 1, 1, IGNORE, IGNORE, IGNORE, IGNORE]
    said = [r.getMessage() for r in caplog.records if "data.classes names 2 classes" in r.getMessage()]
    assert len(said) == 1 and "class index 5" in said[0]


@needs_fmnist
def test_study_dense_runs_both_rows_over_the_seeds_and_reuses_them(scenes, tmp_path, capsys):
    """The MAE-vs-random study end to end at toy size: a tiny MAE run (its widths carried into the detectors), one
    detect run per row and seed, the table, plot and JSON; run again, it reuses every finished run."""
    mae = tmp_path / "mae"
    assert main(["pretrain", "data.limit=64", "optim.batch_size=16", "max_steps=2", "recon_images=0",
                 "knn_every=0", "model_args.decoder_embed_dim=16", "model_args.decoder_depth=1",
                 "model_args.decoder_num_heads=1", *TINY_ARGS, f"out_dir={mae}"]) == 0
    out, docs = tmp_path / "study", tmp_path / "docs"
    argv = ["study-dense", "--mae", str(mae), "--seeds", "0", "1", "--steps", "1", "--out", str(out),
            "--docs", str(docs), f"data.scenes_root={scenes}", "data.scenes_train=16", "data.scenes_val=8",
            "data.num_workers=0", "data.img_size=96", "neck_channels=16", "box_head_dim=16",
            "mask_head_layers=[16]", "pictures=0"]
    assert main(argv) == 0
    summary = json.loads((out / "dense_study.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ["random init", "MAE encoder"]
    assert [Path(p).name for r in summary["rows"] for p in r["runs"]] == ["random_seed0", "random_seed1",
                                                                          "mae_seed0", "mae_seed1"]
    assert all(len(r["bbox_AP"]) == 2 for r in summary["rows"])
    assert sorted(p.name for p in docs.iterdir()) == ["dense_study.json", "dense_study.md", "dense_study.png"]
    assert "| MAE encoder |" in capsys.readouterr().out
    stamp = (out / "mae_seed1" / "summary.json").stat().st_mtime_ns
    assert main(argv) == 0  # every run finished: reused, not trained again
    assert (out / "mae_seed1" / "summary.json").stat().st_mtime_ns == stamp
