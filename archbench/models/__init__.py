"""Model builders, by the name the registry's ``builder`` key gives them, and traits read from models.

``resnet`` and ``vgg`` are archbench's own (plain functions, their [args] checked against their
signatures); ``torchvision`` builds any image classifier of torchvision.models from scratch; ``python``
builds a user's network from a callable in a .py file or an importable module. To add a builder, add
a :class:`Builder` here: what the catalogue shows of a model (residual, batch norm, depth) is read from
the built module by :func:`read_traits`, never from the builder's name or arguments.
"""

from archbench.models.builders import ArgumentError, Builder, FunctionBuilder
from archbench.models.python_builder import PythonBuilder
from archbench.models.resnet import resnet
from archbench.models.torchvision_builder import TorchvisionBuilder
from archbench.models.traits import ModelTraits, read_traits
from archbench.models.vgg import vgg

BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in (FunctionBuilder("resnet", resnet), FunctionBuilder("vgg", vgg), TorchvisionBuilder(), PythonBuilder())
}

__all__ = [
    "BUILDERS",
    "ArgumentError",
    "Builder",
    "FunctionBuilder",
    "ModelTraits",
    "PythonBuilder",
    "TorchvisionBuilder",
    "read_traits",
    "resnet",
    "vgg",
]
