"""Whether a TOML or JSON value fits a Python annotation, and the annotation as a reader writes it: the one type
check of the registry's TOML, a builder's arguments, a data set's manifest and a tuning file. Imports no torch."""

from __future__ import annotations

import collections.abc
import inspect
import json
import types
import typing


def matches(value, expected) -> bool:
    """Whether a TOML value fits an annotation: int, float, bool, str, None, lists, tuples, dicts, unions.

    A TOML integer fits ``float``; a bool fits neither ``int`` nor ``float``; a TOML array fits ``list``,
    ``Sequence`` and ``tuple``; a table fits a TypedDict (`json_problem` checks its fields). ``Any`` fits
    everything; a callable or module annotation fits no TOML value.
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
    if typing.is_typeddict(expected):
        return isinstance(value, dict)
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


# How a JSON file's reader names the types of `json_problem`'s messages.
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}


def json_problem(value, expected, where: str = "") -> str | None:
    """Where a JSON value (the field `where`) does not fit `expected`, in words; None when it does. A TypedDict is
    an object whose fields may be absent or null only where their annotation allows None; the items of a list and
    the values of an object are checked one by one, so that the message names the item."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        present = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is not None and len(present) == 1:  # `X | None`: a value present is an X
            expected = present[0]
    origin, inner = typing.get_origin(expected), typing.get_args(expected)
    if not (isinstance(value, origin) if origin in (list, dict) else matches(value, expected)):
        return f"{where} is {json.dumps(value)[:40]}, not {_json_name(expected)}"
    if typing.is_typeddict(expected):
        for key, hint in typing.get_type_hints(expected).items():
            field = f"{where}.{key}" if where else key
            if value.get(key) is None and not matches(None, hint):
                return f"{field} is missing"
            if problem := json_problem(value.get(key), hint, field):
                return problem
        return None
    if origin is list:
        items = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    elif origin is dict:
        items = [(f"{where}.{key}", item) for key, item in value.items()]
    else:
        return None
    return next(filter(None, (json_problem(item, inner[-1], field) for field, item in items)), None)


def _json_name(expected) -> str:
    origin, inner = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_json_name(t) for t in inner if t is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, inner))
    return "an object" if typing.is_typeddict(expected) else JSON_NAMES[origin or expected]
