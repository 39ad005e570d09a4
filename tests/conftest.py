import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated")

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
# Nothing in the tests reaches outside this machine: downloads by name use the cache only unless a test (the
# loopback server of test_weights.py) turns them back on.
os.environ.setdefault("HIERALAB_OFFLINE", "1")  # (not HF_HUB_OFFLINE: huggingface_hub reads it once, at import)


def pytest_sessionstart(session):
    """In CI the bundled data must be there: the tests that read it skip only outside CI (a developer without
    `make data`), so that CI cannot go green with them skipped."""
    from hieralab.data.fashion_mnist import ROOT

    if os.environ.get("CI") and not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.exit(f"CI: Fashion-MNIST is not installed at {ROOT} (make data failed); the end-to-end tests need it",
                    returncode=1)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh random values everywhere (weights ~0.02 as in training, norm gains near 1) and a head of order one, so a
    parity test compares logits of order 1 rather than the near-zero ones of the official 1e-3 head init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.startswith(("head.", "classifier", "head_")):
                p.copy_(0.05 * noise)
            else:
                p.copy_(0.02 * noise)
    return model


def draw_images(root: Path, n: int = 40) -> Path:
    """``n`` drawn images (a box or a circle on a coloured ground) in two class folders."""
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        cls = root / ("circles" if i % 2 else "boxes")
        cls.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (40, 36), tuple(torch.randint(0, 255, (3,), generator=g).tolist()))
        x0, y0 = torch.randint(0, 16, (2,), generator=g).tolist()
        shape = ImageDraw.Draw(img).ellipse if i % 2 else ImageDraw.Draw(img).rectangle
        shape([x0, y0, x0 + 18, y0 + 16], fill=(255, 255, 255))
        img.save(cls / f"{i:03d}.png")
    return root


@pytest.fixture
def official_on_meta(monkeypatch):
    """Lets the official constructors run under ``torch.device("meta")``: they call ``.item()`` on a linspace."""
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A tiny MAE-Hiera (16-d, one block a stage) on the demo's preset: a run takes about a second.
MAE_TINY = ["model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]",
            "model_args.decoder_embed_dim=32", "model_args.decoder_depth=1", "model_args.decoder_num_heads=2"]
VIDEO_MAE_TINY = ["model=mae_hiera_mini_8x32", "model_args.in_chans=3", *MAE_TINY]  # a video MAE of that size
PRESET = "mae_hiera_fmnist"  # what the CLI uses by default, so library and CLI runs are the same runs


def tiny_mae(in_chans: int = 3) -> torch.nn.Module:
    """The model of :data:`MAE_TINY` runs on RGB images."""
    import hieralab

    return hieralab.create_model("mae_hiera_mini_32", embed_dim=16, num_heads=1, stages=[1, 1, 1],
                                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, in_chans=in_chans)


def pretrain_args(out: Path, images: Path, *extra: str) -> list[str]:
    """Overrides of a tiny pretraining run on ``images`` into ``out`` (2 epochs, a log row every step)."""
    return [f"data.source={images}", "data.num_workers=0", "optim.batch_size=8", f"out_dir={out}", "log_every=1",
            "optim.base_lr=1e-2", "optim.warmup_epochs=0.4", "recon_images=2", "epochs=2", *MAE_TINY, *extra]


def run_pretrain(overrides: list[str], resume: bool = False, **options) -> dict:
    from hieralab.config import PretrainConfig, load_config
    from hieralab.tasks import pretrain

    return pretrain.run(load_config(PretrainConfig, PRESET, overrides), resume=resume, **options)


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (log lines and progress bars aside); a traceback would show up as extra lines."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("hieralab ")]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` rows of a run's log (complete lines only: the run may be writing it)."""
    from hieralab.files import read_csv

    return [(int(r["step"]), float(r["loss"])) for r in read_csv(run_dir / "log.csv")[1]]


def write_clip(path: Path, frames: int = 24, size: tuple[int, int] = (40, 48), phase: int = 0) -> Path:
    """A clip whose frame i has brightness 8 * i (so a decoded frame tells its index) and a bar that moves."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(frames):
            img = torch.full((*size, 3), 8 * i + 20, dtype=torch.uint8)
            x = (4 * i + phase) % (size[1] - 6)
            img[:, x:x + 6] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img.numpy(), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
