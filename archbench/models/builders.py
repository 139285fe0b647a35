"""What a registry builder is, and the checks every builder shares.

A builder turns an entry's ``[args]`` in two steps: ``check`` (cheap, on every registry read: types,
names, files; no torchvision or user model is built) and ``constructor`` (imports and reads what the
model needs, and returns a callable that builds it from overrides such as ``num_classes``; the caller
picks the device context). Both raise :class:`ArgumentError` naming the TOML key, which the registry
turns into one line naming the file (docs/extending.md).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archbench.annotations import matches, type_name


class ArgumentError(ValueError):
    """A registry entry's argument that a builder cannot use; ``key`` is the TOML key, e.g. ``args.layers``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"key '{key}' {problem}")
        self.key = key
        self.problem = problem


class Builder:
    """One value of the registry's ``builder`` key. Subclasses override the three methods."""

    name: str
    # Whether a model built on the meta device and materialised with ``to_empty`` (uninitialised memory)
    # counts FLOPs correctly. True only where no buffer computed in __init__ (e.g. an index table) matters.
    counts_on_empty: bool = False

    def check(self, args: dict, folder: Path) -> None:
        """Cheap validation when the registry is read; raises ArgumentError."""

    def constructor(self, args: dict, folder: Path) -> Callable[..., nn.Module]:
        """A callable that builds the model from overrides; raises ArgumentError, as does the callable."""
        raise NotImplementedError

    def source(self, args: dict, folder: Path) -> dict:
        """Fields that say which code builds the model, for a run record (JSON, no absolute paths)."""
        return {}


@dataclass
class FunctionBuilder(Builder):
    """A plain function of archbench's own (``resnet``, ``vgg``): [args] are its keyword arguments, checked
    against its signature and type hints; ValueError or RuntimeError from it means the values are wrong."""

    name: str
    function: Callable[..., nn.Module]
    counts_on_empty = True  # archbench's own models compute nothing in __init__ that counting reads

    def check(self, args: dict, folder: Path) -> None:
        check_call(self.function, args, f"builder '{self.name}'")
        with torch.device("meta"):  # values the types allow but the builder rejects (e.g. config = "Z")
            self.constructor(args, folder)()

    def constructor(self, args: dict, folder: Path) -> Callable[..., nn.Module]:
        def build(**overrides) -> nn.Module:
            try:
                return self.function(**{**args, **overrides})
            except (ValueError, RuntimeError) as e:
                raise ArgumentError("args", f"is rejected by builder '{self.name}': {one_line(e)}") from None

        return build


def check_call(function: Callable, args: dict, label: str) -> bool:
    """Raise ArgumentError unless ``function(**args, num_classes=...)`` binds: every key a parameter (unless
    it takes ``**kwargs``), every required parameter given, every value of its annotated type. Returns whether
    it takes ``num_classes`` (True where there is no signature to read)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read (some built-ins): the call itself will tell
        return True
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY)}
    try:
        hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    except Exception:  # annotations that do not resolve (forward references, missing imports): no type checks
        hints = {}
    for key, value in args.items():
        if key in hints and key in named:
            check_type(f"args.{key}", value, hints[key])
        elif key not in named and not open_ended:
            raise ArgumentError(f"args.{key}", f"is not an argument of {label} ({', '.join(named) or 'none'})")
    for key, param in named.items():
        if param.default is param.empty and key not in args and key != "num_classes":
            raise ArgumentError(f"args.{key}", f"is missing ({label} requires it)")
    return open_ended or "num_classes" in named


def check_type(key: str, value, expected) -> None:
    """Raise ArgumentError unless a TOML value fits a Python annotation."""
    if not matches(value, expected):
        raise ArgumentError(key, f"must be {type_name(expected)}, got {value!r}")


def one_line(error: BaseException) -> str:
    """An exception's message, first line only (its type name if the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def describe(error: BaseException) -> str:
    """``TypeName: first line``: the one-line summary of an exception raised by code archbench calls."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
