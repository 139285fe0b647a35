"""The model catalogue: one TOML file per architecture (name = file stem), validated on load.

A file names a builder from ``archbench.models.BUILDERS`` and that builder's arguments::

    description = "ResNet-18 (He et al. 2016): ..."
    builder = "resnet"
    [args]
    layers = [2, 2, 2, 2]
    [recipe]            # optional; the only key is lr_scale (multiplies the preset's learning rate)
    lr_scale = 0.1

Builders: ``resnet`` and ``vgg`` (archbench's own), ``torchvision`` (``[args] name = "convnext_tiny"`` plus
the constructor's keyword arguments) and ``python`` (``[args] target = "mynet.py:make_net"`` plus the
callable's keyword arguments). Reading a folder checks every file cheaply (keys, types, names, files);
torchvision and user code are built only when an entry is used (``Entry.build``, ``check_forward``,
``catalogue``). Every problem is an ArchbenchError of one line naming the file and the key.

The folder is, first match wins: the ``path`` argument (``--registry``), ``$ARCHBENCH_REGISTRY``, the
checkout's ``registry/`` beside the package, the copy an installed package carries as
``archbench/registry_files`` (``archbench.catalogue.resolve_registry_dir``, which, like the cached
``catalogue``, imports no torch).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import os
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

from archbench.catalogue import catalogue, registry_files, resolve_registry_dir  # noqa: F401 (catalogue: re-exported)
from archbench.devices import available_memory
from archbench.errors import ArchbenchError
from archbench.models import BUILDERS, ArgumentError, ModelTraits, read_traits
from archbench.models.builders import check_type, describe

TOP_LEVEL_KEYS: dict[str, type] = {"description": str, "builder": str, "args": dict, "recipe": dict}
RECIPE_KEYS: dict[str, type] = {"lr_scale": float}
# (builder, folder, arguments) that passed the builder's check in this process: the registry is read again
# by every lookup, and the check of an archbench builder builds the model on the meta device (~25 ms).
_CHECKED: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Entry:
    """One registry file: what to build (``builder`` and ``args``), how to train it (``lr_scale``), and
    what the built model is (``traits``: residual, batch_norm, depth, read from the module itself)."""

    name: str
    description: str
    builder: str
    args: dict
    lr_scale: float | None
    path: Path  # the TOML file on this machine, for messages and display; identity() records its hash
    toml_sha256: str

    def build(self, **overrides) -> nn.Module:
        """A freshly initialised model; ``overrides`` (e.g. ``num_classes=10``) replace TOML arguments."""
        make = self._constructor()
        try:
            return make(**overrides)
        except ArgumentError as e:
            raise _error(self.path, e.key, e.problem) from None

    def build_on_meta(self, **overrides) -> nn.Module:
        """The model on the meta device: its structure and shapes without memory or initialisation.

        Code that cannot run on the meta device (sizes computed from tensor values, say) is built for real
        on the CPU instead; if that fails too, its error is the one raised.
        """
        make = self._constructor()  # imports happen outside the meta context, so module-level tensors are real
        try:
            with torch.device("meta"):
                return make(**overrides)
        except ArgumentError:
            return self.build(**overrides)

    def build_for_counting(self, **overrides) -> nn.Module:
        """A CPU model whose parameters and FLOPs are right but whose values may not be: where the builder
        allows, built on the meta device and given uninitialised memory (VGG's initialisation is slow)."""
        if BUILDERS[self.builder].counts_on_empty:
            return self.build_on_meta(**overrides).to_empty(device="cpu")
        return self.build(**overrides)

    @cached_property
    def traits(self) -> ModelTraits:
        """Residual, batch norm and depth, read from the model built on the meta device."""
        return read_traits(self.build_on_meta())

    @property
    def residual(self) -> bool | None:
        """Whether the forward pass adds two activations; None if its graph could not be traced."""
        return self.traits.residual

    @property
    def batch_norm(self) -> bool:
        return self.traits.batch_norm

    @property
    def depth(self) -> int:
        """Conv and linear layers on the longest input-to-output path: 18 for resnet18 and resnet18_plain."""
        return self.traits.depth

    def identity(self) -> dict:
        """Which model a run trained, as portable JSON: no path of this machine, the TOML file's sha256,
        and for a ``python`` entry its ``target`` and the sha256 of its code (the files it may import too,
        `archbench.catalogue.python_code`), so that a change to any of them is another model."""
        try:
            source = BUILDERS[self.builder].source(self.args, self.path.parent)
        except ArgumentError as e:
            raise _error(self.path, e.key, e.problem) from None
        return {
            "name": self.name,
            "builder": self.builder,
            "args": _plain(copy.deepcopy(self.args)),
            "description": self.description,
            "lr_scale": self.lr_scale,
            "toml_sha256": self.toml_sha256,
            "residual": self.residual,
            "batch_norm": self.batch_norm,
            "depth": self.depth,
            **source,
        }

    def _constructor(self):
        try:
            return BUILDERS[self.builder].constructor(self.args, self.path.parent)
        except ArgumentError as e:
            raise _error(self.path, e.key, e.problem) from None


def check_forward(entry: Entry, image_size: int, num_classes: int) -> None:
    """Raise one ArchbenchError line naming the entry's file unless its model, built for ``num_classes``,
    maps ``image_size`` x ``image_size`` RGB images to one row of ``num_classes`` logits per image: in
    training mode (a batch of 2, as batch norm needs) and in eval mode (a batch of 1); and unless it can
    learn: it has trainable parameters, its training-mode output requires grad (the loss reaches a
    parameter), and its backward pass runs.

    Runs on the meta device: no memory, no arithmetic. Where the model cannot be built or run there (an
    op without a meta kernel, sizes read from values), it is decided on a real CPU build. The global RNG
    state is left as it was, so seeding after this call is unaffected.
    """
    with torch.random.fork_rng(devices=[]):
        model = entry.build_on_meta(num_classes=num_classes)
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0, device="meta")).device
        problem, error = _forward_problem(model, image_size, num_classes, device)
        if device.type == "meta" and error is not None and _meta_only(error):
            model = entry.build(num_classes=num_classes)
            problem, _ = _forward_problem(model, image_size, num_classes, torch.device("cpu"))
    if problem is not None:
        _fail(entry.path, "args", f"builds a model that {problem}")


def _forward_problem(
    model: nn.Module, image_size: int, num_classes: int, device: torch.device
) -> tuple[str | None, Exception | None]:
    """What is wrong with the model's forward and backward passes at this size (None if nothing), and the
    exception. Training mode runs with autograd, then a backward pass to every trainable parameter."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return "cannot learn: it has no trainable parameters (none requires grad); make some trainable", None
    cannot_run = f"cannot run on {image_size}x{image_size} input"
    for training, batch in ((True, 2), (False, 1)):
        mode = "training" if training else "eval"
        model.train(training)
        try:
            with torch.set_grad_enabled(training):
                out = model(torch.zeros(batch, 3, image_size, image_size, device=device))
        except Exception as e:  # whatever the model raises is a problem with this entry at this size
            return f"{cannot_run}: {describe(e)} (in {mode} mode)", e
        if not isinstance(out, torch.Tensor):
            return f"{cannot_run}: in {mode} mode it returns {type(out).__name__}, not a tensor of logits", None
        if tuple(out.shape) != (batch, num_classes):
            shape, want = tuple(out.shape), (batch, num_classes)
            return f"{cannot_run}: in {mode} mode its output for {batch} image(s) has shape {shape}, not {want}", None
        if training and not out.requires_grad:
            return (
                "cannot learn: its output in training mode does not require grad, so the loss reaches no "
                "parameter; compute it without torch.no_grad or detach",
                None,
            )
        if training:  # the backward pass, as far as the parameters (some may be unused)
            try:
                torch.autograd.grad(out.float().sum(), trainable, allow_unused=True)
            except Exception as e:
                return f"{cannot_run}: its backward pass fails: {describe(e)}", e
    return None, None


def training_memory(entry: Entry, image_size: int, num_classes: int, batch_size: int, dtype: torch.dtype) -> int | None:
    """Bytes one training step needs at least: every layer's output in training mode at ``dtype`` (what
    backward keeps; an in-place layer's output is its input, counted once), plus the parameters, their
    gradients and momentum in fp32. Counted by a forward pass on the meta device; None where the model
    cannot run there (no estimate is better than a slow one)."""
    sizes = []

    def count(module: nn.Module, args: tuple, out) -> None:
        if isinstance(out, torch.Tensor) and not any(out is arg for arg in args):
            sizes.append(out.numel())

    with torch.random.fork_rng(devices=[]):
        model = entry.build_on_meta(num_classes=num_classes)
        if any(p.device.type != "meta" for p in model.parameters()):  # built for real: no cheap estimate
            return None
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            with torch.no_grad():
                model.train()(torch.zeros(batch_size, 3, image_size, image_size, device="meta"))
        except Exception:  # an op without a meta kernel, say: check_forward has judged the model
            return None
        finally:
            for hook in hooks:
                hook.remove()
    return sum(sizes) * dtype.itemsize + 3 * 4 * sum(p.numel() for p in model.parameters())


def check_memory(
    entry: Entry, image_size: int, num_classes: int, batch_size: int, device: torch.device, dtype: torch.dtype
) -> None:
    """Raise one ArchbenchError line unless one training step of the entry at this size and batch
    (`training_memory`) fits in the memory `device` has available now."""
    available = available_memory(device)
    needed = None if available is None else training_memory(entry, image_size, num_classes, batch_size, dtype)
    if needed is not None and needed > available:
        raise ArchbenchError(
            f"--image-size {image_size} needs at least {needed / 2**20:,.1f} MiB for one training step of "
            f"{entry.name} at a batch of {batch_size}, more than the {available / 2**20:,.1f} MiB available on "
            f"{device}: lower --image-size or --batch-size."
        )


def _meta_only(error: Exception) -> bool:
    """Whether an error on the meta device may not happen on real tensors (no kernel, no data to read)."""
    return isinstance(error, NotImplementedError) or "meta" in str(error).lower()


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Entry]:
    """Every entry of the registry folder, by name; any invalid file is an ArchbenchError naming it."""
    return {file.stem: _load_entry(file) for file in registry_files(resolve_registry_dir(path))}


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


def _load_entry(file: Path) -> Entry:
    raw = file.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
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
    args = data.get("args", {})
    checked = (builder_name, str(file.parent.resolve()), repr(args))
    if checked not in _CHECKED:
        try:
            BUILDERS[builder_name].check(args, file.parent)
        except ArgumentError as e:
            raise _error(file, e.key, e.problem) from None
        _CHECKED.add(checked)

    recipe = data.get("recipe", {})
    for key, value in recipe.items():
        if key not in RECIPE_KEYS:
            _fail(file, f"recipe.{key}", f"is not allowed (allowed: {', '.join(RECIPE_KEYS)})")
        _check_type(file, f"recipe.{key}", value, RECIPE_KEYS[key])
    lr_scale = recipe.get("lr_scale")
    if lr_scale is not None and not lr_scale > 0:
        _fail(file, "recipe.lr_scale", f"must be positive, got {lr_scale}")

    lr_scale = None if lr_scale is None else float(lr_scale)
    sha256 = hashlib.sha256(raw).hexdigest()
    return Entry(file.stem, data["description"], builder_name, args, lr_scale, file, sha256)


def _error(file: Path, key: str, problem: str) -> ArchbenchError:
    return ArchbenchError(f"{file}: key '{key}' {problem}")


def _fail(file: Path, key: str, problem: str) -> typing.NoReturn:
    raise _error(file, key, problem)


def _check_type(file: Path, key: str, value, expected) -> None:
    try:
        check_type(key, value, expected)
    except ArgumentError as e:
        raise _error(file, e.key, e.problem) from None


def _plain(value):
    """TOML values as JSON can hold them: dates and times become ISO 8601 strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return value
