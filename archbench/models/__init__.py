"""Model builders: plain functions named by the registry's ``builder`` key."""

from archbench.models.resnet import resnet
from archbench.models.vgg import vgg

BUILDERS = {"resnet": resnet, "vgg": vgg}

__all__ = ["BUILDERS", "resnet", "vgg"]
