"""The tasks, one declaration each (:class:`~hieralab.engine.task.Task`), and the table the command line is built
from: a training subcommand per task, and ``eval`` / ``predict`` for the tasks that have them. Adding a task is its
module, its config and one line here (``docs/adding_a_task.md``).

A run folder names its task in ``run.json``; :func:`task_of` reads it (``eval``, ``predict``, ``init=`` take the run
folder or a model folder inside it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..engine.run_folder import recorded_task
from ..engine.task import Task
from . import action, detect, finetune, linprobe, pretrain, segment

log = logging.getLogger(__name__)

TASKS: dict[str, Task] = {t.name: t for t in (pretrain.TASK, finetune.TASK, linprobe.TASK, detect.TASK, segment.TASK,
                                               action.TASK)}


def task_of(path: str | Path) -> tuple[Task, Path]:
    """``(the task, its run folder)`` of a run folder or a model folder inside one (``best/``, ``model/``), from the
    ``run.json`` that names it. A folder written before every run had one is known by its task's
    :attr:`~hieralab.engine.task.Task.legacy_file`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder")
    for folder in (path, path.parent):
        name = recorded_task(folder)
        if name is not None:
            if name not in TASKS:
                raise ValueError(f"{folder} holds a {name!r} run, a task this version does not have "
                                 f"({', '.join(TASKS)})")
            task = TASKS[name]
            if folder == path or path.name in task.model_folders:
                return task, folder
    for task in TASKS.values():  # written by an earlier version: known by a file only its task writes
        if task.legacy_file and any((f / task.legacy_file).exists() for f in (path, *(path / m for m in
                                                                                      task.model_folders))):
            log.info("%s has no run.json (an earlier version wrote it); it holds a %s model", path, task.name)
            return task, task.run_dir(path)
    raise FileNotFoundError(f"{path} is not a hieralab run (no run.json) nor a model folder a task wrote "
                            f"({', '.join(t.legacy_file for t in TASKS.values() if t.legacy_file)})")
