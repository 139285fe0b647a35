"""The model catalogue: one TOML file per architecture (name = file stem), validated on load.

A file names a builder from ``archbench.models.BUILDERS`` and that builder's arguments::

    description = "ResNet-18 (He et al. 2016): ..."
    builder = "resnet"
    [args]
    layers = [2, 2, 2, 2]
    [recipe]            # optional; the only key is lr_scale (multiplies the preset's learning rate)
    lr_scale = 0.1

The folder is, first match wins: the ``path`` argument (``--registry``), ``$ARCHBENCH_REGISTRY``, the
checkout's ``registry/`` beside the package, the copy an installed package carries as
``archbench/registry_files``.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib.resources
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from archbench.errors import ArchbenchError
from archbench.models import BUILDERS

ENV_VAR = "ARCHBENCH_REGISTRY"
CHECKOUT_REGISTRY = Path(__file__).resolve().parent.parent / "registry"
TOP_LEVEL_KEYS: dict[str, type] = {"description": str, "builder": str, "args": dict, "recipe": dict}
RECIPE_KEYS: dict[str, type] = {"lr_scale": float}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    builder: str
    args: dict
    lr_scale: float | None
    path: Path

    def build(self, **overrides) -> nn.Module:
        """A freshly initialised model; ``overrides`` (e.g. ``num_classes=10``) replace TOML arguments."""
        return BUILDERS[self.builder](**{**self.args, **overrides})

    def argument(self, key: str):
        """The argument as the builder sees it: from the TOML, else the builder's default."""
        if key in self.args:
            return self.args[key]
        param = inspect.signature(BUILDERS[self.builder]).parameters.get(key)
        return None if param is None or param.default is inspect.Parameter.empty else param.default

    @property
    def residual(self) -> bool:
        return bool(self.argument("residual"))

    @property
    def batch_norm(self) -> bool:
        return self.builder == "resnet" or bool(self.argument("batch_norm"))  # every ResNet conv has BN

    @cached_property
    def depth(self) -> int:
        """Conv and linear weight layers on the main path (shortcut projections excluded): 18 for resnet18."""
        with torch.device("meta"):
            model = self.build()
        return sum(
            isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name for name, m in model.named_modules()
        )


def resolve_registry_dir(path: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``path`` > $ARCHBENCH_REGISTRY > the checkout's registry/ > the installed copy."""
    given = path if path is not None else os.environ.get(ENV_VAR) or None
    if given is not None:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise ArchbenchError(f"registry folder {folder} does not exist or is not a folder")
        return folder
    for folder in (CHECKOUT_REGISTRY, installed_registry()):
        if folder.is_dir():
            return folder
    raise ArchbenchError(
        f"no model registry found (looked in {CHECKOUT_REGISTRY} and {installed_registry()}); "
        f"pass --registry DIR or set ${ENV_VAR}"
    )


def installed_registry() -> Path:
    """The copy of registry/ an installed package carries (pyproject maps it to archbench.registry_files)."""
    return Path(str(importlib.resources.files("archbench").joinpath("registry_files")))


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Entry]:
    """Every entry of the registry folder, by name; any invalid file is an ArchbenchError naming it."""
    folder = resolve_registry_dir(path)
    entries: dict[str, Entry] = {}
    for file in sorted(folder.glob("*.toml")):
        entry = _load_entry(file)
        clash = next((e for e in entries.values() if e.name.lower() == entry.name.lower()), None)
        if clash is not None:
            raise ArchbenchError(f"{file}: name '{entry.name}' clashes with {clash.path} (names ignore case)")
        entries[entry.name] = entry
    if not entries:
        raise ArchbenchError(f"registry folder {folder} holds no *.toml model files")
    return entries


def list_models(registry: str | os.PathLike | None = None) -> list[str]:
    return sorted(load_registry(registry))


def get_entry(name: str, registry: str | os.PathLike | None = None) -> Entry:
    entries = load_registry(registry)
    if name in entries:
        return entries[name]
    by_lower = {n.lower(): n for n in entries}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f"closest: {', '.join(by_lower[c] for c in close)}" if close else f"known: {', '.join(sorted(entries))}"
    raise ArchbenchError(f"unknown model '{name}'; {hint} (see `archbench list`)")


def build_model(name: str, registry: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """Build a registry entry by name, e.g. ``build_model("resnet18", num_classes=10)``."""
    return get_entry(name, registry).build(**overrides)


def catalogue(registry: str | os.PathLike | None = None) -> list[dict]:
    """One row per entry: name, description, parameters, gflops_224, residual, batch_norm."""
    from archbench.flops import count_gflops, count_parameters

    rows = []
    for entry in load_registry(registry).values():
        # Counting needs shapes, not values: skip the (slow, for VGG's classifier) initialisation.
        with torch.device("meta"):
            model = entry.build()
        model = model.to_empty(device="cpu")
        rows.append(
            {
                "name": entry.name,
                "description": entry.description,
                "parameters": count_parameters(model),
                "gflops_224": count_gflops(model, 224),
                "residual": entry.residual,
                "batch_norm": entry.batch_norm,
            }
        )
        del model
    return rows


def _load_entry(file: Path) -> Entry:
    if not NAME_PATTERN.fullmatch(file.stem):
        raise ArchbenchError(f"{file}: the model name (file stem) may hold only letters, digits, '_', '.', '-'")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ArchbenchError(f"{file}: not valid TOML: {e}") from None

    for key, value in data.items():
        if key not in TOP_LEVEL_KEYS:
            _fail(file, key, f"is not allowed (allowed: {', '.join(TOP_LEVEL_KEYS)})")
        _check_type(file, key, value, TOP_LEVEL_KEYS[key])
    for key in ("description", "builder"):
        if key not in data:
            _fail(file, key, "is missing")
    builder_name = data["builder"]
    if builder_name not in BUILDERS:
        _fail(file, "builder", f"names an unknown builder '{builder_name}' (known: {', '.join(BUILDERS)})")

    builder = BUILDERS[builder_name]
    params = inspect.signature(builder).parameters
    hints = typing.get_type_hints(builder)
    args = data.get("args", {})
    for key, value in args.items():
        if key not in params:
            _fail(file, f"args.{key}", f"is not an argument of builder '{builder_name}' ({', '.join(params)})")
        _check_type(file, f"args.{key}", value, hints[key])
    for key, param in params.items():
        if param.default is inspect.Parameter.empty and key not in args:
            _fail(file, f"args.{key}", f"is missing (builder '{builder_name}' requires it)")

    recipe = data.get("recipe", {})
    for key, value in recipe.items():
        if key not in RECIPE_KEYS:
            _fail(file, f"recipe.{key}", f"is not allowed (allowed: {', '.join(RECIPE_KEYS)})")
        _check_type(file, f"recipe.{key}", value, RECIPE_KEYS[key])
    lr_scale = recipe.get("lr_scale")
    if lr_scale is not None and not lr_scale > 0:
        _fail(file, "recipe.lr_scale", f"must be positive, got {lr_scale}")

    lr_scale = None if lr_scale is None else float(lr_scale)
    entry = Entry(file.stem, data["description"], builder_name, args, lr_scale, file)
    try:  # values the types allow but the builder rejects (e.g. config = "Z"); meta tensors take no memory
        with torch.device("meta"):
            entry.build()
    except (ValueError, RuntimeError) as e:
        _fail(file, "args", f"is rejected by builder '{builder_name}': {e}")
    return entry


def _fail(file: Path, key: str, problem: str) -> typing.NoReturn:
    raise ArchbenchError(f"{file}: key '{key}' {problem}")


def _check_type(file: Path, key: str, value, expected) -> None:
    if not _matches(value, expected):
        name = str(expected) if typing.get_origin(expected) else expected.__name__
        _fail(file, key, f"must be {name.replace('collections.abc.Sequence', 'list')}, got {value!r}")


def _matches(value, expected) -> bool:
    """Whether a TOML value fits a builder annotation (int, float, bool, str, list[...], unions)."""
    origin, inner = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in inner)
    if origin in (list, collections.abc.Sequence):
        return isinstance(value, list) and all(_matches(v, inner[0]) for v in value)
    if expected is float:  # a TOML integer is fine where a float is expected
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is type(None):
        return value is None
    return isinstance(value, expected)
