"""How long the README's long commands take on this machine, for the times the README gives beside them.

Each command is run as the README writes it, twice, cut short at two sizes (``max_steps=`` for a training command,
``--limit`` / ``data.limit=`` for one that reads a dataset once); the difference of the two wall times gives the cost
of one more step (or image) without the start-up, the first compile of kernels and the final scoring, which both
runs pay once. The whole command is then ``t(short) + (full - short) x that cost`` plus, for a command that scores
every epoch, ``(epochs - 1) x`` the scoring time of ``hieralab eval`` on the same split. These are estimates from the
measured parts, and the table says which part each comes from. Run it on a quiet machine::

    python benchmarks/time_commands.py --out docs/command_times.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIERALAB = [sys.executable, "-m", "hieralab"]
ABOUT = """Each command runs as the README writes it (`init=` left out: it changes the weights, not the time; the
pretraining without its k-NN probes, a few seconds each), twice, cut short at two sizes (`max_steps=` for a training
command, `--limit` / `data.limit=` for one that reads a dataset once, which limits each of its two splits). The
difference of the two wall times gives the cost of one more step or image without the start-up and the final
scoring, which both runs pay once; the whole command is the short run plus the remaining steps or images at that
cost, plus `(epochs - 1) x` the time `hieralab eval` takes to score the same split for a command that scores every
epoch. Estimates from measured parts: the table shows each part."""
STEPS = re.compile(r"(\d+) samples, (\d+) steps/epoch, (\d+) steps")

# (README command, what the two short runs add: (size key, short, longer), the full size in steps or images:
# "schedule" (read from the log) or a number, and how many times the full run scores its validation data: None =
# once an epoch)
COMMANDS = [
    ("hieralab finetune model=hiera_mini_32 epochs=5", ("max_steps", 10, 40), "schedule", 5),
    ("hieralab finetune --trainable-blocks 2 model=vit_mini_patch4_32", ("max_steps", 10, 40), "schedule", None),
    ("hieralab pretrain --preset mae_hiera_fmnist epochs=2 optim.batch_size=64 knn_every=0",
     ("max_steps", 10, 40), "schedule", 0),
    ("hieralab action max_steps=200", ("max_steps", 5, 15), 200, 1),
    # a limit of N takes N images of each split (below 10,000: 2N images); the full run reads 60,000 + 10,000
    ("hieralab linprobe model=hiera_mini_32 'lrs=[0.03,0.1,0.3,1]'", ("data.limit", 2000, 6000), 70000, 0),
    ("hieralab extract --model hiera_mini_32 --out feats.safetensors --knn", ("--limit", 2000, 6000), 70000, 0),
]


def run(argv: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{shlex.join(argv)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout + done.stderr


def sized(command: str, key: str, n: int, out: str) -> list[str]:
    argv = shlex.split(command)[1:]
    size = [key, str(n)] if key.startswith("--") else [f"{key}={n}"]
    place = ["--overwrite"] if argv[0] == "extract" else [f"out_dir={out}", "--overwrite"]
    return [*HIERALAB, *argv, *size, *place]


def command_epochs(command: str) -> float:
    """The epochs ``command`` trains for: its config after its preset and overrides."""
    from hieralab.cli import parse
    from hieralab.config import load_config
    from hieralab.tasks import TASKS

    args = parse(shlex.split(command)[1:])
    return load_config(TASKS[args.command].config, args.preset, list(args.overrides), task=args.command).epochs


def measure(command: str, sizes: tuple[str, int, int], full: int | str, scorings: int | None,
            work: Path) -> dict:
    key, small, large = sizes
    t_small, log = run(sized(command, key, small, "runs/t_small"), work)
    t_large, _ = run(sized(command, key, large, "runs/t_large"), work)
    both = key != "max_steps"  # a limit applies to each of the two splits
    small, large = (2 * small, 2 * large) if both else (small, large)
    per = (t_large - t_small) / (large - small)
    if full == "schedule":  # steps a full epoch x the command's epochs (its config, as the command resolves it)
        epochs = command_epochs(command)
        full = round(int(STEPS.search(log).group(2)) * epochs)
        scorings = math.ceil(epochs) if scorings is None else scorings  # one scoring an epoch
    score = 0.0
    if scorings > 1:
        t_eval, _ = run([*HIERALAB, "eval", "runs/t_small"], work)
        score = t_eval
    total = t_small + (full - small) * per + (scorings - 1) * score
    return {"command": command, "small": small, "large": large, "t_small": t_small, "t_large": t_large,
            "per": per, "unit": "step" if key == "max_steps" else "image", "full": full, "scorings": scorings,
            "score": score, "total": total}


def table(rows: list[dict]) -> str:
    lines = ["| command | measured | one more | full size | scorings | estimate |", "|---|---|---|---|---|---|"]
    for r in rows:
        scoring = f"{r['scorings']} x {r['score']:.0f} s" if r["score"] else str(r["scorings"])
        lines.append(f"| `{r['command']}` | {r['small']} {r['unit']}s {r['t_small']:.0f} s, {r['large']} "
                     f"{r['t_large']:.0f} s | {r['per']:.3f} s / {r['unit']} | {r['full']} {r['unit']}s | {scoring} "
                     f"| **{r['total'] / 60:.1f} min** |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="also write the table (Markdown) here")
    p.add_argument("--only", help="only the commands containing this text")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hieralab import files
    from hieralab.bench import matmul_peak_gflops

    peak = matmul_peak_gflops()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()  # the bundled action clips, written once on first use (then reused)
        run([sys.executable, "-c", ("from hieralab.data.fmnist_actions import ensure_actions; "
                                    "ensure_actions('runs/fashion-mnist-actions')")], work)
        clips = time.perf_counter() - t
        for command, sizes, full, scorings in COMMANDS:
            if args.only and args.only not in command:
                continue
            print(f"timing {command} ...", file=sys.stderr, flush=True)
            rows.append(measure(command, sizes, full, scorings, work))
    head = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, fp32 matmul {peak:.0f} GFLOP/s, "
            f"load average {load:.1f} at the start")
    text = (f"{head}\n\n{table(rows)}\n\nWriting the bundled action clips (first use of `hieralab action`): "
            f"{clips:.0f} s.\n")
    print(text)
    if args.out:
        files.write_text(args.out, f"# How long the README's long commands take\n\n`python "
                                   f"benchmarks/time_commands.py --out {args.out}`\n\n{ABOUT}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
