"""Progress on a terminal, clean logs elsewhere: a bar (tqdm) only when standard error is a terminal and nobody
turned bars off (``--quiet``, ``TQDM_DISABLE=1``); in a file or a pipe no carriage returns or cursor codes are
written, and the long loops log a plain line now and then instead (the Trainer: every ``log_every`` steps)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bars (and the command line keeps hieralab's INFO lines to itself)."""
    global _quiet
    _quiet = quiet


def bars_on() -> bool:
    """Whether a progress bar may be drawn: a terminal, not ``--quiet``, not ``TQDM_DISABLE``."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return not (_quiet or off) and sys.stderr.isatty()


def bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled (every call a no-op) off a terminal (:func:`bars_on`)."""
    return tqdm(iterable, disable=disable or not bars_on(), **kwargs)
