"""``builder = "torchvision"``: any image classifier of ``torchvision.models``, trained from scratch with the
data's ``num_classes`` (docs/extending.md). Reading the registry checks only the name and the arguments'
names and types, from signatures; the model is built when the entry is used.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path

from torch import nn

from archbench.config import DEFAULT_NUM_CLASSES
from archbench.models.builders import ArgumentError, Builder, check_type, describe

FROM_SCRATCH = ("weights", "progress")  # get_model arguments archbench sets itself
UNBOUND = r"(unexpected keyword|multiple values for (?:keyword )?)argument '(\w+)'"  # a TypeError's words
# Where a constructor takes them (GoogLeNet, Inception-v3): one output, as the loop trains on one, and the
# model's own initialisation, without the warning torchvision gives when it is left unset.
OWN_DEFAULTS = {"aux_logits": False, "init_weights": True}
# Other torchvision model families, by the module list_models() is asked with: not image classifiers.
OTHER_TASKS = {
    "detection": "an object detection",
    "segmentation": "a semantic segmentation",
    "video": "a video classification",
    "optical_flow": "an optical flow",
    "quantization": "a quantized (inference-only)",
}


class TorchvisionBuilder(Builder):
    name = "torchvision"

    def check(self, args: dict, folder: Path) -> None:
        name = _classifier_name(args)
        if args.get("aux_logits") is True:
            raise ArgumentError("args.aux_logits", "must be false: archbench trains on the main output only")
        accepted = constructor_parameters(name)
        for key, value in args.items():
            if key in FROM_SCRATCH:
                raise ArgumentError(f"args.{key}", "is set by archbench: models are always trained from scratch")
            if key == "name" or accepted is None:  # None: the signatures could not be read, the constructor checks
                continue
            if key not in accepted:
                known = ", ".join(sorted(accepted))
                raise ArgumentError(f"args.{key}", f"is not an argument of torchvision's {name} ({known})")
            check_type(f"args.{key}", value, accepted[key])

    def constructor(self, args: dict, folder: Path) -> Callable[..., nn.Module]:
        from torchvision.models import get_model_builder

        name = args["name"]
        function = get_model_builder(name)
        accepted = constructor_parameters(name) or {}
        own_defaults = {k: v for k, v in OWN_DEFAULTS.items() if k in accepted}
        kwargs = {"num_classes": DEFAULT_NUM_CLASSES, **own_defaults, **{k: v for k, v in args.items() if k != "name"}}

        def build(**overrides) -> nn.Module:
            try:
                return function(weights=None, **{**kwargs, **overrides})
            except Exception as e:  # e.g. ValueError: resnext50_32x4d with groups = 2
                match = isinstance(e, TypeError) and re.search(UNBOUND, str(e))
                if match:
                    problem = "is not an argument of" if match.group(1).startswith("unexpected") else "is fixed by"
                    raise ArgumentError(f"args.{match.group(2)}", f"{problem} torchvision's {name}") from None
                raise ArgumentError("args", f"is rejected by torchvision's {name}: {describe(e)}") from None

        return build


def _classifier_name(args: dict) -> str:
    """``args.name``, checked to be one of torchvision's image classifiers."""
    name = args.get("name")
    if name is None:
        raise ArgumentError("args.name", 'is missing (the torchvision model, e.g. name = "resnet50")')
    check_type("args.name", name, str)
    import torchvision.models

    classifiers = torchvision.models.list_models(module=torchvision.models)
    if name in classifiers:
        return name
    for task, kind in OTHER_TASKS.items():
        if name in torchvision.models.list_models(module=getattr(torchvision.models, task)):
            raise ArgumentError("args.name", f"'{name}' is {kind} model; only image classifiers can be trained here")
    close = difflib.get_close_matches(name.lower(), classifiers, n=3, cutoff=0.6)
    hint = f"closest: {', '.join(close)}" if close else "see torchvision.models.list_models(module=torchvision.models)"
    raise ArgumentError("args.name", f"'{name}' is not a torchvision image classifier ({hint})")


@cache
def constructor_parameters(name: str) -> dict[str, typing.Any] | None:
    """Every keyword a torchvision classifier's constructor takes, with its annotation: the union of the
    named parameters along the chain its ``**kwargs`` travel (module-level helpers such as ``_resnet``, then
    the model class it returns), since some classes take ``**kwargs`` and ignore a misspelt one. None where
    the chain cannot be read (no return annotation), so that nothing is rejected on a guess."""
    from torchvision.models import get_model_builder

    function = inspect.unwrap(get_model_builder(name))
    try:
        model_class = typing.get_type_hints(function).get("return")
    except Exception:
        return None
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        return None
    found: dict[str, typing.Any] = {}
    for callee in (*_helpers(function), model_class.__init__):  # the class last: its annotations win
        try:
            hints = typing.get_type_hints(callee)
        except Exception:
            hints = {}
        for key, param in inspect.signature(callee).parameters.items():
            variadic = param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
            if key != "self" and key not in FROM_SCRATCH and not variadic:
                found[key] = hints.get(key, param.annotation)
    return found


def _helpers(function: Callable) -> list[Callable]:
    """``function`` and the private module-level functions it calls, transitively (same module only)."""
    module = sys.modules[function.__module__]
    chain, i = [function], 0
    while i < len(chain):
        for name in chain[i].__code__.co_names:
            callee = getattr(module, name, None)
            private = name.startswith("_") and inspect.isfunction(callee) and callee.__module__ == module.__name__
            if private and callee not in chain:
                chain.append(callee)
        i += 1
    return chain
