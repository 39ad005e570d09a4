import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated")

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


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
