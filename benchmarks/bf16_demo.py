"""The demo's MAE pretraining in fp32 and in bf16, side by side: does ``precision=bf16`` learn the same?

Runs ``hieralab pretrain --preset mae_hiera_fmnist`` (the demo: 469 steps of 64 Fashion-MNIST images, the same seed,
data order and masks) once with ``precision=fp32`` and once with ``precision=bf16``, one after the other, and draws
both loss curves (each logged step faint, the running mean solid) with the k-NN probe's top-1 under them::

    python benchmarks/bf16_demo.py --out docs/bf16_demo

writes ``docs/bf16_demo.png`` and ``docs/bf16_demo.md`` (the table: final loss, its running mean, the probes' top-1,
seconds). On a CPU without native bf16 the bf16 run keeps fp32 and says so (the table then says so too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hieralab import files
from hieralab.files import read_csv
from hieralab.viz.figures import save_figure, smooth

PRECISIONS = ("fp32", "bf16")
PICTURE = ("Top: each logged loss faint (every 5 steps), solid their running mean as the training curves draw it "
           "(`viz.figures.smooth`); the legend's figure is the run's own running mean (`summary.json`). Bottom: the "
           "online k-NN probe's top-1 on 500 test images (5 probes).")


def run(precision: str, out: Path, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "hieralab", "pretrain", "--preset", "mae_hiera_fmnist", f"precision={precision}",
            "log_every=5", f"out_dir={out}", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = read_csv(out / "log.csv")[1]
    history = json.loads((out / "run.json").read_text()).get("history", [])
    computed = [e["precision"] for e in history if "precision" in e][-1:] or ["?"]
    return {"precision": precision, "computed": computed[0], "summary": summary,
            "steps": [int(r["step"]) for r in rows if r.get("loss")], "loss": [float(r["loss"]) for r in rows
                                                                                if r.get("loss")],
            "probe": [(int(r["step"]), float(r["knn_top1"])) for r in rows if r.get("knn_top1")]}


def plot(results: list[dict], path: Path, title: str) -> None:
    has_probe = any(r["probe"] for r in results)
    fig, axes = plt.subplots(2 if has_probe else 1, 1, figsize=(7, 6 if has_probe else 4), dpi=120, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3]} if has_probe else None, sharex=True)
    ax = axes[0, 0]
    for r, colour in zip(results, ("tab:blue", "tab:red")):
        ax.plot(r["steps"], r["loss"], color=colour, alpha=0.25, lw=0.8)
        ax.plot(r["steps"], smooth(r["loss"]), color=colour, lw=1.8,
                label=f"{r['precision']} (computed in {r['computed']}): final running mean "
                      f"{r['summary']['loss_running_mean']:.4f}")
    ax.set_ylabel("MAE loss (pixels, 60 % of the units hidden)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_probe:
        bx = axes[1, 0]
        for r, colour in zip(results, ("tab:blue", "tab:red")):
            if r["probe"]:
                bx.plot(*zip(*r["probe"]), marker="o", color=colour, label=r["precision"])
        bx.set_ylabel("k-NN top-1 (%)")
        bx.grid(alpha=0.3)
        bx.legend(fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step (64 images)")
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/bf16_demo", help="writes OUT.png and OUT.md")
    p.add_argument("overrides", nargs="*", help="key=value for both runs (e.g. max_steps=50 for a quick look)")
    args = p.parse_args()
    import torch

    from hieralab.bench import matmul_peak_gflops
    from hieralab.engine.precision import cpu_has_native_bf16

    rates = (matmul_peak_gflops(), matmul_peak_gflops(dtype=torch.bfloat16))
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(precision, Path(tmp) / precision, args.overrides) for precision in PRECISIONS]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {'native' if cpu_has_native_bf16() else 'no native'} "
               f"bf16; matmul fp32 {rates[0]:.0f} / bf16 {rates[1]:.0f} GFLOP/s; load {os.getloadavg()[0]:.1f} at "
               "the end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"), "The demo's MAE (mae_hiera_mini_32 on Fashion-MNIST), same seed, data and "
         "masks:\nfp32 against precision=bf16")
    lines = ["| precision | computed in | steps | final loss | running mean | k-NN top-1 by probe (%) | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        probes = " -> ".join(f"{t:.1f}" for _, t in r["probe"]) or "-"
        lines.append(f"| {r['precision']} | {r['computed']} | {s['steps']} | {s['final_loss']:.4f} | "
                     f"{s['loss_running_mean']:.4f} | {probes} | {s['seconds']:.0f} |")
    text = (f"# The demo's MAE in fp32 and in bf16\n\n`python benchmarks/bf16_demo.py --out {args.out}"
            f"{' ' + ' '.join(args.overrides) if args.overrides else ''}` ({machine})\n\n"
            + "\n".join(lines) + f"\n\n![loss curves]({out.with_suffix('.png').name})\n\n{PICTURE}\n")
    files.write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
