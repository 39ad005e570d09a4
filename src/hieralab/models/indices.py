"""The index rule of ``forward_intermediates`` (timm's ``feature_take_indices``), in a module of its own so that
the feature interface (``features.py``) and the loader (``checkpoint.py``) use it without importing ``base.py``,
which imports the loader."""

from __future__ import annotations

from collections.abc import Sequence


def take_indices(count: int, indices: int | Sequence[int] | None, what: str = "stages") -> list[int]:
    """Which of ``count`` stages (or blocks) ``forward_intermediates`` returns, as timm's convention: ``None`` all of
    them, an int ``n`` the last ``n``, a list those named (negative from the end), in the order asked. Anything out
    of range is an error (never wrapped around)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 1 <= indices <= count:
            raise ValueError(f"indices={indices}: ask for the last 1..{count} {what}, or name them in a list")
        return list(range(count - indices, count))
    take = list(indices)
    bad = [i for i in take if not -count <= i < count]
    if not take or bad:
        raise ValueError(f"indices={list(indices)}: name {what} in 0..{count - 1} (or -{count}..-1)")
    return [i % count for i in take]
