"""Model builders, by the name the registry's ``builder`` key gives them (docs/extending.md), and the traits
read from a built model. To add a builder, add a :class:`~archbench.models.builders.Builder` here; what the
catalogue shows of a model is read by :func:`read_traits`, never from the builder's name or arguments."""

from archbench.models.builders import ArgumentError, FunctionBuilder
from archbench.models.python_builder import PythonBuilder
from archbench.models.resnet import resnet
from archbench.models.torchvision_builder import TorchvisionBuilder
from archbench.models.traits import ModelTraits, read_traits
from archbench.models.vgg import vgg

BUILDERS = {
    b.name: b
    for b in (FunctionBuilder("resnet", resnet), FunctionBuilder("vgg", vgg), TorchvisionBuilder(), PythonBuilder())
}

__all__ = ["BUILDERS", "ArgumentError", "FunctionBuilder", "ModelTraits", "read_traits", "resnet", "vgg"]
