"""Where users touch it (issue 21): readers that say what they could not read, files that are valid JSON, configs
that refuse a key given twice, models that run under autocast, flags checked one line each."""

import json
import math
from pathlib import Path

import pytest

from hieralab import files
from hieralab.config import PretrainConfig
from hieralab.config.schema import apply_overrides, load_config, read_preset
from hieralab.errors import ConfigError


# ---------------------------------------------------------------- files.write_json (case 4)
def test_write_json_writes_nan_and_inf_as_null(tmp_path):
    path = files.write_json(tmp_path / "m.json", {"loss": math.nan, "best": [1.5, math.inf, -math.inf],
                                                  "nested": {"x": (float("nan"), 2)}, "ok": 0.25, "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON")) == \
        {"loss": None, "best": [1.5, None, None], "nested": {"x": [None, 2]}, "ok": 0.25, "n": 3}


# ---------------------------------------------------------------- config (case 5)
def test_preset_with_a_key_given_twice_is_refused(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text("epochs: 2\noptim:\n  base_lr: 1.0e-3\n  batch_size: 8\n  base_lr: 1.0e-2\n")
    with pytest.raises(ConfigError) as e:
        read_preset(str(preset))
    assert len(e.value.problems) == 1
    assert str(preset) in str(e.value) and "'base_lr'" in str(e.value) and "lines 3 and 5" in str(e.value)
    flow = tmp_path / "flow.yaml"
    flow.write_text("optim: {batch_size: 8, batch_size: 16}\n")
    with pytest.raises(ConfigError, match="'batch_size' is given twice"):
        load_config(PretrainConfig, str(flow), [])


def test_preset_merge_keys_and_same_key_in_two_sections_are_fine(tmp_path):
    preset = tmp_path / "ok.yaml"
    preset.write_text("base: &b {batch_size: 8}\noptim:\n  <<: *b\n  base_lr: 0.1\ndata:\n  batch_size_x: 1\n")
    assert read_preset(str(preset))["optim"] == {"batch_size": 8, "base_lr": 0.1}


@pytest.mark.parametrize("argv", [
    ["optim.base_lr", "=", "1e-3"],       # optim.base_lr = 1e-3
    ["optim.base_lr", "=1e-3"],           # optim.base_lr =1e-3
    ["optim.base_lr=", "1e-3"],           # optim.base_lr= 1e-3
    ["optim.base_lr =1e-3"],              # 'optim.base_lr =1e-3' (quoted)
    ["optim.base_lr = 1e-3"],
])
def test_override_with_spaces_around_the_equals_sign(argv):
    cfg = load_config(PretrainConfig, None, [*argv, "seed", "=", "3", "epochs=2"])
    assert cfg.optim.base_lr == 1e-3 and cfg.seed == 3 and cfg.epochs == 2


def test_override_that_is_no_key_value_says_what_to_write():
    with pytest.raises(ConfigError, match=r"'optim.base_lr' is not key=value: write it as one word, e.g. "):
        apply_overrides({}, ["optim.base_lr"])
    with pytest.raises(ConfigError, match=r"the key 'optim base_lr' holds a space"):
        apply_overrides({}, ["optim base_lr=1"])
    assert apply_overrides({}, ["data.source="]) == {"data": {"source": None}}  # an empty value stays empty


# ---------------------------------------------------------------- masks (case 1)
def _mask_folder(root: Path, masks: list, mode: str | None = None) -> tuple[Path, Path]:
    """Images (8x8 RGB) and their masks (arrays saved as PNG, in ``mode`` when given) under ``root``."""
    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True), (root / "ann").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "img" / f"{i}.png")
        m = m if isinstance(m, Image.Image) else Image.fromarray(m) if mode is None else Image.fromarray(m, mode)
        m.save(root / "ann" / f"{i}.png")
    return root / "img", root / "ann"


def test_rgb_masks_are_refused_naming_the_file(tmp_path):
    import numpy as np

    from hieralab.data.masks import MaskFolder
    from hieralab.errors import DataError

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:6, 2:6] = (200, 30, 30)  # a red object on black: read as gray, the object was index 84 and ignored
    img, ann = _mask_folder(tmp_path, [rgb, rgb])
    with pytest.raises(DataError) as e:
        MaskFolder(img, ann, classes=["background", "thing"])
    msg = str(e.value)
    assert "\n" not in msg and str(ann / "0.png") in msg and "colour (RGB)" in msg and "palette ('P')" in msg


def test_palette_masks_are_read_as_indices(tmp_path):
    import numpy as np
    from PIL import Image

    from hieralab.data.masks import MaskFolder

    p = Image.fromarray(np.array([[0, 1, 2, 255]] * 8, np.uint8).repeat(2, 1), "L").convert("P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9))
    img, ann = _mask_folder(tmp_path, [p])
    folder = MaskFolder(img, ann, classes=["background", "red", "green"])
    assert folder[0][1]["mask"][0].tolist() == [0, 0, 1, 1, 2, 2, 255, 255]


def test_16bit_masks_within_the_classes_are_indices_and_beyond_them_are_refused(tmp_path):
    import numpy as np

    from hieralab.data.masks import MaskFolder
    from hieralab.errors import DataError

    ok = np.array([[0, 1, 2, 255]] * 8, np.uint16).repeat(2, 1)
    img, ann = _mask_folder(tmp_path / "ok", [ok])
    assert MaskFolder(img, ann, classes=["a", "b", "c"])[0][1]["mask"][0].tolist() == [0, 0, 1, 1, 2, 2, 255, 255]
    ids = np.array([[0, 1000, 2000, 0]] * 8, np.uint16).repeat(2, 1)  # instance ids: all foreground was ignored
    img, ann = _mask_folder(tmp_path / "ids", [ids])
    with pytest.raises(DataError) as e:
        MaskFolder(img, ann, classes=["a", "b", "c"])
    assert "\n" not in str(e.value) and str(ann / "0.png") in str(e.value) and "16-bit" in str(e.value)
    assert "value 2000" in str(e.value)


def test_1bit_masks_are_0_and_1(tmp_path):
    import numpy as np
    from PIL import Image

    from hieralab.data.masks import MaskFolder

    bits = Image.fromarray(np.array([[0, 0, 255, 255]] * 8, np.uint8).repeat(2, 1)).convert("1")
    img, ann = _mask_folder(tmp_path, [bits])
    assert MaskFolder(img, ann, classes=["background", "thing"])[0][1]["mask"][0].tolist() == [0] * 4 + [1] * 4


@pytest.mark.parametrize("values, reduce", [([255], False), ([7, 9, 255], False), ([0, 255], True)])
def test_masks_without_a_labelled_pixel_are_refused(tmp_path, values, reduce):
    import numpy as np

    from hieralab.data.masks import MaskFolder
    from hieralab.errors import DataError

    mask = np.array([values * 8] * 8, np.uint8)[:, :8]
    img, ann = _mask_folder(tmp_path, [mask] * 3)
    with pytest.raises(DataError, match=r"no labelled pixel in the 3 masks of .*ann") as e:
        MaskFolder(img, ann, classes=["a", "b"], reduce_zero_label=reduce)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- COCO files (case 2)
def _coco(tmp_path: Path, annotations, images=None, categories=None) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(folder / name)
    data = {"images": images if images is not None else [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                                                         {"id": 2, "file_name": "b.png", "height": 40, "width": 50}],
            "categories": categories if categories is not None else [{"id": 1, "name": "shoe"}]}
    if annotations is not None:
        data["annotations"] = annotations
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json", folder


SQUARE = [[10, 10, 30, 10, 30, 30, 10, 30]]


@pytest.mark.parametrize("annotations", [None, [], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                                                     "segmentation": SQUARE, "iscrowd": 1}]])
def test_coco_file_without_annotations_is_refused_for_training(tmp_path, annotations, caplog):
    from hieralab.data.coco import CocoInstances
    from hieralab.errors import DataError

    ann, images = _coco(tmp_path, annotations)
    with pytest.raises(DataError) as e:
        CocoInstances(ann, images)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{ann} has no annotation to train on or score (2 images, ")
    assert "AP would be -1" in msg
    with caplog.at_level("WARNING"):  # an evaluation may go on, and says so
        ds = CocoInstances(ann, images, require_annotations=False)
    assert len(ds) == 2 and f"{ann} has no annotation to score" in caplog.text


def test_coco_fields_of_the_wrong_type_are_skipped_counted_and_named(tmp_path, caplog):
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from hieralab.data.coco import CocoInstances

    good = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": SQUARE, "iscrowd": 0}
    anns = [{"id": 1, **good},
            {"id": 2, **good, "bbox": "10,10,20,20"},        # a string: float(',') used to stop the run
            {"id": 3, **good, "image_id": "1"},              # a string id
            {"id": 4, **good, "category_id": 99},            # no such category
            {"id": 5, **good, "segmentation": []},           # COCOeval's IndexError after training
            {"id": 6, **good, "segmentation": [[1, 2, 3]]},  # not a polygon
            {"id": 7, **good, "image_id": 3}]                # an image with a string id
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
              {"id": "3", "file_name": "b.png", "height": 40, "width": 50}]
    ann, folder = _coco(tmp_path, anns, images=images)
    with caplog.at_level("WARNING"):
        ds = CocoInstances(ann, folder)
    assert ds.dropped == {"annotations with a malformed bbox skipped": 1, "annotations of no listed image skipped": 2,
                          "annotations of unknown categories skipped": 1, "annotations without a mask skipped": 1,
                          "annotations with a malformed segmentation skipped": 1,
                          "images whose id is not a whole number (or is given twice) skipped": 1}
    assert "annotation 2: bbox '10,10,20,20'" in caplog.text and "annotation 3: image_id '1'" in caplog.text
    assert "annotation 4: category_id 99" in caplog.text and "id '3'" in caplog.text
    assert ds.ids == [1] and sorted(ds.coco.anns) == [1]  # left out of the ground truth evaluation scores too
    result = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 1.0,
               "segmentation": ds.coco.annToRLE(ds.coco.anns[1])}]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(result), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    box_only = CocoInstances(ann, folder, masks=False)  # without masks an empty segmentation is no matter
    assert sorted(box_only.coco.anns) == [1, 5, 6]


@pytest.mark.parametrize("change, words", [
    ({"annotations": {"1": {}}}, "'annotations' must be a list of objects ({...}), found dict"),
    ({"annotations": ["x"]}, "'annotations' must be a list of objects ({...}), found a str among them"),
    ({"categories": [{"name": "shoe"}]}, "has no whole-number 'id'"),
    ({"categories": [{"id": "1", "name": "shoe"}]}, "has no whole-number 'id'"),
])
def test_coco_file_of_the_wrong_structure_is_one_line(tmp_path, change, words):
    from hieralab.data.coco import CocoInstances
    from hieralab.errors import DataError

    ann, folder = _coco(tmp_path, [])
    ann.write_text(json.dumps({**json.loads(ann.read_text()), **change}))
    with pytest.raises(DataError) as e:
        CocoInstances(ann, folder)
    assert "\n" not in str(e.value) and str(ann) in str(e.value) and words in str(e.value)


# ---------------------------------------------------------------- shards (case 3)
def _mixed_folder(root: Path) -> Path:

    from conftest import draw_images, write_clip

    draw_images(root, n=6)  # boxes/ and circles/
    write_clip(root / "boxes" / "dog.mp4")
    return root


def test_shards_refuse_a_folder_of_images_and_clips(tmp_path):
    from hieralab.data.shards import shard_source
    from hieralab.errors import DataError

    src = _mixed_folder(tmp_path / "mixed")  # the clip was written and every image dropped without a word
    with pytest.raises(DataError) as e:
        shard_source(str(src), tmp_path / "out", shard_size=4)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{src} holds 6 images and 1 clips; a shard set holds one kind: move ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["sub", "boxes/deeper", "."])
def test_shards_refuse_an_output_folder_inside_the_source(tmp_path, inside):
    from conftest import draw_images

    from hieralab.data.shards import shard_source
    from hieralab.errors import DataError

    src = draw_images(tmp_path / "images", n=4)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    with pytest.raises(DataError, match=r"is inside the source .*: the shards would be written into the data they "
                                        r"are made of; give a folder outside") as e:
        shard_source(str(src), src / inside, shard_size=2)
    assert "\n" not in str(e.value)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nothing written there
    assert shard_source(str(src), tmp_path / "beside", shard_size=2)["samples"] == 4  # beside it is fine


def test_shards_of_a_clip_list_naming_a_file_without_an_extension_is_one_line(tmp_path, caplog):
    import shutil

    from conftest import write_clip

    from hieralab.data.shards import shard_source
    from hieralab.errors import DataError

    write_clip(tmp_path / "dog.mp4")
    shutil.copy(tmp_path / "dog.mp4", tmp_path / "dog")
    listing = tmp_path / "clips.csv"
    listing.write_text("dog.mp4,0\ndog,1\n")  # was an IndexError inside webdataset's TarWriter
    with pytest.raises(DataError) as e:
        shard_source(str(listing), tmp_path / "out")
    assert "\n" not in str(e.value) and str(listing) in str(e.value)
    assert "names 1 files without a clip extension" in str(e.value) and "rename" in str(e.value)
    listing.write_text("dog.mp4,0\ngone.mp4,1\n")  # a missing file: skipped, counted and named
    with caplog.at_level("WARNING"):
        index = shard_source(str(listing), tmp_path / "out2")
    assert index["samples"] == 1 and "1 listed clips do not exist and are skipped" in caplog.text
    assert "gone.mp4" in caplog.text


def test_a_shard_named_without_its_extension_is_read_and_odd_members_are_counted(tmp_path, caplog):
    import io
    import tarfile

    from conftest import draw_images

    from hieralab.data.shards import ShardSet, is_shard_source, shard_source

    index = shard_source(str(draw_images(tmp_path / "images", n=4)), tmp_path / "s", shard_size=4)
    plain = tmp_path / "shard0"  # a tar named without .tar: it was taken for a missing image folder
    plain.write_bytes((tmp_path / "s" / "shard-000000.tar").read_bytes())
    assert is_shard_source(str(plain)) and len(ShardSet(str(plain))) == 4
    with tarfile.open(tmp_path / "s" / "shard-000000.tar", "a") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "s" / "shards.json").unlink()
    with caplog.at_level("WARNING"):
        assert len(ShardSet(index["pattern"])) == 4
    assert "1 files without an extension skipped (README)" in caplog.text


# ---------------------------------------------------------------- optimize_for_inference under autocast (case 6)
def test_an_inference_optimised_model_runs_under_bfloat16_autocast():
    import torch

    import hieralab
    from conftest import randomize_
    from hieralab.layers.packed_linear import PackedLinear, onednn_available
    from hieralab.models.inference import optimize_for_inference

    if not onednn_available():
        pytest.skip("oneDNN linear ops are unavailable in this torch build")
    model = randomize_(hieralab.create_model("hiera_tiny_224", num_classes=10, embed_dim=32, num_heads=1,
                                             stages=[1, 1, 2, 1], input_size=[64, 64])).eval()
    fast = optimize_for_inference(model)
    assert any(isinstance(m, PackedLinear) for m in fast.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # was oneDNN's "could not create a primitive"
        got, want = fast(x), model(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.float().abs().max().item())
    with torch.no_grad():  # and outside autocast, the packed fp32 path as before
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- export flags (case 8)
@pytest.mark.parametrize("flags, words", [
    ({"img_size": -32}, "--img-size -32: must be a whole number of at least 1"),  # was torch's negative dimension
    ({"img_size": 0}, "--img-size 0: must be a whole number of at least 1"),      # was the native size, silently
    ({"img_size": 100}, "--img-size 100: input size (100, 100) does not divide into mask units: H=100 -> a "
                        "multiple of 32 (e.g. 96), W=100 -> a multiple of 32 (e.g. 96); resize or crop"),
    ({"batch": 0}, "--batch 0: must be a whole number of at least 1"),
    ({"batch": -2}, "--batch -2: must be a whole number of at least 1"),
    ({"frames": 0}, "--frames 0: must be a whole number of at least 1"),
])
def test_export_flags_out_of_range_are_one_line_naming_the_flag(tmp_path, flags, words):
    from hieralab.tasks import export

    with pytest.raises(ValueError) as e:
        export.run("hiera_tiny_224", str(tmp_path / "m.pt2"), check=False, **flags)
    assert str(e.value) == words
    assert list(tmp_path.iterdir()) == []


def test_export_frames_must_be_whole_mask_units_of_a_video_model(tmp_path):
    from hieralab.tasks import export

    with pytest.raises(ValueError, match=r"^--frames 3: input size \(3, 224, 224\) does not divide into mask "
                                         r"units: T=3 -> a multiple of 2 \(e.g. 4\); resize or crop$"):
        export.run("hiera_base_16x224", str(tmp_path / "v.pt2"), check=False, frames=3)


# ---------------------------------------------------------------- from_pretrained (case 7)
def test_from_pretrained_features_only_as_create_model_gives_it(tmp_path):
    import torch

    import hieralab
    from hieralab.models.features import FeatureMaps

    small = dict(embed_dim=16, num_heads=1, stages=[1, 1, 1, 1], num_classes=3)
    hieralab.create_model("hiera_tiny_224", **small).save_pretrained(tmp_path / "m")
    maps = hieralab.from_pretrained(tmp_path / "m", features_only=True, out_indices=(1, 3))  # was a TypeError
    same = hieralab.create_model("hiera_tiny_224", **small, checkpoint=tmp_path / "m", features_only=True,
                                 out_indices=(1, 3))
    assert isinstance(maps, FeatureMaps) and maps.feature_info.channels() == same.feature_info.channels() == [32, 128]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(maps.eval()(x), same.eval()(x), strict=True):
            torch.testing.assert_close(a, b)
    assert isinstance(hieralab.Hiera.from_pretrained(tmp_path / "m", features_only=True), FeatureMaps)


@pytest.fixture(scope="module")
def hf_hiera(tmp_path_factory):
    """transformers' HieraForImageClassification (Hiera-T's shape, 3 labels) saved by its own save_pretrained."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.HieraConfig(embed_dim=96, num_heads=[1, 2, 4, 8], depths=[1, 2, 7, 2],
                                      id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = transformers.HieraForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "hiera"
    model.save_pretrained(folder)
    return folder, model


def test_from_pretrained_reads_a_transformers_save_pretrained_folder(hf_hiera):
    import torch

    import hieralab

    folder, theirs = hf_hiera
    assert json.loads((folder / "config.json").read_text())["model_type"] == "hiera"
    ours = hieralab.from_pretrained(folder).eval()  # was "config.json is not a save_pretrained config"
    assert ours.model_name == "hiera_tiny_224" and ours.num_classes == 3
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits, rtol=1e-4, atol=1e-4)
    built = hieralab.create_model("hiera_tiny_224", num_classes=3, checkpoint=folder).eval()  # the folder as such
    with torch.no_grad():
        torch.testing.assert_close(built(x), ours(x))
    assert isinstance(hieralab.from_pretrained(folder, features_only=True), hieralab.models.features.FeatureMaps)


def test_from_pretrained_of_another_transformers_model_names_what_to_pass(tmp_path):
    from hieralab.errors import CheckpointError
    from hieralab.models.checkpoint import from_pretrained

    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tmp_path / "vit")
    msg = str(e.value)
    assert "\n" not in msg and "is a transformers vit (ViTModel), not a Hiera" in msg
    assert f"hieralab.create_model(NAME, checkpoint='{tmp_path / 'vit' / 'model.safetensors'}')" in msg
    (tmp_path / "hiera").mkdir()
    (tmp_path / "hiera" / "config.json").write_text(json.dumps({"model_type": "hiera", "embed_dim": 96}))
    with pytest.raises(CheckpointError, match="has a transformers config.json but no model.safetensors"):
        from_pretrained(tmp_path / "hiera")


def test_from_pretrained_reads_a_folder_timm_wrote(tmp_path):
    import torch
    from timm.models import save_for_hf

    import hieralab

    timm_model = __import__("timm").create_model("hiera_tiny_224", num_classes=5).eval()
    save_for_hf(timm_model, tmp_path / "t", safe_serialization=True)  # config.json names an "architecture"
    ours = hieralab.from_pretrained(tmp_path / "t").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- predict flags (case 8)
@pytest.mark.parametrize("flags, words", [({"topk": 0}, "--topk 0: must be at least 1"),
                                          ({"topk": -1}, "--topk -1: must be at least 1"),
                                          ({"batch_size": 0}, "--batch-size 0: must be at least 1")])
def test_predict_flags_out_of_range_are_one_line_naming_the_flag(tmp_path, flags, words):
    from hieralab.tasks.finetune import predict_files  # (it was tasks/evaluate.py's)

    with pytest.raises(ValueError) as e:  # checked before the checkpoint is read
        predict_files(tmp_path / "no-model", [str(tmp_path)], **flags)
    assert str(e.value) == words


def test_shards_command_refusals_are_one_line(tmp_path, capsys):
    from conftest import error_lines

    from hieralab.cli import main

    src = _mixed_folder(tmp_path / "mixed")
    assert main(["shards", str(src), str(tmp_path / "out")]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "holds 6 images and 1 clips" in line
    assert main(["shards", str(src), str(src / "sub")]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert f"the shard folder {src / 'sub'} is inside the source {src}" in line
    assert not (src / "sub").exists()
