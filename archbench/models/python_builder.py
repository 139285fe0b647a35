"""``builder = "python"``: a network of your own, from a callable in a .py file or an importable module.

``target`` (``"mynet.py:make_net"`` beside the TOML, or ``"mypackage.models:make_net"``) is the one
argument archbench reads; the rest go to the callable with ``num_classes`` (docs/extending.md). Reading
the registry only checks that ``target`` is well formed and that a named file exists; the code is
imported when the entry is built, a file afresh on each build with its folder on ``sys.path`` meanwhile.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import operator
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

from torch import nn

from archbench.catalogue import python_code_sha256
from archbench.config import DEFAULT_NUM_CLASSES
from archbench.models.builders import ArgumentError, Builder, check_call, check_type, describe

TARGET = re.compile(r"(?P<where>[^:]+):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)")
MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
EXAMPLE = '"mynet.py:make_net" or "mypackage.models:make_net"'


class PythonBuilder(Builder):
    name = "python"

    def check(self, args: dict, folder: Path) -> None:
        target = args.get("target")
        if target is None:
            raise ArgumentError("args.target", f"is missing (the callable that builds the model: {EXAMPLE})")
        check_type("args.target", target, str)
        match = TARGET.fullmatch(target)
        where = match.group("where") if match else ""
        if not (where.endswith(".py") or MODULE.fullmatch(where)):
            raise ArgumentError("args.target", f"must be {EXAMPLE}, got {target!r}")
        if where.endswith(".py") and Path(where).is_absolute():
            raise ArgumentError("args.target", f"must name a file relative to the TOML's folder, got '{where}'")
        if where.endswith(".py") and not (folder / where).is_file():
            raise ArgumentError("args.target", f"names {where}, which is not a file in {folder}")

    def constructor(self, args: dict, folder: Path) -> Callable[..., nn.Module]:
        target = args["target"]
        function = load_target(target, folder)
        kwargs = {k: v for k, v in args.items() if k != "target"}
        if not check_call(function, kwargs, target):
            raise ArgumentError("args.target", f"names {target}, which must take a num_classes argument")

        def build(**overrides) -> nn.Module:
            try:
                model = function(**{"num_classes": DEFAULT_NUM_CLASSES, **kwargs, **overrides})
            except Exception as e:  # the user's code: whatever it raises is a problem with this entry
                raise ArgumentError("args", f"is rejected by {target}: {describe(e)}") from None
            if not isinstance(model, nn.Module):
                kind = type(model).__name__
                raise ArgumentError("args.target", f"names {target}, which returned {kind}, not a torch.nn.Module")
            return model

        return build

    def source(self, args: dict, folder: Path) -> dict:
        """The target and the sha256 of its code (`archbench.catalogue.python_code`)."""
        target = args["target"]
        try:
            digest = python_code_sha256(target, folder)
        except (OSError, ImportError) as e:
            raise ArgumentError("args.target", f"names code that cannot be read: {describe(e)}") from None
        return {"target": target, "source_sha256": digest}


def load_target(target: str, folder: Path) -> Callable:
    where, _, attr = target.rpartition(":")
    try:
        module = _execute_file(folder / where) if where.endswith(".py") else importlib.import_module(where)
    except Exception as e:
        raise ArgumentError("args.target", f"cannot be imported: {describe(e)}") from None
    try:
        found = operator.attrgetter(attr)(module)
    except AttributeError:
        raise ArgumentError("args.target", f"names '{attr}', which {where} does not define") from None
    if not callable(found):
        raise ArgumentError("args.target", f"names '{attr}' in {where}, a {type(found).__name__}, not a callable")
    return found


def _execute_file(path: Path) -> types.ModuleType:
    """Import a .py file as a module of its own name-spaced name (never shadowing an installed module)."""
    path = path.resolve()
    name = f"archbench_target_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and torch.compile look modules up here
    for sibling in path.parent.glob("*.py"):  # its imports of them load these files as they are now, never
        sys.modules.pop(sibling.stem, None)  # another folder's or an earlier version's module of that name
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module
