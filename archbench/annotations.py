"""Whether a TOML or JSON value fits a Python annotation, and the annotation as a reader writes it: the one type
check of the registry's TOML, a builder's arguments and a data set's manifest. Imports no torch."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing


def matches(value, expected) -> bool:
    """Whether a TOML value fits an annotation: int, float, bool, str, None, lists, tuples, dicts, unions.

    A TOML integer fits ``float``; a bool fits neither ``int`` nor ``float``; a TOML array fits ``list``,
    ``Sequence`` and ``tuple``. ``Any`` fits everything; a callable or module annotation fits no TOML value.
    """
    if expected is typing.Any or expected is inspect.Parameter.empty or isinstance(expected, typing.TypeVar):
        return True
    origin, inner = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, t) for t in inner)
    if origin is typing.Literal:
        return value in inner
    if origin in (list, collections.abc.Sequence) or (origin is tuple and inner[-1:] == (Ellipsis,)):
        return isinstance(value, list) and (not inner or all(matches(v, inner[0]) for v in value))
    if origin is tuple:
        return isinstance(value, list) and (
            not inner or (len(value) == len(inner) and all(matches(v, t) for v, t in zip(value, inner)))
        )
    if origin is dict:
        return isinstance(value, dict) and (not inner or all(matches(v, inner[1]) for v in value.values()))
    if origin is collections.abc.Callable or expected is collections.abc.Callable:
        return False  # no TOML value is callable
    if expected in (int, float):
        return isinstance(value, (int, float) if expected is float else int) and not isinstance(value, bool)
    if expected is None:
        return value is None
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # an annotation this check does not understand: leave it to the constructor


def type_name(expected) -> str:
    """An annotation as a reader writes it: ``list[int]``, ``float | None``, ``Callable[..., Module]``."""
    origin, inner = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(t) for t in inner)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, inner))
    if expected is Ellipsis:
        return "..."
    if expected is type(None) or expected is None:
        return "None"
    if origin is not None:
        name = {collections.abc.Sequence: "list", collections.abc.Callable: "Callable"}.get(origin)
        name = name or getattr(origin, "__name__", str(origin).replace("typing.", ""))
        if origin is collections.abc.Callable and inner and isinstance(inner[0], list):
            return f"Callable[[{', '.join(type_name(t) for t in inner[0])}], {type_name(inner[1])}]"
        return f"{name}[{', '.join(type_name(t) for t in inner)}]" if inner else name
    return getattr(expected, "__name__", str(expected).replace("typing.", ""))
