"""Learning-rate schedules as pure functions of the optimizer step."""

from __future__ import annotations

import math


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
