"""archbench: ResNet-18 against plain-18 and VGG11/16 (with and without BN), one loop, one report."""

__version__ = "0.1.0"
