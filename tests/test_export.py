"""Export round trips: ONNX (run with onnxruntime) and torch.export, for image and video Hiera, ViT and T2T-ViT at
toy sizes, with a fixed or a dynamic batch."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import hieralab
from hieralab.cli import main
from hieralab.tasks import export

pytest.importorskip("onnxruntime")

TOYS = {  # name: constructor overrides of a toy of the same class
    "hiera_tiny_224": dict(stages=(1, 1, 1, 1), num_classes=7),
    "hiera_base_16x224": dict(stages=(1, 1, 1, 1), num_classes=5),
    "vit_mini_patch4_32": dict(depth=2),
    "t2t_vit_mini_32": dict(depth=1),
    "t2t_vit_t_mini_32": dict(depth=1),
}


def toy_folder(tmp_path, name):
    model = hieralab.create_model(name, **TOYS[name])
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, model.eval()


@pytest.mark.parametrize("name", list(TOYS))
def test_onnx_dynamic_batch_matches_eager(tmp_path, name):
    folder, model = toy_folder(tmp_path, name)
    size = dict(img_size=64, frames=4) if name.startswith("hiera") else {}
    r = export.run(str(folder), str(tmp_path / "m.onnx"), batch=2, dynamic_batch=True, **size)
    assert r["checked_batch"] == 4 and r["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = export.example_input(model, 1, **size)
    out = sess.run(None, {"pixels": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-4)


@pytest.mark.parametrize("name", ["hiera_tiny_224", "t2t_vit_t_mini_32"])
def test_torch_export_fixed_batch(tmp_path, name):
    folder, model = toy_folder(tmp_path, name)
    size = dict(img_size=64) if name.startswith("hiera") else {}
    r = export.run(str(folder), str(tmp_path / "m.pt2"), batch=2, **size)
    assert r["max_abs_diff"] <= 1e-4 and r["input_shape"][0] == 2
    before = (tmp_path / "m.pt2").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):  # the library refuses too, not only the CLI
        export.run(str(folder), str(tmp_path / "m.pt2"), batch=2, **size)
    assert (tmp_path / "m.pt2").read_bytes() == before
    program = torch.export.load(str(tmp_path / "m.pt2"))
    x = export.example_input(model, 2, **size)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-4)
    with pytest.raises(AssertionError, match="Guard failed"):  # a fixed batch is fixed
        program.module()(export.example_input(model, 3, **size))


def test_cli_export_and_errors(tmp_path, capsys):
    folder, _ = toy_folder(tmp_path, "vit_mini_patch4_32")
    assert main(["export", str(folder), "--out", str(tmp_path / "v.onnx"), "--dynamic-batch"]) == 0
    out = capsys.readouterr().out
    assert "dynamic batch" in out and "max |diff|" in out and (tmp_path / "v.onnx").exists()
    assert main(["export", str(folder), "--out", str(tmp_path / "v.txt")]) == 1
    assert "use a .onnx (ONNX) or .pt2" in capsys.readouterr().err
    assert main(["export", str(folder), "--out", str(tmp_path / "w.onnx"), "--img-size", "30"]) == 1
    assert "multiple of the patch size" in capsys.readouterr().err and not (tmp_path / "w.onnx").exists()
    assert json.loads((folder / "config.json").read_text())["model_name"] == "vit_mini_patch4_32"


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_runs_an_exported_file_copied_alone_with_only_its_metadata(tmp_path, capsys):
    from conftest import draw_images
    from hieralab.config import FinetuneConfig, load_config
    from hieralab.data.images import load_image
    from hieralab.data.transforms import eval_transform
    from hieralab.engine.artifacts import load_classifier
    from hieralab.tasks import finetune

    images = draw_images(tmp_path / "images", n=16)  # 40 x 36 px: the resize and the crop both act
    run = tmp_path / "ft"
    finetune.run(load_config(FinetuneConfig, None, [
        "model=hiera_mini_32", "model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]",
        f"data.source={images}", "data.num_workers=0", "optim.batch_size=4", "max_steps=2", f"out_dir={run}"]))
    out = tmp_path / "export" / "clf.onnx"
    for again in ([], ["--overwrite"]):  # a re-export replaces the file and leaves nothing else behind
        assert main(["export", str(run), "--out", str(out), *again]) == 0
        assert sorted(p.name for p in out.parent.iterdir()) == ["clf.onnx"]
    before = out.read_bytes()
    assert main(["export", str(run), "--out", str(out)]) == 1  # not without --overwrite
    assert out.read_bytes() == before
    alone = tmp_path / "elsewhere" / "clf.onnx"
    alone.parent.mkdir()
    shutil.copyfile(out, alone)
    block = README.read_text().split("<!-- onnx-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    image = images / "boxes" / "000.png"
    code = (block.replace("runs/finetune/best/classifier.json", str(run / "best" / "classifier.json"))
            .replace("shoe.png", str(image)).replace('"clf.onnx"', f'"{alone}"'))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, meta = load_classifier(run)
    x = eval_transform(meta["img_size"], meta["mean"], meta["std"], channels=model.in_chans)(load_image(image))
    with torch.no_grad():
        expected = model(x[None])[0]
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), expected, atol=1e-4, rtol=0)
    assert "boxes" in capsys.readouterr().out
