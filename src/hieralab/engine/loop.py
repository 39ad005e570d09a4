"""The training loop shared by ``pretrain`` and ``finetune``: seeded batches, gradient accumulation, warmup + cosine,
NaN stop, atomic checkpoints, logs and a progress bar. A task supplies the model, the samples and ``forward(batch,
step, k) -> loss``; the loop owns everything that makes a run resumable bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.pipeline import EpochSampler, collate
from . import checkpoints, distributed
from .run_log import RunLog
from .schedule import warmup_cosine


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stopped before the bad step touched the weights."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA where asked (or ``auto``); fp32 on CPU, where bf16 matmuls are slower on this class of
    machine (no AMX) and the resume test needs bit-exact fp32."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Run:
    """Where a run lives and what it runs on."""

    device: torch.device
    dist: distributed.Dist
    dir: Path
    last: Path | None  # the newest complete checkpoint, if any


def start_run(device: str, out_dir: str, resume: bool) -> Run:
    """Pick the device (one GPU per process under torchrun), join the process group and check ``out_dir``: a folder
    that already holds checkpoints is only continued with ``resume``."""
    dev = pick_device(device)
    dist = distributed.init(dev.type)
    if dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    run_dir = Path(out_dir)
    last = checkpoints.latest(run_dir / "checkpoints")
    if last is not None and not resume:
        raise ValueError(f"{run_dir} already holds checkpoints (newest {last.name}); pass --resume to continue it, "
                         "or set out_dir to a new folder")
    return Run(dev, dist, run_dir, last)


def prepare(run: Run, model: nn.Module, config: dict[str, Any], *, compile: bool) -> nn.Module:
    """Write the resolved ``config.yaml`` (main process) and return the module to train: DDP across processes,
    ``torch.compile`` if asked."""
    import yaml

    from ..models.checkpoint import atomic_write

    if run.dist.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write(run.dir / "config.yaml", lambda p: Path(p).write_text(text))
    train_model: nn.Module = model
    if run.dist.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(train_model) if compile else train_model


def micro_batches(loader, accum: int, count: int) -> Iterator[list[dict[str, Any]]]:
    """Group the loader's batches into ``count`` optimizer steps of ``accum`` micro-batches each."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []
            count -= 1
            if count == 0:
                return


@dataclass
class Schedule:
    """How long a run is and how its learning rate moves: all a function of the optimizer step."""

    per_epoch: int  # optimizer steps per epoch
    total: int  # steps the cosine spans
    stop: int  # steps actually run (<= total with max_steps)
    lr: float  # peak learning rate (already scaled by the batch)
    warmup: int
    min_lr: float = 0.0

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, lr=self.lr, total_steps=self.total, warmup_steps=self.warmup, min_lr=self.min_lr)


@dataclass
class LoopResult:
    step: int
    loss: float
    seconds: float
    images_per_s: float
    skipped: int


def train(
    *,
    name: str,
    model: nn.Module,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    samples: torch.utils.data.Dataset,
    forward: Callable[[dict[str, Any], int, int], torch.Tensor],
    schedule: Schedule,
    dist: distributed.Dist,
    device: torch.device,
    amp: str,
    seed: int,
    batch_size: int,
    accum_steps: int,
    num_workers: int,
    clip_grad: float | None,
    run_dir: Path,
    ckpt_every: int,
    keep_last: int,
    log_every: int,
    start_step: int = 0,
    start_loss: float = float("nan"),
    ckpt_module: nn.Module | None = None,
    after_step: Callable[[int], dict[str, Any]] | None = None,
    ckpt_state: Callable[[], dict[str, Any]] | None = None,
) -> LoopResult:
    """Run optimizer steps ``start_step .. schedule.stop``.

    ``forward(batch, step, k)`` returns the loss of micro-batch ``k`` of ``step`` (the global RNG is already seeded
    by ``(seed, step, k, rank)`` for drop path and the like). ``after_step(step)`` runs after each optimizer step
    (EMA, evaluation) and returns extra fields for the log; ``ckpt_state()`` adds fields to each checkpoint's
    ``state.json``; ``ckpt_module`` (default ``model``) is what the checkpoints hold.
    """
    ckpt_dir = run_dir / "checkpoints"
    run_log = RunLog(run_dir, resume_step=start_step) if dist.is_main else None
    step, loss_value = start_step, start_loss
    bar = tqdm(total=schedule.stop, initial=step, desc=name, unit="step", disable=not dist.is_main,
               dynamic_ncols=True)
    model.train()
    start_time, skipped_total = time.perf_counter(), 0
    try:
        while step < schedule.stop:
            epoch, in_epoch = divmod(step, schedule.per_epoch)
            sampler = EpochSampler(len(samples), epoch=epoch, seed=seed, rank=dist.rank, world=dist.world,
                                   start=in_epoch * accum_steps * batch_size)
            loader = torch.utils.data.DataLoader(samples, batch_size, sampler=sampler, collate_fn=collate,
                                                 num_workers=num_workers, drop_last=True)
            count = min(schedule.per_epoch - in_epoch, schedule.stop - step)
            for group in micro_batches(loader, accum_steps, count):
                t0 = time.perf_counter()
                for g in optimizer.param_groups:
                    g["lr"] = schedule.lr_at(step) * g.get("lr_scale", 1.0)
                optimizer.zero_grad(set_to_none=True)
                losses, images, skipped = [], 0, 0
                group_size = max(1, sum(b["size"] for b in group))  # micro-batches weigh by their image count
                for k, batch in enumerate(group):
                    skipped += batch["skipped"]
                    if batch["size"] == 0:
                        continue
                    torch.manual_seed(hash((seed, step, k, dist.rank)) & 0x7FFF_FFFF)  # drop path etc., per step
                    sync = k == len(group) - 1 or dist.world == 1
                    with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast(device, amp):
                        loss = forward(batch, step, k)
                        finite = distributed.all_mean(torch.isfinite(loss.detach()).float())
                        if finite.item() < 1:
                            raise NonFiniteLossError(f"loss is {loss.item()} at step {step}")
                        (loss * (batch["size"] / group_size)).backward()
                    losses.append(loss.detach() * (batch["size"] * len(group) / group_size))
                    images += batch["size"]
                if clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
                step += 1
                skipped_total += skipped
                loss_value = distributed.all_mean(torch.stack(losses).mean()).item() if losses else float("nan")
                extra = after_step(step) if after_step else {}
                speed = images * dist.world / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{schedule.lr_at(step - 1):.2e}", img_s=f"{speed:.0f}",
                                **{k: f"{v:.4g}" for k, v in extra.items() if isinstance(v, float)})
                if run_log and (step % log_every == 0 or step == schedule.stop or extra):
                    run_log.write({"step": step, "epoch": round(step / schedule.per_epoch, 4), "loss": loss_value,
                                   "lr": schedule.lr_at(step - 1), "images_per_s": round(speed, 1),
                                   "skipped": skipped_total, **extra})
                if step % ckpt_every == 0 or step == schedule.stop:
                    if dist.is_main:
                        state = {"epoch": step / schedule.per_epoch, "loss": loss_value,
                                 **(ckpt_state() if ckpt_state else {})}
                        checkpoints.save(ckpt_dir, step, ckpt_module or model, optimizer, state, keep_last)
                    distributed.barrier()
    except NonFiniteLossError as e:
        newest = checkpoints.latest(ckpt_dir)
        raise NonFiniteLossError(f"{e}: stopped; the last good checkpoint is {newest or 'none (none written yet)'}; "
                                 "resume from it with a lower optim.base_lr, or check the data") from None
    finally:
        bar.close()
        if run_log:
            run_log.close()
    seconds = time.perf_counter() - start_time
    done = (step - start_step) * batch_size * accum_steps * dist.world
    return LoopResult(step, loss_value, round(seconds, 1), round(done / max(seconds, 1e-9), 1), skipped_total)
