"""Every peer side by side, in one process: hieralab's Hiera-T/B, ViT-B/16 and T2T-ViT-14 against the official
hiera-transformer, timm's Hiera and ViT-B/16, and timm's MViTv2-T/B and Swin-T. fp32, this CPU.

Three sections, each timed in interleaved rounds (the order rotates every round, so machine noise hits every
contender alike; ratios are medians of per-round ratios):
- inference at each ``--batches`` (ours eager, and ours with ``optimize_for_inference``: prepacked oneDNN weights),
- a supervised training step (forward, cross-entropy, backward, fused AdamW) at ``--train-batch``,
- the MAE-Hiera-B pretraining step at ``--train-batch`` and mask 0.6, ours and official, plus our encoder alone
  (forward + backward) at mask 0.6 and at mask 0 (the sparse / dense ratio).
For each: ms, images/s, GFLOPs per image (counted with torch's FlopCounterMode, 2 per multiply-add), achieved GFLOP/s
as a share of this machine's measured fp32 matmul peak, and the peak resident memory a call adds (measured after
the timings, one contender at a time; the process re-executes itself with a fixed glibc mmap threshold so that
RSS follows live tensors). Writes ``<out>.md`` (tables and the issue's targets, met or not), ``<out>.json`` and
``<out>.png``. Usage (about 15 minutes on an idle 2-core machine):

    .venv/bin/python benchmarks/bench_peers.py [--rounds 3] [--batches 1 8] [--train-batch 8] [--out docs/bench_peers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import hieralab
from hieralab import bench as B
from hieralab.mae.masking import random_visible

warnings.filterwarnings("ignore")
MASK_RATIO = 0.6
# architecture -> (our registry name or None, timm name or None, official hiera-transformer name or None)
ARCHS = {
    "Hiera-T": ("hiera_tiny_224", "hiera_tiny_224", "hiera_tiny_224"),
    "Hiera-B": ("hiera_base_224", "hiera_base_224", "hiera_base_224"),
    "ViT-B/16": ("vit_base_patch16_224", "vit_base_patch16_224", None),
    "T2T-ViT-14": ("t2t_vit_14", None, None),
    "MViTv2-T": (None, "mvitv2_tiny", None),
    "MViTv2-B": (None, "mvitv2_base", None),
    "Swin-T": (None, "swin_tiny_patch4_window7_224", None),
}


@dataclass
class Row:
    section: str  # "inference", "train step", "MAE step"
    arch: str
    impl: str  # "ours", "ours (packed)", "official", "timm", ...
    batch: int
    times: list[float] = field(default_factory=list)  # seconds per call, one per round
    gflops: float = 0.0  # per image, for this call (forward; or forward + backward for steps)
    peak_mib: float | None = None

    @property
    def sec(self) -> float:
        return statistics.median(self.times)

    def record(self, peak: float) -> dict:
        return {**asdict(self), "ms": self.sec * 1e3, "images_per_s": self.batch / self.sec,
                "gflop_per_s": self.gflops * self.batch / self.sec,
                "share_of_matmul_peak": self.gflops * self.batch / self.sec / peak}


# ---------------------------------------------------------------- contenders
def build_models(archs: list[str]) -> dict[tuple[str, str], nn.Module]:
    """``(arch, impl) -> model`` in eval mode; each arch's peers carry the same random weights where the
    implementations share a layout (ours loads the official / timm state dict), logits everywhere."""
    import hiera
    import timm
    from timm.models.hiera import checkpoint_filter_fn

    torch.manual_seed(0)
    models: dict[tuple[str, str], nn.Module] = {}
    for arch in archs:
        ours_name, timm_name, official_name = ARCHS[arch]
        if official_name:
            official = B.logits_only(getattr(hiera, official_name)())
            models[arch, "official"] = official
        if timm_name:
            peer = timm.create_model(timm_name, pretrained=False)
            if official_name:
                peer.load_state_dict(checkpoint_filter_fn(models[arch, "official"].state_dict(), peer))
            models[arch, "timm"] = peer
        if ours_name:
            ours = hieralab.create_model(ours_name)
            source = models.get((arch, "official"), models.get((arch, "timm")))
            if source is not None:
                hieralab.load_checkpoint(ours, source.state_dict())
            models[arch, "ours"] = ours
    return {k: m.eval() for k, m in models.items()}


def count_gflops(call: Callable[[], object], images: int) -> float:
    """GFLOPs per image of one ``call`` (a forward, or a whole step), with attention on SDPA's math path: the CPU
    flash kernels have no FLOP formula, so counted through them attention would be left out (4 % of ViT-B/16)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / images / 1e9


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """One supervised step (cross-entropy, backward, fused AdamW)."""
    model.train()
    return B.adamw_step(model, lambda: nn.functional.cross_entropy(model(x), y))


def mae_steps(batch: int) -> dict[str, Callable[[], float]]:
    """The MAE-Hiera-B step, official and ours (same weights, input and mask), and our encoder's forward + backward
    alone at mask 0.6 and with every unit visible."""
    import hiera

    torch.manual_seed(0)
    official = hiera.mae_hiera_base_224()
    ours = hieralab.create_model("mae_hiera_base_224")
    hieralab.load_checkpoint(ours, official.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    visible = random_visible(batch, 49, MASK_RATIO, generator=gen)
    dense = torch.ones_like(visible)
    with torch.no_grad():
        a, b = official(x, mask=visible)[0].item(), ours(x, visible).loss.item()
    assert abs(a - b) < 1e-4 * abs(a), f"MAE losses differ: official {a}, ours {b}"

    return {
        "official": B.adamw_step(official, lambda: official(x, mask=visible)[0]),
        "ours": B.adamw_step(ours, lambda: ours(x, visible).loss),
        "ours encoder, mask 0.6": B.adamw_step(ours, lambda: ours.forward_encoder(x, visible).square().mean()),
        "ours encoder, mask 0": B.adamw_step(ours, lambda: ours.forward_encoder(x, dense).square().mean()),
    }


# ---------------------------------------------------------------- sections
def time_section(rows: dict[str, Row], fns: dict[str, Callable], rounds: int, grad: bool) -> None:
    times = B.paired_timings(fns, rounds=rounds, grad=grad)
    for key, t in times.items():
        rows[key].times = t


def measure_memory(rows: dict[str, Row], fns: dict[str, Callable], grad: bool) -> None:
    for key, fn in fns.items():
        with torch.enable_grad() if grad else torch.inference_mode():
            base, peak = B.peak_rss_kib(fn)
        rows[key].peak_mib = None if peak is None else (peak - base) / 1024


def ratio(rows: dict[str, Row], fast: str, slow: str) -> float:
    return B.paired_ratio(rows[slow].times, rows[fast].times)


# ---------------------------------------------------------------- report
def tables(rows: list[Row], peak: float) -> str:
    out = []
    for section in dict.fromkeys(r.section for r in rows):
        for batch in dict.fromkeys(r.batch for r in rows if r.section == section):
            group = [r for r in rows if r.section == section and r.batch == batch]
            out.append(f"### {section}, batch {batch}\n")
            header = ["model", "impl", "ms", "images/s", "GFLOPs / image", "GFLOP/s", "% of matmul peak",
                      "peak MiB", "ours is faster by"]
            lines = []
            for r in group:
                peers = [p for p in group if p.arch == r.arch and not p.impl.startswith("ours")]
                same_job = r.impl in ("ours", "ours (packed)")  # the encoder-only MAE rows have no peer
                faster = ", ".join(f"{B.paired_ratio(p.times, r.times):.2f}x vs {p.impl}" for p in peers) * same_job
                lines.append([r.arch, r.impl, f"{r.sec * 1e3:.0f}", f"{r.batch / r.sec:.2f}", f"{r.gflops:.2f}",
                              f"{r.gflops * r.batch / r.sec:.1f}", f"{100 * r.gflops * r.batch / r.sec / peak:.0f}%",
                              "-" if r.peak_mib is None else f"{r.peak_mib:.0f}",
                              faster if r.impl.startswith("ours") else ""])
            out.append(B.markdown_table(header, lines) + "\n")
    return "\n".join(out)


def targets(rows: dict[str, Row], peak: float, batch: int, train_batch: int) -> list[tuple[str, str, str, bool]]:
    """The issue's CPU targets: (what, target, measured, met)."""
    def key(section: str, arch: str, impl: str, b: int) -> str:
        return f"{section}|{arch}|{impl}|{b}"

    out = []
    inf = lambda arch, impl: key("inference", arch, impl, batch)  # noqa: E731
    best = min(("ours", "ours (packed)"), key=lambda i: rows[inf("Hiera-B", i)].sec)
    if inf("Hiera-B", "official") in rows:
        r = ratio(rows, inf("Hiera-B", best), inf("Hiera-B", "official"))
        out.append((f"Hiera-B inference vs official (batch {batch}, {best})", ">= 1.3x", f"{r:.2f}x", r >= 1.3))
    if inf("ViT-B/16", "timm") in rows:
        r = ratio(rows, inf("Hiera-B", best), inf("ViT-B/16", "timm"))
        out.append((f"Hiera-B inference vs timm ViT-B/16 (batch {batch}, {best})", ">= 1.9x", f"{r:.2f}x", r >= 1.9))
    h = rows[inf("Hiera-B", best)]
    share = h.gflops * h.batch / h.sec / peak
    out.append((f"Hiera-B inference, share of the matmul peak ({best})", ">= 85%", f"{100 * share:.0f}%",
                share >= 0.85))
    mae = lambda impl: key("MAE step", "MAE-Hiera-B", impl, train_batch)  # noqa: E731
    if mae("ours") in rows:
        r = ratio(rows, mae("ours"), mae("official"))
        out.append(("MAE-Hiera-B step vs official", ">= 1.5x", f"{r:.2f}x", r >= 1.5))
        po, pb = rows[mae("ours")].peak_mib, rows[mae("official")].peak_mib
        if po and pb:
            out.append(("MAE-Hiera-B step peak memory vs official", "<= 0.7x", f"{po / pb:.2f}x", po / pb <= 0.7))
        r = ratio(rows, mae("ours encoder, mask 0.6"), mae("ours encoder, mask 0"))
        out.append(("encoder forward + backward, mask 0.6 vs mask 0", ">= 2.6x", f"{r:.2f}x", r >= 2.6))
        m = rows[mae("ours")]
        step_rate = m.gflops * m.batch / m.sec
        inf_rate = rows[inf("Hiera-B", "ours")].gflops * batch / rows[inf("Hiera-B", "ours")].sec
        out.append(("MAE step GFLOP/s vs our Hiera-B inference forward", ">= 80%", f"{100 * step_rate / inf_rate:.0f}%",
                    step_rate >= 0.8 * inf_rate))
    return out


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hieralab.viz.figures import save_figure

    sections = [(s, b) for s, b in dict.fromkeys((r.section, r.batch) for r in rows) if not (s == "inference" and b == 1)]
    fig, axes = plt.subplots(1, len(sections), figsize=(5.2 * len(sections), 5), dpi=110, squeeze=False)
    colors = {"ours": "tab:blue", "ours (packed)": "tab:cyan", "official": "tab:red", "timm": "tab:orange"}
    for ax, (section, batch) in zip(axes[0], sections):
        group = [r for r in rows if r.section == section and r.batch == batch]
        ax.barh(range(len(group)), [r.batch / r.sec for r in group],
                color=[colors.get(r.impl, "tab:green") for r in group])
        ax.set_yticks(range(len(group)), [f"{r.arch} {r.impl}" for r in group], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("images / s (higher is better)")
        ax.set_title(f"{section}, batch {batch}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import hiera  # noqa: F401
    import timm
    from importlib.metadata import version

    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}, "
            f"hiera-transformer {version('hiera-transformer')}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--out", default="docs/bench_peers", help="writes OUT.md, OUT.json and OUT.png")
    parser.add_argument("--report", action="store_true", help="only rewrite OUT.md and OUT.png from OUT.json")
    args = parser.parse_args()
    if args.report:
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        names = {f.name for f in fields(Row)}
        rows = {f"{r['section']}|{r['arch']}|{r['impl']}|{r['batch']}": Row(**{k: v for k, v in r.items() if k in names})
                for r in data["rows"]}
        write_report(rows, data["matmul_peak_gflop_per_s"], data["machine"], data["command"], data["rounds"],
                     data.get("seconds", 0), Path(args.out), max(r.batch for r in rows.values()
                                                                  if r.section == "inference"),
                     next((r.batch for r in rows.values() if r.section != "inference"), 0))
        return
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow live tensors: re-run with that set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    t0 = time.perf_counter()
    peak = B.matmul_peak_gflops()
    about = machine()
    print(f"{about}; matmul peak {peak:.0f} GFLOP/s", flush=True)
    models = build_models(args.archs)
    rows: dict[str, Row] = {}

    def add(section: str, arch: str, impl: str, batch: int, gflops: float) -> str:
        k = f"{section}|{arch}|{impl}|{batch}"
        rows[k] = Row(section, arch, impl, batch, gflops=gflops)
        return k

    x1 = torch.randn(1, 3, 224, 224)
    flops: dict[str, float] = {}  # GFLOPs per image of each architecture (one implementation counted)
    for (arch, _), m in models.items():
        if arch not in flops:
            with torch.no_grad():
                flops[arch] = count_gflops(lambda m=m: m(x1), 1)
    packed = {arch: hieralab.optimize_for_inference(m) for (arch, impl), m in models.items() if impl == "ours"}
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224)
        fns = {}
        for (arch, impl), m in models.items():
            fns[add("inference", arch, impl, batch, flops[arch])] = lambda m=m: m(x)
            if impl == "ours":
                fns[add("inference", arch, "ours (packed)", batch, flops[arch])] = lambda m=packed[arch]: m(x)
        time_section(rows, fns, args.rounds, grad=False)
        measure_memory(rows, fns, grad=False)
        print(f"inference batch {batch} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    del packed

    if not args.no_train:
        b = args.train_batch
        x, y = torch.randn(b, 3, 224, 224), torch.randint(0, 1000, (b,))
        fns = {}
        for (arch, impl), m in models.items():
            step = train_step(m, x, y)
            step()  # warm-up: optimizer state
            fns[add("train step", arch, impl, b, count_gflops(step, b))] = step
        time_section(rows, fns, args.rounds, grad=True)
        measure_memory(rows, fns, grad=True)
        print(f"train step done ({time.perf_counter() - t0:.0f} s)", flush=True)
        del fns, models
        steps = mae_steps(b)
        fns = {add("MAE step", "MAE-Hiera-B", impl, b, count_gflops(step, b)): step for impl, step in steps.items()}
        time_section(rows, fns, args.rounds, grad=True)
        measure_memory(rows, fns, grad=True)
        print(f"MAE step done ({time.perf_counter() - t0:.0f} s)", flush=True)

    command = "benchmarks/bench_peers.py " + " ".join(sys.argv[1:])
    write_report(rows, peak, about, command.strip(), args.rounds, time.perf_counter() - t0, Path(args.out),
                 max(args.batches), args.train_batch)


def write_report(rows: dict[str, Row], peak: float, about: str, command: str, rounds: int, seconds: float, out: Path,
                 batch: int, train_batch: int) -> None:
    """``out``.md (targets and tables), .json (every row with its per-round times) and .png."""
    met = targets(rows, peak, batch, train_batch)
    ordered = list(rows.values())
    md = (f"# Every peer side by side (CPU, fp32)\n\nCommand: `.venv/bin/python {command}` "
          f"({seconds:.0f} s). {about}; measured fp32 matmul peak {peak:.0f} GFLOP/s. Median of "
          f"{rounds} interleaved rounds after one warm-up; ratios are medians of per-round ratios (> 1: ours is "
          "faster). GFLOPs are counted (2 per multiply-add; steps: forward + backward); peak MiB is what a call adds "
          "to the resident set.\n\n## Targets (issue 7)\n\n"
          + B.markdown_table(["target", "wanted", "measured", "met"],
                             [[w, t, m, "yes" if ok else "**no**"] for w, t, m, ok in met])
          + "\n\n## Measurements\n\n" + tables(ordered, peak))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": about, "matmul_peak_gflop_per_s": peak, "rounds": rounds, "command": command,
         "seconds": round(seconds), "rows": [r.record(peak) for r in ordered],
         "targets": [dict(zip(("target", "wanted", "measured", "met"), t)) for t in met]}, indent=2) + "\n")
    plot(ordered, out.with_suffix(".png"), about)
    print(md)

if __name__ == "__main__":
    main()
