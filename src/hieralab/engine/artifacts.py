"""What runs leave behind, and reading it back: the folders a task's ``init`` / ``checkpoint`` arguments point at.

* a pretrain run: ``model/`` (the MAE), ``encoder/`` (the encoder alone), ``checkpoints/``, ``config.yaml``;
* a fine-tuning run: ``best/`` and ``last/``, each a classifier (``save_pretrained`` + ``classifier.json``: class
  names and the preprocessing it was trained with);
* any ``save_pretrained`` folder, or an official / timm / T2T-ViT weights file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .. import weights
from ..data import catalog
from ..data.images import is_image_file
from ..errors import CheckpointError, ConfigError, DataError
from ..models import registry
from ..models.checkpoint import from_pretrained, save_pretrained
from ..models.factory import create_model
from . import checkpoints

log = logging.getLogger(__name__)
CLASSIFIER_NAME = "classifier.json"


def data_tag(sources: list[str]) -> str:
    """A name for outputs about some data: ``<first name>-<hash of the absolute paths>``, so that folders of the
    same name in different places never share their results."""
    paths = [str(Path(x).expanduser().resolve()) for x in sources]
    return f"{Path(paths[0]).stem or 'data'}-{hashlib.sha1(chr(0).join(paths).encode()).hexdigest()[:8]}"


def eval_folder_name(source: str, split: str, views: tuple[int, int] | None = None) -> str:
    """``eval-<built-in>-<split>`` (``eval-<dataset>-test``), or for a folder ``eval-<name>-<hash>`` (:func:`data_tag`); video views add
    ``-views5x3``."""
    name = f"eval-{source}-{split}" if catalog.builtin(source) else f"eval-{data_tag([source])}"
    return name + (f"-views{views[0]}x{views[1]}" if views and views != (1, 1) else "")


def input_files(inputs: Sequence[str], wanted: Callable[[Path], bool] = is_image_file, *, what: str = "image files",
                recursive: bool = True) -> list[Path]:
    """The ``wanted`` files named directly or found in folders (recursively unless told, in sorted order): what
    ``predict`` reads; a missing path is an error naming it, and so is finding nothing."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file() and wanted(p))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not found:
        raise DataError(f"no {what} in {', '.join(map(str, inputs))}")
    return found


def image_files(inputs: Sequence[str]) -> list[Path]:
    """The image files of ``inputs`` (:func:`input_files`)."""
    return input_files(inputs)


def resolve_weights(init: str | Path) -> Path:
    """What an ``init`` points at: a pretrain run means its ``encoder/``, a fine-tuning run its ``best/``, anything
    else (a ``save_pretrained`` folder, a weights file) itself; a catalog name (``hiera_base_224.mae_in1k``, see
    ``hieralab weights``) or ``hf-hub:ORG/REPO`` its downloaded file (fetched once into the cache)."""
    path = Path(init).expanduser()
    if not path.exists():
        named = weights.resolve(str(init))
        if named is not None:
            return Path(named)
        raise FileNotFoundError(f"init={init}: no such file or folder (a pretrain run, a save_pretrained folder, a "
                                "checkpoint file, or public weights by name: hieralab weights)")
    if path.is_file() and path.name == "model.safetensors" and (path.parent / "config.json").exists():
        return path.parent  # the weights file of a save_pretrained folder: the folder, with its architecture
    for inner in ("encoder", "best"):
        if (path / inner / "config.json").exists() and not (path / "config.json").exists():
            return path / inner
    return path


def save_classifier(model: nn.Module, name: str, meta: dict[str, Any], folder: Path) -> None:
    """``save_pretrained`` + ``classifier.json`` (``classes``, ``mean``, ``std``, ``img_size``, ...)."""
    model.model_name = name
    save_pretrained(model, folder, extra={CLASSIFIER_NAME: meta})


def classifier_dir(path: str | Path) -> Path:
    """A folder written by :func:`save_classifier`; a fine-tuning run folder means its ``best/``."""
    path = Path(path).expanduser()
    if (path / "best" / CLASSIFIER_NAME).exists():
        path = path / "best"
    if not (path / CLASSIFIER_NAME).exists():
        raise FileNotFoundError(f"{path} is not a classifier folder (config.json, model.safetensors and "
                                f"{CLASSIFIER_NAME}, as finetune writes in best/ and last/)")
    return path


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, meta)`` from :func:`classifier_dir` ``(path)``."""
    path = classifier_dir(path)
    model = from_pretrained(path).eval()
    try:
        meta = json.loads((path / CLASSIFIER_NAME).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CLASSIFIER_NAME} is not valid JSON ({e})") from None
    if len(meta.get("classes", [])) != model.num_classes:
        raise CheckpointError(f"{path / CLASSIFIER_NAME} names {len(meta.get('classes', []))} classes, the model has "
                              f"{model.num_classes}")
    return model, meta


def run_config(path: Path) -> dict[str, Any]:
    """A run folder's resolved ``config.yaml`` (empty when there is none)."""
    try:
        data = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_mae(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An MAE from a pretraining run folder (its ``model/``, else its newest checkpoint) or a ``save_pretrained``
    folder; also returns the run's config (empty if there is none)."""
    path = Path(path).expanduser()
    run_cfg = run_config(path)
    if (path / "model" / "config.json").exists():
        return from_pretrained(path / "model"), run_cfg
    if (path / "config.json").exists():
        return from_pretrained(path), run_cfg
    last = checkpoints.latest(path / "checkpoints")
    if last is None or not run_cfg:
        raise FileNotFoundError(f"{path} is neither a pretraining run folder nor a save_pretrained folder")
    name = run_cfg.get("model", "")
    if name not in registry.list_models() or not getattr(registry.model_class(name), "is_mae", False):
        raise CheckpointError(f"{path} is a run of {name or 'an unknown model'}, not an MAE pretraining run; pass a "
                              "pretrain run folder or an MAE's save_pretrained folder")
    model = create_model(name, **run_cfg.get("model_args", {}))
    checkpoints.load(last, model)
    return model, run_cfg


def check_model(name: str, args: dict[str, Any], *, mae: bool) -> None:
    """``model`` and ``model_args`` checked before anything is built: a registered name of the right kind (an MAE
    for pretraining, an encoder otherwise) and constructor overrides its signature takes, with values of the right
    type; a :class:`ConfigError` listing every problem."""
    try:
        registry.check_name(name)
    except KeyError as e:
        raise ConfigError([f"model={name!r}: {e.args[0]}"]) from None
    is_mae = getattr(registry.model_class(name), "is_mae", False)
    if mae and not is_mae:
        raise ConfigError([f"model={name!r} is not an MAE model; pretrain takes mae_* names (hieralab list 'mae_*')"])
    if not mae and is_mae:
        raise ConfigError([f"model={name!r} is an MAE model; name its encoder ({name.removeprefix('mae_')}) and "
                           "pass the pretrain run as init"])
    problems = registry.check_args(name, args)
    if problems:
        raise ConfigError(problems)
