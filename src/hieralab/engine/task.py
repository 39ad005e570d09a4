"""What a task is: one declaration, from which the command line builds its training subcommand and its part of
``hieralab eval`` and ``hieralab predict``, and by which a run folder is recognised (``run.json`` names the task).

A task module ends with ``TASK = Task(...)`` and ``tasks/__init__.py`` lists it in :data:`~hieralab.tasks.TASKS`;
``docs/adding_a_task.md`` walks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Flag:
    """A command-line flag a task adds to its training command, ``eval`` or ``predict`` (argparse's arguments).
    ``override`` turns a training flag into that config key (``--trainable-blocks 2`` -> ``trainable_blocks=2``)."""

    name: str  # "--ann"
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    store_true: bool = False
    override: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def add_to(self, parser) -> None:
        if self.store_true:
            parser.add_argument(self.name, action="store_true", help=self.help)
        else:
            parser.add_argument(self.name, type=self.type, default=self.default, choices=self.choices,
                                help=self.help)


@dataclass(frozen=True)
class Action:
    """``eval`` or ``predict`` of a task's finished runs: ``call(run_dir, **flags)`` returns its result, ``report``
    turns the result into the lines the command line prints."""

    call: Callable[..., dict[str, Any]]
    report: Callable[[dict[str, Any]], list[str]]
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class Task:
    """One task: its name, its config class, ``run(cfg, resume=, overwrite=, accept_changes=) -> summary``, the lines
    a summary prints as (``report(cfg, summary)``), and where it has them ``evaluate`` / ``predict`` of its runs.

    ``model_folders`` are the sub-folders of its run that hold a model (``best``, ``model``, ...): ``eval`` and
    ``predict`` take the run folder or any of them. ``legacy_file`` is the file by which folders written before
    ``run.json`` named every run are recognised."""

    name: str
    help: str
    config: type
    run: Callable[..., dict[str, Any]]
    report: Callable[[Any, dict[str, Any]], list[str]]
    description: str = ""
    example: str = ""  # key=value overrides shown in --help
    default_preset: str | None = None
    flags: tuple[Flag, ...] = ()
    evaluate: Action | None = None
    predict: Action | None = None
    model_folders: tuple[str, ...] = ()
    legacy_file: str | None = None

    def run_dir(self, path: str | Path) -> Path:
        """The run folder of ``path`` (the run itself or one of its :attr:`model_folders`)."""
        path = Path(path).expanduser()
        return path.parent if path.name in self.model_folders else path
