"""Named model configurations. A variant is data: a dict of constructor arguments on top of its family's class.

This module knows names, classes and their signatures, nothing about weights: :func:`build` makes a model,
``models.factory.create_model`` adds checkpoints on top.
"""

from __future__ import annotations

import collections.abc
import fnmatch
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, dict[str, Any]] = {}
# The packages whose import registers a family of models; imported on the first look-up, so that every name is
# known however the registry was reached (``import hieralab`` itself imports nothing until used).
FAMILIES = ("hieralab.models", "hieralab.mae")
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in FAMILIES:
            importlib.import_module(package)


def register(name: str, builder: Callable[..., nn.Module], **config: Any) -> None:
    """Register ``name`` as ``builder(**config)``."""
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    _BUILDERS[name] = builder
    _CONFIGS[name] = config


def list_models(pattern: str = "*", *, dense: bool = False) -> list[str]:
    """Registered model names matching a glob ``pattern``, sorted: the encoders and MAEs (with ``dense``, also the
    detector and segmenter wrappers, which take any encoder)."""
    _load_families()
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern)
                  and (dense or not getattr(_BUILDERS[n], "is_dense", False)))


def model_config(name: str) -> dict[str, Any]:
    """The constructor arguments registered for ``name`` (a copy)."""
    check_name(name)
    return dict(_CONFIGS[name])


def model_class(name: str) -> Callable[..., nn.Module]:
    """The class (builder) registered for ``name``."""
    check_name(name)
    return _BUILDERS[name]


def build(name: str, **overrides: Any) -> nn.Module:
    """``name``'s class with its registered arguments and ``overrides`` on top; no weights are read."""
    check_name(name)
    model = _BUILDERS[name](**{**_CONFIGS[name], **overrides})
    model.model_name = name
    return model


def check_name(name: str) -> None:
    _load_families()
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}: see hieralab.list_models(){hint}")


# ---------------------------------------------------------------- constructor arguments, checked before building
def constructor_parameters(cls: Callable[..., nn.Module]) -> dict[str, tuple[Any, Any]]:
    """``{argument: (annotation, default)}`` of a model class's constructor; an MAE's ``**encoder_args`` are its
    ``encoder_class``'s arguments."""
    init = cls.__init__ if isinstance(cls, type) else cls
    hints = typing.get_type_hints(init)
    out: dict[str, tuple[Any, Any]] = {}
    for name, p in inspect.signature(init).parameters.items():
        if name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            inner = getattr(cls, "encoder_class", None)
            if inner is not None:
                out = {**constructor_parameters(inner), **out}
            continue
        out[name] = (hints.get(name, Any), p.default)
    return out


def check_args(name: str, args: dict[str, Any], prefix: str = "model_args.") -> list[str]:
    """What is wrong with ``args`` as constructor overrides of model ``name``: unknown names and values of the wrong
    type, one line each (empty when they are fine)."""
    check_name(name)
    params = constructor_parameters(_BUILDERS[name])
    problems = []
    for key, value in args.items():
        if key not in params:
            close = [k for k in params if key.lower() in k.lower() or k.lower() in key.lower()][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else f"; it takes {', '.join(sorted(params))}"
            problems.append(f"{prefix}{key}: {name} has no argument {key!r}{hint}")
        elif (wrong := type_problem(params[key][0], value)) is not None:
            problems.append(f"{prefix}{key}={value!r}: must be {wrong}")
    return problems


def type_problem(annotation: Any, value: Any) -> str | None:
    """None when ``value`` fits ``annotation`` (the annotation forms model constructors use: int, float, bool, str,
    ``X | None``, ``Sequence[X]``, ``tuple[X, ...]``), else the expected type in words."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        problems = [type_problem(a, value) for a in options if a is not type(None)]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if origin in (collections.abc.Sequence, tuple, list):
        inner = [a for a in typing.get_args(annotation) if a is not Ellipsis] or [Any]
        if not isinstance(value, (list, tuple)):
            return f"a list of {_name(inner[0])}"
        bad = [type_problem(inner[0] if len(inner) == 1 else inner[min(i, len(inner) - 1)], v)
               for i, v in enumerate(value)]
        return None if all(b is None for b in bad) else f"a list of {_name(inner[0])}"
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    return None


def _name(tp: Any) -> str:
    return {int: "whole numbers", float: "numbers", bool: "true/false", str: "strings"}.get(tp, "values")
