"""The one training engine. A task builds its model, its data and its per-step forward and hands them to the
:class:`Trainer` as a :class:`Job`; the Trainer owns everything else about the run: the folder and its rules
(``run_folder.py``), the device and the processes, the schedule, resume, checkpoints, logs, the divergence guard,
progress, the summary and the curve.

    with Trainer(cfg, task="pretrain", resume=resume) as trainer:
        model = build(cfg).to(trainer.device)
        ...
        return trainer.fit(Job(model=model, optimizer=..., samples=..., forward=..., ...), outputs=write_outputs)

Every random draw is a function of the step (the data's streams, and the global RNGs seeded per micro-batch from
the "drop_path", "mixup" and "python" streams), so on CPU a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ..progress import bar as tqdm

from .. import files, seeds
from ..config import RunConfig, check
from ..data.pipeline import collate, epoch_batches, first_readable
from ..errors import ConfigError, DivergedError, DiskFullError, HieralabError, RunFolderError
from ..viz.figures import plot_curve
from . import checkpoints, distributed, fsdp, precision
from .optim import build_adamw
from .run_folder import RunFolder, Start, check_apart
from .run_log import RunLog
from .schedule import Schedule

log = logging.getLogger(__name__)
NonFiniteLossError = DivergedError  # the name earlier versions raised
SHOW_UNREADABLE = 5  # unreadable files named in the log (all are counted)
SHARDABLE = ("pretrain",)  # tasks that can run under parallel=fsdp (the others evaluate on the main process alone)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lower_lr_hint(key: str, value: float, recipe: float) -> str:
    """The override a divergence message suggests: a tenth of ``value``, and no more than the recipe's default."""
    return f"{key}={min(value / 10, recipe):.3g}"


@dataclass
class Job:
    """What a task hands the :class:`Trainer`.

    ``forward(batch, step, k)`` returns the loss of micro-batch ``k`` of optimizer step ``step``; ``samples`` is
    indexed by ``(epoch, i)`` (``data.pipeline.SeededSamples``). ``after_step(step)`` runs after each optimizer
    step (EMA, evaluation) and returns extra log fields; ``state()`` adds fields to each checkpoint's state and
    ``restore(state)`` reads them back on resume; ``checkpoint`` (default ``model``) is what checkpoints hold.
    ``lower_lr`` is the override a divergence message suggests (see :func:`lower_lr_hint`). ``guard=False``
    keeps training through a NaN or exploding loss (a probe sweep whose large learning rates are meant to fail).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    samples: torch.utils.data.Dataset
    forward: Callable[[dict[str, Any], int, int], torch.Tensor]
    batch_size: int
    base_lr: float
    lower_lr: str
    accum_steps: int = 1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    clip_grad: float | None = None
    clips_per_sample: int = 1
    num_workers: int = 0
    checkpoint: nn.Module | None = None
    after_step: Callable[[int], dict[str, Any]] | None = None
    state: Callable[[], dict[str, Any]] | None = None
    restore: Callable[[dict[str, Any]], None] | None = None
    guard: bool = True
    collate: Callable[[list[Any]], dict[str, Any]] = collate  # dense tasks batch lists of images of any size


def optim_job(optim: Any, model: nn.Module, samples: torch.utils.data.Dataset, forward: Callable, *,
              recipe_lr: float, layer_decay: float | None = None, num_workers: int = 0, **more: Any) -> Job:
    """The :class:`Job` of a task trained by AdamW from its config's ``optim`` section (an ``OptimConfig``): the
    optimizer (with ``layer_decay`` when given), the batch, lr and schedule keys, and the lower lr a divergence
    message suggests (a tenth, at most ``recipe_lr``, the task's default). ``more``: the other :class:`Job`
    fields."""
    o = optim
    return Job(model=model, optimizer=build_adamw(model, lr=o.base_lr, weight_decay=o.weight_decay, betas=o.betas,
                                                  layer_decay=layer_decay),
               samples=samples, forward=forward, batch_size=o.batch_size, base_lr=o.base_lr,
               lower_lr=lower_lr_hint("optim.base_lr", o.base_lr, recipe_lr), accum_steps=o.accum_steps,
               warmup_epochs=o.warmup_epochs, min_lr=o.min_lr, clip_grad=o.clip_grad, num_workers=num_workers, **more)


@dataclass(frozen=True)
class Curve:
    """The picture of ``log.csv`` drawn at the end: file name, title, extra columns for a second panel."""

    file: str = "curves.png"
    title: str = "training"
    extra: tuple[str, ...] = ()
    extra_title: str = "validation"


class Health:
    """The divergence guard. A step's loss is healthy when finite and at most :attr:`FACTOR` times the reference
    ``max(best running mean, FLOOR x the first running mean)``; the run has diverged when the running mean itself
    passes that limit (a sustained explosion, not one noisy batch)."""

    FACTOR, FLOOR, MOMENTUM = 10.0, 0.2, 0.9

    def __init__(self, state: dict[str, Any] | None = None):
        state = state or {}
        self.ema, self.best, self.first = state.get("ema"), state.get("best"), state.get("first")

    def limit(self) -> float:
        if self.best is None:
            return math.inf
        return self.FACTOR * max(self.best, self.FLOOR * self.first)

    def observe(self, loss: float) -> tuple[bool, bool]:
        """``(healthy, diverged)`` for the loss of one step."""
        if not math.isfinite(loss):
            return False, True
        healthy = loss <= self.limit()
        self.ema = loss if self.ema is None else self.MOMENTUM * self.ema + (1 - self.MOMENTUM) * loss
        self.first = self.ema if self.first is None else self.first
        diverged = self.ema > self.limit()
        self.best = self.ema if self.best is None else min(self.best, self.ema)
        return healthy, diverged

    def state(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best, "first": self.first}


@contextlib.contextmanager
def _gradient_sync_off(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


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


class Trainer:
    """A run of ``task`` in ``cfg.out_dir`` (see the module docstring). A context manager: the folder's lock is
    held from entry to exit."""

    def __init__(self, cfg: RunConfig, *, task: str, resume: bool = False, overwrite: bool = False,
                 accept_changes: tuple[str, ...] | list[str] = ()):
        self.cfg = check(cfg)
        self.task = task
        self.device = pick_device(cfg.device)
        self.dist = distributed.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.dtype = precision.resolve(cfg.precision, self.device)  # the forward's compute dtype (bf16: autocast)
        if cfg.parallel == "fsdp" and task not in SHARDABLE:
            raise ConfigError([f"parallel='fsdp': {task} evaluates on the main process alone, which a sharded model "
                               f"cannot do; use parallel=ddp (fsdp is for {', '.join(SHARDABLE)})"])
        self.sharded = cfg.parallel == "fsdp" and self.dist.world > 1
        self.io = fsdp.FullState() if self.sharded else checkpoints.PLAIN  # how checkpoints read and write state
        self._final: nn.Module | None = None  # the unsharded model outputs are written with (parallel=fsdp)
        self._sharded_model: nn.Module | None = None
        check_apart(cfg.out_dir, cfg)
        self.folder = RunFolder(cfg.out_dir, task)
        self.dir = self.folder.path
        self._options = dict(resume=resume, overwrite=overwrite, accept_changes=tuple(accept_changes))
        self.start: Start | None = None
        self._started = False  # config.yaml and run.json written for this session
        self.train_model: nn.Module | None = None
        self.schedule: Schedule | None = None  # set by fit, for a job's callbacks
        self._unreadable: list[str] = []  # the first few unreadable files, named in the log and the summary
        self._seen: set[str] = set()
        self._earlier = {"seconds": 0.0, "samples": 0}  # training done before a resume (from the checkpoint)

    def __enter__(self) -> Trainer:
        def claim() -> Start:
            self.folder.acquire()
            try:
                start = self.folder.prepare(self.cfg, **self._options)
                removed = files.remove_orphans(self.dir, depth=1) + checkpoints.remove_orphans(self.dir / "checkpoints")
                if removed:
                    log.info("removed %d temporary files / folders left by interrupted writes in %s", len(removed),
                             self.dir)
                return start
            except BaseException:
                self.folder.release(clean_up=True)
                raise

        self.start = distributed.from_main(claim)
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.dist.is_main and self._started and error is not None:
            status = ("interrupted" if isinstance(error, KeyboardInterrupt) else
                      "diverged" if isinstance(error, DivergedError) else "failed")
            with contextlib.suppress(OSError):
                self.folder.write_marker(status=status, error=str(error).splitlines()[0] if str(error) else status)
        self.folder.release(clean_up=error is not None and not self._started)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a task's forward calls: ``model`` with activation checkpointing if asked, in DDP (or sharded
        in place, ``parallel=fsdp``) across processes, ``torch.compile``d if asked. Under FSDP the task builds its
        optimizer after this call (the parameters are replaced by their shards)."""
        if self.cfg.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ConfigError([f"grad_checkpointing=true: {type(model).__name__} has no activation checkpointing"])
            model.set_grad_checkpointing(True)
        train_model: nn.Module = model
        if self.sharded:
            train_model = fsdp.shard(model)
        elif self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model
        return train_model

    def final(self, model: nn.Module) -> nn.Module:
        """The model a task's ``outputs`` writes: ``model``, or under FSDP its unsharded copy (on the CPU)."""
        return self._final if self._final is not None and model is self._sharded_model else model

    def no_sync(self, model: nn.Module):
        """Skip the gradient all-reduce of a micro-batch that is not the step's last (DDP's ``no_sync``; FSDP's
        ``set_requires_gradient_sync``)."""
        if self.sharded:
            return _gradient_sync_off(model)
        return model.no_sync() if self.dist.world > 1 else contextlib.nullcontext()

    # ---------------------------------------------------------------- writing, with disk-full errors that say what
    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not files.disk_full(e) or isinstance(e, HieralabError):
                raise
            newest = checkpoints.latest(self.dir / "checkpoints")
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "torch's writer could not write it all"
            raise DiskFullError(f"disk full while writing {what} ({reason}); the earlier "
                                f"checkpoints are intact (newest: {newest.name if newest else 'none'}); free space, "
                                "then continue with --resume") from None

    # ---------------------------------------------------------------- the run
    def fit(self, job: Job, *, outputs: Callable[[Path], dict[str, Any]] | None = None,
            curve: Curve = Curve()) -> dict[str, Any]:
        """Train ``job`` to the schedule's end (resuming where the folder says), then write ``outputs(run_dir)``
        (the task's final files, main process), ``summary.json`` and the curve; returns the summary."""
        cfg, dist = self.cfg, self.dist
        if self.start is None:
            raise RuntimeError("use the Trainer as a context manager: with Trainer(...) as trainer: ...")
        first_readable(job.samples)  # nothing trains on data that yields no readable sample
        schedule = Schedule.build(samples=len(job.samples), batch_size=job.batch_size, accum_steps=job.accum_steps,
                                  world=dist.world, epochs=cfg.epochs, max_steps=cfg.max_steps,
                                  base_lr=job.base_lr, warmup_epochs=job.warmup_epochs, min_lr=job.min_lr,
                                  clips_per_sample=job.clips_per_sample)
        self.schedule = schedule
        held = job.checkpoint or job.model
        if self.sharded and not fsdp.is_sharded(job.model):
            raise RuntimeError("parallel=fsdp: call trainer.wrap(model) before fit, and build the optimizer after it")
        step, loss_value, health, resumed = 0, float("nan"), Health(), None
        if self.start.resume:  # the main process picks the checkpoint (and sets aside bad ones); all then load it
            pick = fsdp.CheckOnly() if self.sharded else checkpoints.PLAIN
            found = distributed.from_main(lambda: self._resume_point(held, job.optimizer, pick))
            if found is not None:
                path, state = found
                if not dist.is_main or self.sharded:
                    state = checkpoints.load(path, held, job.optimizer, self.io)
                step, loss_value, health = state["step"], state.get("loss", loss_value), Health(state.get("health"))
                self._check_processes(state.get("processes"), dist.world)
                self._check_precision()
                self._earlier = state.get("trained", self._earlier)
                if job.restore:
                    job.restore(state)
                log.info("resuming from %s (step %d of %d)", path, step, schedule.stop)
                resumed = path if checkpoints.verdict(path) is None else None
        if dist.is_main:
            with self.writing(f"{self.dir}/config.yaml and run.json"):
                self.folder.record_start(cfg, self.start, step, precision=precision.name(self.dtype))
        self._started = True
        log.info("%s: %s (%s; computes in %s)", self.task, self.dir, self.start.note, precision.name(self.dtype))
        train_model = self.train_model if self.train_model is not None else self.wrap(job.model)
        log.info("%s: %d samples, %d steps/epoch, %d steps, lr %.3g, batch %d x %d accum x %d processes%s",
                 self.task, len(job.samples), schedule.per_epoch, schedule.stop, schedule.lr, job.batch_size,
                 job.accum_steps, dist.world, f" x {job.clips_per_sample} clips" if job.clips_per_sample > 1 else "")
        result = self._loop(job, train_model, schedule, step, loss_value, health, resumed)
        if self.sharded:  # gathered on every process, rebuilt whole on the main one for the outputs
            state = self.io.model_state(job.model)
            self._sharded_model = job.model
            self._final = fsdp.full_copy(job.model, state) if dist.is_main else None
        summary: dict[str, Any] = {"task": self.task, "run_dir": str(self.dir), **result}
        if dist.is_main:
            with self.writing(f"the outputs of {self.dir}"):
                if outputs is not None:
                    summary.update(outputs(self.dir))
                if (self.dir / "log.csv").exists():
                    summary["curve"] = str(plot_curve(self.dir / "log.csv", self.dir / curve.file, title=curve.title,
                                                      extra=curve.extra, extra_title=curve.extra_title))
                files.write_json(self.dir / "summary.json", summary)
                done = result["steps"] >= schedule.total
                self.folder.write_marker(status="finished" if done else "paused", step=result["steps"])
        distributed.barrier()
        if result["skipped_images"]:
            log.warning("skipped %d unreadable files (counted in log.csv; the first: %s)", result["skipped_images"],
                        "; ".join(self._unreadable[:3]))
        return summary

    def _check_processes(self, saved: int | None, world: int) -> None:
        """The effective batch is batch x accumulation x processes: resuming under another process count changes
        the trajectory (the lr scales with it, the data splits differently), so it needs ``--accept-changes
        processes``."""
        accepted = set(self._options["accept_changes"])
        if saved is not None and saved != world and not accepted & {"processes", "all"}:
            raise RunFolderError(f"--resume with {world} process(es), the run was trained with {saved}: the effective "
                                 f"batch changes; run it with {saved}, or pass --accept-changes processes")

    def _check_precision(self) -> None:
        """The compute dtype is part of the trajectory: resuming a run trained in fp32 in bf16 (or back) needs
        ``--accept-changes precision``. It compares what the runs computed in (run.json), so ``precision=auto``
        moved from a CPU to a GPU counts too; runs of earlier versions recorded none and are not checked."""
        trained = [e["precision"] for e in (self.folder.marker() or {}).get("history", []) if "precision" in e]
        now = precision.name(self.dtype)
        if trained and trained[-1] != now and not set(self._options["accept_changes"]) & {"precision", "all"}:
            raise RunFolderError(f"--resume computes in {now} (precision={self.cfg.precision} on "
                                 f"{self.device.type}), the run was trained in {trained[-1]}: the trajectory changes; "
                                 f"set precision={trained[-1]}, or pass --accept-changes precision")

    def _resume_point(self, model: nn.Module, optimizer: torch.optim.Optimizer, io: checkpoints.StateIO):
        found = checkpoints.resume_from(self.dir / "checkpoints", model, optimizer, io)
        if found is None:
            log.warning("no intact checkpoint in %s: starting from step 0", self.dir / "checkpoints")
        return found

    def _seed_step(self, step: int, k: int) -> None:
        """The global RNGs of one micro-batch's forward: drop path (torch), timm's Mixup (numpy), Python's."""
        seed, rank = self.cfg.seed, self.dist.rank
        torch.manual_seed(seeds.seed_int(seed, "drop_path", step, k, rank))
        np.random.seed(seeds.seed_int(seed, "mixup", step, k, rank, bits=32))
        random.seed(seeds.seed_int(seed, "python", step, k, rank))

    def _note_unreadable(self, names: list[str]) -> None:
        """Name the first few unreadable files in the log (each once; every one is counted in log.csv)."""
        for name in names:
            if name in self._seen:  # the same file again, in another epoch
                continue
            self._seen.add(name)
            if len(self._unreadable) < SHOW_UNREADABLE:
                log.warning("unreadable, skipped: %s", name)
                self._unreadable.append(name)
            elif len(self._seen) == SHOW_UNREADABLE + 1:
                log.warning("more unreadable files are skipped; their count is in log.csv (skipped)")

    def _diverged(self, message: str, ckpt_dir: Path, job: Job) -> DivergedError:
        good = checkpoints.last_good(ckpt_dir)
        if good is None:
            return DivergedError(f"{message}; stopped before the step reached the weights, and no checkpoint was "
                                 f"written from healthy weights: start again with a lower learning rate "
                                 f"({job.lower_lr}) in a new out_dir or with --overwrite, or check the data")
        key = job.lower_lr.split("=")[0]
        return DivergedError(f"{message}; stopped before the step reached the weights. The last good checkpoint is "
                             f"{good}; resume from it with a lower learning rate: add --resume {job.lower_lr} "
                             f"--accept-changes {key} to the command (newer checkpoints are set aside)")

    def _loop(self, job: Job, train_model: nn.Module, schedule: Schedule, step: int, loss_value: float,
              health: Health, pending: Path | None) -> dict[str, Any]:
        cfg, dist, device = self.cfg, self.dist, self.device
        ckpt_dir = self.dir / "checkpoints"
        held = job.checkpoint or job.model
        run_log = None
        if dist.is_main:
            with self.writing(f"{self.dir}/log.csv"):
                run_log = RunLog(self.dir, resume_step=step if self.start.resume else None)
        bar = tqdm(total=schedule.stop, initial=step, desc=self.task, unit="step", disable=not dist.is_main,
                   dynamic_ncols=True)
        plain_lines = dist.is_main and bar.disable  # off a terminal (a log file): a plain line every log_every
        job.model.train()
        start_time, skipped_total, first = time.perf_counter(), 0, step
        stand_in = None  # the last readable micro-batch: run at weight 0 in place of an unreadable one (see below)
        per_step = job.batch_size * job.accum_steps * dist.world * job.clips_per_sample

        def trained() -> dict[str, float]:  # all the run's training so far, this session and the ones before
            return {"seconds": self._earlier["seconds"] + time.perf_counter() - start_time,
                    "samples": self._earlier["samples"] + (step - first) * per_step}

        try:
            while step < schedule.stop:
                epoch, in_epoch = divmod(step, schedule.per_epoch)
                loader = epoch_batches(job.samples, epoch=epoch, seed=cfg.seed, rank=dist.rank, world=dist.world,
                                       batch_size=job.batch_size, start=in_epoch * job.accum_steps,
                                       stop=schedule.per_epoch * job.accum_steps, num_workers=job.num_workers,
                                       collate=job.collate)
                count = min(schedule.per_epoch - in_epoch, schedule.stop - step)
                for group in micro_batches(loader, job.accum_steps, count):
                    t0 = time.perf_counter()
                    lr = schedule.lr_at(step)
                    for g in job.optimizer.param_groups:
                        g["lr"] = lr * g.get("lr_scale", 1.0)
                    job.optimizer.zero_grad(set_to_none=True)
                    losses, images = [], 0
                    group_size = max(1, sum(b["size"] for b in group))  # micro-batches weigh by their image count
                    for k, batch in enumerate(group):
                        skipped_total += batch["skipped"]
                        self._note_unreadable(batch["unreadable"])
                        size = batch["size"]
                        if size == 0:  # every file of the micro-batch unreadable
                            if dist.world == 1:
                                continue
                            # the other processes' forward and backward wait for this one's collectives: run the
                            # last readable micro-batch again, at weight 0
                            batch = stand_in or job.collate([job.samples[(0, first_readable(job.samples))]])
                        stand_in = batch
                        self._seed_step(step, k)
                        sync = k == len(group) - 1 or dist.world == 1
                        quiet = contextlib.nullcontext() if sync else self.no_sync(train_model)  # DDP: no all-reduce
                        with quiet:
                            with precision.autocast(device, self.dtype):
                                loss = job.forward(batch, step, k)
                            if loss.dtype != torch.float32:  # a task's bug, not the user's: its loss in fp32
                                raise RuntimeError(f"{self.task}: the forward returned a {loss.dtype} loss; "
                                                   "compute it from .float() logits")
                            (loss * (size / group_size)).backward()
                        losses.append(loss.detach().float() * size)
                        images += size
                    # the step's mean loss over every process's images: (sum of loss x images, images), summed over
                    # processes and read once per optimizer step (the NaN stop must come before the update)
                    summed, seen = 0.0, 0
                    if losses:
                        totals = torch.stack([torch.stack(losses).sum(), torch.tensor(float(images), device=device)])
                        summed, seen = distributed.all_sum(totals).tolist()
                    if seen > 0:
                        loss_value = summed / seen
                        healthy, diverged = health.observe(loss_value)
                        if pending is not None and dist.is_main:  # the last checkpoint's weights made this loss
                            with self.writing(f"{pending}/verdict.json"):
                                checkpoints.mark(pending, healthy=healthy, next_loss=loss_value)
                        pending = None
                        if diverged and job.guard:
                            what = (f"the loss is {loss_value} at step {step + 1}" if not math.isfinite(loss_value)
                                    else f"the loss exploded at step {step + 1} (running mean {health.ema:.4g}, more "
                                         f"than {Health.FACTOR:g}x its best {health.best:.4g})")
                            raise self._diverged(what, ckpt_dir, job)
                        if job.clip_grad:
                            nn.utils.clip_grad_norm_(job.model.parameters(), job.clip_grad)
                        job.optimizer.step()
                    else:  # every sample of the step unreadable: no update, the schedule goes on
                        loss_value = float("nan")
                        log.warning("step %d: no readable sample in its batches; no update", step + 1)
                    step += 1
                    speed = images * dist.world / (time.perf_counter() - t0)  # the step's own, not its evaluations
                    extra = job.after_step(step) if job.after_step else {}
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}",
                                    **{k: f"{v:.4g}" for k, v in extra.items() if isinstance(v, float)})
                    if plain_lines and (step % cfg.log_every == 0 or step == schedule.stop):  # no bar: a line
                        log.info("%s: step %d/%d, loss %.4f, lr %.2e, %.0f img/s%s", self.task, step, schedule.stop,
                                 loss_value, lr, speed, "".join(f", {k} {v:.4g}" for k, v in extra.items()
                                                              if isinstance(v, float)))
                    if run_log and (step % cfg.log_every == 0 or step == schedule.stop or extra):
                        with self.writing(f"{self.dir}/log.csv and tb/"):
                            run_log.write({"step": step, "epoch": round(step / schedule.per_epoch, 4),
                                           "loss": loss_value, "lr": lr, "images_per_s": round(speed, 1),
                                           "skipped": skipped_total, **extra})
                    if step % cfg.ckpt_every == 0 or step == schedule.stop:
                        if dist.is_main or self.sharded:  # gathering a sharded model's state takes every process
                            weights = self.io.model_state(held)
                            moments = self.io.optimizer_state(held, job.optimizer)
                        if dist.is_main:
                            finite = all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
                            state = {"epoch": step / schedule.per_epoch, "loss": loss_value, "finite": finite,
                                     "processes": dist.world,
                                     "trained": trained(),
                                     "health": health.state(), **(job.state() if job.state else {})}
                            target = checkpoints.step_dir(ckpt_dir, step)
                            with self.writing(f"the checkpoint {target}"):
                                saved = checkpoints.save(ckpt_dir, step, weights, moments, state, cfg.keep_last)
                            pending = saved if finite else None
                            if not finite:
                                checkpoints.mark(saved, healthy=False, next_loss=float("nan"))
                        distributed.barrier()
        finally:
            bar.close()
            if run_log:
                with self.writing(f"{self.dir}/tb"):
                    run_log.close()
        total = trained()  # seconds and images/s of the whole run, resumed sessions included
        return {"steps": step, "final_loss": loss_value, "loss_running_mean": health.ema,
                "seconds": round(total["seconds"], 2),
                "images_per_s": round(total["samples"] / max(total["seconds"], 1e-9), 1),
                "skipped_images": skipped_total,
                "unreadable": self._unreadable[:SHOW_UNREADABLE]}
