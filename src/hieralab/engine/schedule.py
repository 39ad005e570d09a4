"""How long a run is and how its learning rate moves: pure functions of the data size and the optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DataError


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = base_lr * effective batch / 256``."""
    return base_lr * effective_batch / 256


def warmup_cosine(step: int, *, lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then a half cosine down to ``min_lr`` at
    ``total_steps`` (MAE / Hiera). ``step`` counts optimizer steps from 0."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n: int, batch_size: int, accum_steps: int, world: int) -> int:
    """Optimizer steps in one epoch (full micro-batches only)."""
    micro = (n // world) // batch_size
    if micro < accum_steps:
        raise DataError(f"{n} samples make {micro} batches of {batch_size} per process, fewer than accum_steps="
                        f"{accum_steps}; lower optim.batch_size or add data")
    return micro // accum_steps


@dataclass(frozen=True)
class Schedule:
    """A run's length and learning rate, all a function of the optimizer step."""

    per_epoch: int  # optimizer steps per epoch
    total: int  # steps the cosine spans
    stop: int  # steps actually run (<= total with max_steps)
    lr: float  # peak learning rate (already scaled by the batch)
    warmup: int
    min_lr: float = 0.0

    @classmethod
    def build(cls, *, samples: int, batch_size: int, accum_steps: int, world: int, epochs: float,
              max_steps: int | None, base_lr: float, warmup_epochs: float, min_lr: float = 0.0,
              clips_per_sample: int = 1) -> Schedule:
        """The schedule of ``epochs`` over ``samples`` items at ``batch_size x accum_steps x world`` per step
        (``clips_per_sample`` views each, with repeated augmentation), lr by MAE's rule."""
        per_epoch = steps_per_epoch(samples, batch_size, accum_steps, world)
        total = max(1, math.ceil(epochs * per_epoch))
        lr = scaled_lr(base_lr, batch_size * accum_steps * world * clips_per_sample)
        return cls(per_epoch, total, min(total, max_steps) if max_steps else total, lr,
                   round(warmup_epochs * per_epoch), min_lr)

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, lr=self.lr, total_steps=self.total, warmup_steps=self.warmup, min_lr=self.min_lr)
