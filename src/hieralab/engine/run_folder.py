"""The run folder as a contract: one live run per folder, nothing of anyone's overwritten, resume only under the
settings the run was started with.

The rules, checked by the main process before anything is built or written (every rank gets the same answer):

* **One live run.** ``<out_dir>/.lock`` is held with ``flock`` for as long as a run lives; a second process is
  refused with the live run's PID. The kernel drops the lock when its process dies, so the lock of a killed run is
  taken over (with a log line) by the next one. The ranks of one ``torchrun`` share it through the main rank.
* **Nothing overwritten.** A new run starts only in a folder that is new or empty. A folder holding a run of the
  same task is continued with ``--resume`` and otherwise refused, finished or not; a folder holding anything else
  (another task's run, a user's files) is refused. ``--overwrite`` moves the old contents to
  ``<out_dir>.replaced-<time>`` (nothing is deleted) and starts afresh.
* **Resume under the same settings.** ``--resume`` compares the saved ``config.yaml`` with the new config and
  refuses changes to keys that alter the trajectory (``seed``, ``optim.batch_size``, ``epochs``, ...; not
  ``log_every``, ``num_workers``, ...), listing them, unless ``--accept-changes`` names them; accepted changes are
  recorded in ``run.json``.
* **Clean start.** Temporary files and folders of interrupted writes are removed when a run starts.

``run.json`` marks the folder as a run: its task, status (running, paused at ``max_steps``, finished, diverged,
failed, interrupted) and history.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__, files
from ..config import from_dict, to_dict, trajectory_changes
from ..errors import ConfigError, RunFolderError
from . import checkpoints

log = logging.getLogger(__name__)
LOCK, MARKER, CONFIG = ".lock", "run.json", "config.yaml"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded_task(path: str | os.PathLike) -> str | None:
    """The task the ``run.json`` in ``path`` names: a run's identity (None when there is no readable one)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("task") if isinstance(marker, dict) else None


def data_paths(cfg: Any) -> list[tuple[Path, bool]]:
    """``(path, scanned)`` of the existing files and folders a run's config reads its data from (``data.*`` and
    ``val_source``; a shard pattern counts as its folder); ``scanned``: a folder read whole, recursively
    (``data.source``, ``val_source``), where anything written inside becomes data."""
    data = getattr(cfg, "data", None)
    values = [(getattr(cfg, "val_source", None), True)]
    if data is not None:
        values += [(v, k == "source") for k, v in vars(data).items() if isinstance(v, str)]
    found = []
    for value, scanned in values:
        if not value or not isinstance(value, str):
            continue
        path = Path(value.split("{")[0]).expanduser().parent if "{" in value else Path(value).expanduser()
        if path.exists():
            found.append((path.resolve(), scanned))
    return found


def check_apart(out_dir: str | os.PathLike, cfg: Any) -> None:
    """A run folder is never the data nor around it (``--overwrite`` would move the data aside), nor inside a
    folder that is read whole (the run's pictures would become training data of the next run). A
    :class:`ConfigError` naming both otherwise."""
    out = Path(out_dir).expanduser().resolve()
    for path, scanned in data_paths(cfg):
        inside = path in out.parents
        if out == path or out in path.parents or (inside and scanned):
            where = "is" if out == path else "is inside" if inside else "holds"
            raise ConfigError([f"out_dir={out_dir} {where} the data ({path}); give the run a folder of its own"])


@dataclass
class Start:
    """What the main process decided about the folder: resume or not, and what changed."""

    resume: bool
    accepted: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str = ""


class RunFolder:
    """``out_dir`` of a run of ``task``: its lock, marker and saved config."""

    def __init__(self, path: str | os.PathLike, task: str):
        self.path = Path(path).expanduser()
        self.task = task
        self.created = False  # the folder did not exist before this run
        self.lock_created = False
        self._fd: int | None = None

    # ---------------------------------------------------------------- the lock
    def acquire(self) -> None:
        """Hold ``.lock``, or a :class:`RunFolderError` naming the live run that holds it."""
        if not self.path.exists():
            self.created = True
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_created = not (self.path / LOCK).exists()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f"PID {holder[0]} on {holder[1]}, started {holder[2]}" if len(holder) >= 3 else "another process"
            raise RunFolderError(f"{self.path} is in use by a live run ({who}); wait for it to end or stop it, or "
                                 "choose another out_dir") from None
        stale = os.read(fd, 200).decode(errors="replace").split()
        if stale and stale[0].isdigit() and int(stale[0]) != os.getpid():
            state = "no longer running" if not _alive(int(stale[0])) else "its lock released"
            log.info("taking over the lock of %s from PID %s (%s)", self.path, stale[0], state)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {_now()}\n".encode(), 0)
        self._fd = fd

    def release(self, *, clean_up: bool = False) -> None:
        """Let go of the lock; with ``clean_up``, a folder this run created and left empty is removed again (a run
        refused for its data leaves no trace)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly (a PID left behind: a crash)
        if clean_up and self.lock_created:  # a refused run leaves the folder as it found it
            (self.path / LOCK).unlink(missing_ok=True)
            if self.created and not any(self.path.iterdir()):
                with contextlib.suppress(OSError):
                    self.path.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    # ---------------------------------------------------------------- what the folder holds
    def marker(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None

    def write_marker(self, **update: Any) -> None:
        data = {**(self.marker() or {"task": self.task, "created": _now(), "history": []}), **update,
                "updated": _now(), "hieralab": __version__}
        files.write_json(self.path / MARKER, data)

    def saved_config(self) -> dict[str, Any] | None:
        try:
            data = yaml.safe_load((self.path / CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def _contents(self) -> list[str]:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir() if p.name != LOCK)

    def _is_own_run(self, cfg_cls: type) -> tuple[bool, str | None]:
        """(a run of this task?, the task it holds when it is another run)"""
        marker = self.marker()
        if marker is not None:
            return marker.get("task") == self.task, marker.get("task")
        saved = self.saved_config()  # a run written before run.json existed: its config and its checkpoints
        if saved is None or not ((self.path / "checkpoints").is_dir() or (self.path / "summary.json").exists()):
            return False, None
        try:
            from_dict(cfg_cls, saved)
        except ConfigError:
            return False, None
        return True, None

    def _move_aside(self) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
        n = 1
        while target.exists():
            target, n = self.path.with_name(f"{self.path.name}.replaced-{stamp}-{n}"), n + 1
        old_fd, ours = self._fd, self.lock_created
        os.replace(self.path, target)  # the lock file moves with it; take a fresh one in the new folder
        self._fd = None
        self.acquire()
        if old_fd is not None:
            os.ftruncate(old_fd, 0)
            os.close(old_fd)
        if ours:  # the moved folder as it was before this run touched it
            (target / LOCK).unlink(missing_ok=True)
        return target

    # ---------------------------------------------------------------- the decision
    def prepare(self, cfg: Any, *, resume: bool, overwrite: bool = False,
                accept_changes: tuple[str, ...] | list[str] = ()) -> Start:
        """Apply the rules of this module (the lock must be held); returns whether to resume."""
        if not self._contents():
            return Start(resume=False, note="new run")
        own, other_task = self._is_own_run(type(cfg))
        if overwrite:
            moved = self._move_aside()
            log.warning("moved the old contents of %s to %s (--overwrite); starting a new run", self.path, moved)
            return Start(resume=False, note=f"replaced; the old contents are in {moved}")
        if not own:
            if other_task:
                raise RunFolderError(f"{self.path} holds a {other_task} run, not a {self.task} run; choose another "
                                     f"out_dir, or pass --overwrite to move it aside and start there")
            shown = ", ".join(self._contents()[:5]) + (", ..." if len(self._contents()) > 5 else "")
            raise RunFolderError(f"{self.path} is not empty and holds no hieralab {self.task} run ({shown}); "
                                 "choose a new or empty out_dir, or pass --overwrite to move its contents aside")
        marker = self.marker() or {}
        steps = checkpoints.list_steps(self.path / "checkpoints")
        finished = marker.get("status") == "finished" or (not marker and (self.path / "summary.json").exists())
        where = f"newest checkpoint step-{steps[-1]:07d}" if steps else "no checkpoint"
        if not resume:
            state = "a finished" if finished else f"an unfinished ({marker.get('status', 'stopped')})"
            raise RunFolderError(f"{self.path} already holds {state} {self.task} run ({where}); nothing was changed. "
                                 "Pass --resume to continue it, --overwrite to move it aside and start again, or "
                                 "choose another out_dir")
        if not steps and finished:
            raise RunFolderError(f"{self.path} holds a finished {self.task} run whose checkpoints are gone: there is "
                                 "nothing to resume from, and its outputs stay as they are; choose another out_dir, "
                                 "or pass --overwrite to move it aside")
        accepted = self._check_changes(cfg, accept_changes)
        return Start(resume=bool(steps), accepted=accepted,
                     note=f"resuming ({where})" if steps else "no checkpoint yet: starting from step 0")

    def _check_changes(self, cfg: Any, accept: tuple[str, ...] | list[str]) -> dict[str, tuple[Any, Any]]:
        saved = self.saved_config()
        allowed = set(accept)
        if saved is None:
            if "all" in allowed:
                return {}
            raise RunFolderError(f"{self.path / CONFIG} is missing or unreadable, so the settings of the run cannot be "
                                 "compared with these; restore it, or pass --accept-changes all to resume anyway")
        changes = trajectory_changes(saved, to_dict(cfg), type(cfg))
        refused = {k: v for k, v in changes.items() if "all" not in allowed and k not in allowed}
        if refused:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise RunFolderError(f"--resume with settings that alter the run ({shown}); restore them, or pass "
                                 f"--accept-changes {','.join(refused)} to continue under the new values")
        return changes

    def record_start(self, cfg: Any, start: Start, step: int, *, precision: str | None = None) -> None:
        """Write ``config.yaml`` (the config in effect) and ``run.json`` for a run that starts now; ``precision``
        is what this session computes in ("fp32" / "bf16", the ``precision`` key resolved on its device)."""
        files.write_text(self.path / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        marker = self.marker() or {"task": self.task, "created": _now(), "history": []}
        event: dict[str, Any] = {"time": _now(), "pid": os.getpid(), "step": step,
                                 "event": "resumed" if start.resume else "started"}
        if precision is not None:
            event["precision"] = precision
        if start.accepted:
            event["accepted_changes"] = {k: {"from": a, "to": b} for k, (a, b) in start.accepted.items()}
            log.warning("resuming with accepted changes: %s", ", ".join(f"{k} {a!r} -> {b!r}"
                                                                      for k, (a, b) in start.accepted.items()))
        self.write_marker(task=self.task, status="running", history=[*marker.get("history", []), event])
