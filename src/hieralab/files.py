"""Writing files so that nothing is ever half-written: atomic replaces, temporary folders, and the umask respected.

Every file hieralab writes goes through :func:`atomic_write` (or a folder through :func:`temp_dir` + ``os.replace``):
the bytes land in a hidden temporary name beside the target and are renamed over it in one step, so a crash, a
``kill -9`` or a full disk at any instant leaves either the old file or the new one, never a mix. Temporary names
start with a dot and end in ``.tmp`` (``.<name>.<random>.tmp``, folders ``.<name>-<random>.tmp``) so that a run
can find and remove the ones an
interrupted write left behind (:func:`remove_orphans`).

``tempfile`` creates files 0600 and folders 0700 whatever the umask; the helpers here give them the mode an ordinary
``open`` would (0644 / 0755 under the usual umask 022).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
_umask_lock = threading.Lock()


def umask() -> int:
    """The process umask (read without leaving it changed)."""
    with _umask_lock:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def chmod_like_open(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (0600 / 0700) the mode ``open`` / ``mkdir`` would under the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, durable: bool = False,
                 exclusive: bool = False) -> Path:
    """``write(tmp)`` writes the content to a temporary path beside ``path``, which is then renamed over it.

    With ``durable`` the file and the folder entry are fsynced (checkpoints, logs that must survive power loss).
    With ``exclusive`` the file only comes into place where nothing is (a hard link, which fails on an existing
    name): the check and the write are one step, so of two processes writing one new path one succeeds and the
    other gets a :class:`FileExistsError`. The file gets the mode an ordinary ``open`` would give it under the
    current umask.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        chmod_like_open(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it, or give "
                                      "another path") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


OUTPUT_MARK = ".hieralab-output"  # in every folder publish_folder wrote: a later command may replace it


@contextlib.contextmanager
def output_folder(target: str | os.PathLike, *, overwrite: bool = False, command: str = "hieralab"):
    """A command's result folder, written whole or not at all: yields a fresh temporary folder beside ``target``
    to fill, then puts it in place with one rename.

    ``target`` may be missing, empty, or a folder an earlier hieralab command wrote (it holds :data:`OUTPUT_MARK`),
    which is replaced. Anything else there -- a user's folder, a file -- is refused with a
    :class:`FileExistsError` before anything is computed, and again at the rename (a second process that published
    meanwhile wins; this one reports the refusal), unless ``overwrite``, which moves it aside to
    ``<target>.replaced-<time>`` (nothing is deleted).
    """
    target = Path(target).expanduser()
    _check_output(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = temp_dir(target.parent, target.name)
    try:
        yield work
        (work / OUTPUT_MARK).write_text(json.dumps({"command": command}) + "\n")
        _check_output(target, overwrite)
        if overwrite and target.exists() and not (target / OUTPUT_MARK).exists():
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = target.with_name(f"{target.name}.replaced-{stamp}")
            os.replace(target, aside)
        old = None
        if (target / OUTPUT_MARK).exists():  # our own earlier output: out of the way, deleted once replaced
            old = target.with_name(f".{target.name}-old-{os.getpid()}{TMP_SUFFIX}")
            os.replace(target, old)
        try:
            os.rename(work, target)  # fails if something non-empty came into place meanwhile
        except OSError as e:
            if old is not None:
                os.replace(old, target)
            raise FileExistsError(f"{target} was written by another process meanwhile; nothing of this run was put "
                                  "there") from e
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _check_output(target: Path, overwrite: bool) -> None:
    if overwrite or not target.exists():
        return
    if target.is_dir() and ((target / OUTPUT_MARK).exists() or not any(target.iterdir())):
        return
    what = "a file" if not target.is_dir() else "a folder hieralab did not write"
    raise FileExistsError(f"{target} is {what}; give another --out, or pass --overwrite to move it aside")


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path``, for a file about to be written: a :class:`FileExistsError` when something is there already and
    ``overwrite`` is not set (nothing a user has is replaced unasked)."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it, or give another path")
    return path


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """Atomically replace ``path`` with ``text``."""
    return atomic_write(path, lambda p: Path(p).write_text(text), durable=durable)


def json_safe(data: Any) -> Any:
    """``data`` with every NaN / inf float (at any depth of dicts, lists and tuples) replaced by ``None``: JSON has
    no such numbers, and ``json.dumps`` would write the bare ``NaN`` / ``Infinity`` that other JSON readers
    refuse."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def write_json(path: str | os.PathLike, data: Any, *, durable: bool = False) -> Path:
    """Atomically replace ``path`` with ``data`` as indented, valid JSON: NaN and inf are written as ``null`` (a
    reader gets ``None`` back, not the number)."""
    return write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", durable=durable)


def temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder ``parent/.<name>-<random>.tmp`` (mode as ``mkdir`` would give), to fill and rename into
    place with ``os.replace``."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}-", suffix=TMP_SUFFIX))
    chmod_like_open(tmp, directory=True)
    return tmp


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of the temporary names of :func:`atomic_write` / :func:`temp_dir`."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX) and len(name) > len(TMP_SUFFIX) + 1


def remove_orphans(folder: str | os.PathLike, *, depth: int = 1) -> list[Path]:
    """Remove the temporary files and folders that interrupted writes left in ``folder`` (and ``depth`` levels of
    its subfolders); returns what was removed. Only names this module creates are touched."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if is_temporary(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
        elif depth > 0 and p.is_dir() and not p.name.startswith("."):
            removed += remove_orphans(p, depth=depth - 1)
    return removed


def disk_full(error: BaseException) -> bool:
    """Whether an exception from a write means the disk (or a quota) is full: ``OSError`` ENOSPC / EDQUOT, or the
    ``RuntimeError`` that ``torch.save``'s zip writer raises when a write comes up short ("[enforce fail at
    inline_container.cc] unexpected pos ..." or "... file write failed")."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "inline_container" in text or "file write failed" in text


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a CSV that is appended to as a run goes; a last line without its newline (cut short by
    a kill) and rows with another field count than the header are dropped. Missing file: ``([], [])``."""
    path = Path(path)
    if not path.exists():
        return [], []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return [], []
    header = lines[0]
    return header, [dict(zip(header, r)) for r in lines[1:] if len(r) == len(header)]
