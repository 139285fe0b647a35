"""The model registry: one TOML file per architecture (name = file stem), checked on load.

A file names a builder of ``archbench.models.BUILDERS`` and its ``[args]``, with a description and an
optional ``[recipe] lr_scale``; docs/extending.md shows the format and the four builders. Reading a folder
checks every file cheaply (keys, types, names, files); torchvision and user code are built only when an
entry is used. Every problem is an ArchbenchError of one line naming the file and the key. The folder is
found by `archbench.catalogue.resolve_registry_dir`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from archbench.catalogue import catalogue, read_toml, registry_files, resolve_registry_dir, tomllib  # noqa: F401
from archbench.devices import available_memory
from archbench.errors import ArchbenchError
from archbench.models import BUILDERS, ArgumentError, ModelTraits, read_traits
from archbench.models.builders import check_type, describe

TOP_LEVEL_KEYS: dict[str, type] = {"description": str, "builder": str, "args": dict, "recipe": dict}
RECIPE_KEYS: dict[str, type] = {"lr_scale": float}
NO_GRAD = "does not require grad, so the loss reaches no parameter; compute it without torch.no_grad or detach"
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
        with naming(self.path):
            return make(**overrides)

    def build_on_meta(self, **overrides) -> nn.Module:
        """The model on the meta device: its structure and shapes without memory or initialisation. Code that
        cannot run there (sizes computed from tensor values, say) is built on the CPU instead."""
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
        return self.traits.residual

    @property
    def batch_norm(self) -> bool:
        return self.traits.batch_norm

    @property
    def depth(self) -> int:
        return self.traits.depth

    def identity(self) -> dict:
        """Which model a run trained, as portable JSON: no path of this machine, the TOML file's sha256 and
        what the builder says of its code (a ``python`` entry's ``target`` and ``source_sha256``)."""
        with naming(self.path):
            source = BUILDERS[self.builder].source(self.args, self.path.parent)
        return {
            "name": self.name,
            "builder": self.builder,
            "args": json.loads(json.dumps(self.args, default=lambda v: v.isoformat())),  # TOML dates as ISO 8601
            "description": self.description,
            "lr_scale": self.lr_scale,
            "toml_sha256": self.toml_sha256,
            "residual": self.residual,
            "batch_norm": self.batch_norm,
            "depth": self.depth,
            **source,
        }

    def _constructor(self):
        with naming(self.path):
            return BUILDERS[self.builder].constructor(self.args, self.path.parent)


def check_forward(entry: Entry, image_size: int, num_classes: int) -> None:
    """Raise one ArchbenchError line naming the entry's file unless its model maps ``image_size`` squared RGB
    images to ``num_classes`` logits each, in training mode (a batch of 2, as batch norm needs) and eval mode
    (a batch of 1), and can learn (docs/extending.md). Runs on the meta device, or on a real CPU build where
    the meta device cannot decide; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = entry.build_on_meta(num_classes=num_classes)
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0, device="meta")).device
        problem, error = _forward_problem(model, image_size, num_classes, device)
        if device.type == "meta" and error is not None and _meta_only(error):
            model = entry.build(num_classes=num_classes)
            problem, _ = _forward_problem(model, image_size, num_classes, torch.device("cpu"))
    if problem is not None:
        raise ArchbenchError(f"{entry.path}: key 'args' builds a model that {problem}")


def _forward_problem(
    model: nn.Module, image_size: int, num_classes: int, device: torch.device
) -> tuple[str | None, Exception | None]:
    """What is wrong with the model's forward and backward passes at this size (None if nothing), and the
    exception."""
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
            return f"cannot learn: its output in training mode {NO_GRAD}", None
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
    raw, data = read_toml(file)
    with naming(file):
        _check_table(data, TOP_LEVEL_KEYS)
        for key in ("description", "builder"):
            if key not in data:
                raise ArgumentError(key, "is missing")
        builder = data["builder"]
        if builder not in BUILDERS:
            raise ArgumentError("builder", f"names an unknown builder '{builder}' (known: {', '.join(BUILDERS)})")
        args = data.get("args", {})
        checked = (builder, str(file.parent.resolve()), repr(args))
        if checked not in _CHECKED:
            BUILDERS[builder].check(args, file.parent)
            _CHECKED.add(checked)
        recipe = data.get("recipe", {})
        _check_table(recipe, RECIPE_KEYS, "recipe.")
        lr_scale = recipe.get("lr_scale")
        if lr_scale is not None and not lr_scale > 0:
            raise ArgumentError("recipe.lr_scale", f"must be positive, got {lr_scale}")
    lr_scale = None if lr_scale is None else float(lr_scale)
    return Entry(file.stem, data["description"], builder, args, lr_scale, file, hashlib.sha256(raw).hexdigest())


def _check_table(table: dict, schema: dict[str, type], prefix: str = "") -> None:
    """Raise ArgumentError for a key the schema does not name or a value not of its type."""
    for key, value in table.items():
        if key not in schema:
            raise ArgumentError(prefix + key, f"is not allowed (allowed: {', '.join(schema)})")
        check_type(prefix + key, value, schema[key])


@contextlib.contextmanager
def naming(file: Path):
    """A builder's ArgumentError as the one-line ArchbenchError that names the file and the key."""
    try:
        yield
    except ArgumentError as e:
        raise ArchbenchError(f"{file}: {e}") from None
