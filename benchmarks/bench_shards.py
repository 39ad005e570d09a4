"""Loading speed of an image folder against the same images as WebDataset tar shards, through the training
pipeline the trainer runs (``epoch_batches``: decode, RandomResizedCrop to 224, flip, normalise, an MAE mask, batches
of 32), with 0 and 2 loader workers, the two sources interleaved per setting.

The images: ``--count`` JPEGs of about ImageNet's size (random crops of ../shared/media/dog.jpg resized to 350-500
px, quality 90; drawn shapes when the photo is absent), written to a scratch folder, then sharded with
``hieralab shards`` (``--shard-size`` per shard). Usage (about 3 minutes on an idle 2-core machine):

    .venv/bin/python benchmarks/bench_shards.py [--count 1500] [--shard-size 100] [--seconds 15] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from hieralab import bench as B
from hieralab.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageFiles
from hieralab.data.pipeline import SeededSamples, collate, epoch_batches
from hieralab.data.shards import ShardSet, shard_source
from hieralab.data.transforms import mae_train_transform

warnings.filterwarnings("ignore")
PHOTO = Path(__file__).resolve().parents[2] / "shared" / "media" / "dog.jpg"


def write_images(root: Path, count: int) -> Path:
    g = torch.Generator().manual_seed(0)
    photo = Image.open(PHOTO).convert("RGB") if PHOTO.exists() else None
    for i in range(count):
        w, h = (int(v) for v in torch.randint(350, 500, (2,), generator=g))
        if photo is not None:
            x0, y0 = (int(v) for v in torch.randint(0, photo.width // 4, (2,), generator=g))
            img = photo.crop((x0, y0, x0 + photo.width * 3 // 4, y0 + photo.height * 3 // 4)).resize((w, h))
        else:
            img = Image.new("RGB", (w, h), tuple(torch.randint(0, 255, (3,), generator=g).tolist()))
            ImageDraw.Draw(img).ellipse([w // 4, h // 4, w // 2, h // 2], fill=(255, 255, 255))
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def samples_per_second(dataset, workers: int, seconds: float, batch: int = 32) -> float:
    samples = SeededSamples(dataset, mae_train_transform(224, IMAGENET_MEAN, IMAGENET_STD), seed=0, num_units=49,
                            mask_ratio=0.6, shuffle_buffer=500)
    per_epoch = len(dataset) // batch
    done, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        loader = epoch_batches(samples, epoch=epoch, seed=0, rank=0, world=1, batch_size=batch, start=0,
                               stop=per_epoch, num_workers=workers, collate=collate)
        for b in loader:
            done += b["size"]
            if time.perf_counter() - start > seconds:
                break
        epoch += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_images(Path(tmp) / "images", args.count)
        size = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / args.count / 1024
        index = shard_source(str(folder), Path(tmp) / "shards", shard_size=args.shard_size)
        sources = {"folder": ImageFiles(folder), "shards": ShardSet(index["pattern"])}
        rows = []
        for workers in (0, 2):
            rates = {name: samples_per_second(ds, workers, args.seconds) for name, ds in sources.items()}
            for name, rate in rates.items():
                rows.append([f"{name}, {workers} workers", f"{rate:.1f}", f"{1000 / rate:.1f}",
                             f"{rate / rates['folder']:.2f}"])
                print(rows[-1], flush=True)
    table = B.markdown_table(["source", "images / s", "ms / image", "vs folder"], rows)
    text = (f"{args.count} JPEGs of {size:.0f} KiB on average ({len(index['shards'])} shards of {args.shard_size}); "
            "MAE pipeline at 224 px, batches of 32.\n\n" + table + "\n")
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
