"""ResNet (He et al. 2016) with the shortcut as a flag, so plain-18 and ResNet-18 share every line.

Two stems and two shortcuts cover both of the paper's families: the ImageNet networks (7x7/2 conv + BN +
ReLU + 3x3/2 max-pool, 1x1 projection shortcuts, "option B") and the CIFAR-10 networks of §4.2 (3x3/1 conv
+ BN + ReLU, no max-pool, parameter-free "option A" shortcuts). Module names are torchvision's (conv1, bn1,
layer1..4, downsample, fc), so a torchvision state_dict loads with an identity key mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as resnet_models

from archbench.config import DEFAULT_NUM_CLASSES

Stem = Literal["imagenet", "cifar"]
Shortcut = Literal["B", "A"]


class PadShortcut(nn.Module):
    """He et al. 2016's option A (§3.3, §4.2): the identity subsampled by ``stride`` with zero channels
    appended to reach ``planes``; no parameters. (fb.resnet.torch's shortcutType 'A' likewise appends them.)"""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = planes - inplanes

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(resnet_models.BasicBlock):
    """torchvision's block, whose shortcut is the identity or, where the shape changes, a 1x1 conv + BN
    (``shortcut="B"``) or a :class:`PadShortcut` (``"A"``); with ``residual=False`` it has no shortcut at all:
    ReLU(BN(conv(ReLU(BN(conv(x))))))."""

    def __init__(self, inplanes: int, planes: int, stride: int, residual: bool, shortcut: Shortcut = "B"):
        super().__init__(inplanes, planes, stride)
        self.residual = residual
        if residual and (stride != 1 or inplanes != planes):  # made after the block's convs, as torchvision's
            self.downsample = (
                PadShortcut(inplanes, planes, stride)
                if shortcut == "A"
                else nn.Sequential(resnet_models.conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """A stem, stages of BasicBlocks (stride 2 from the second), global average pool, one fully connected
    layer. No defaults here: ``resnet()`` holds them."""

    def __init__(
        self,
        layers: list[int],
        widths: list[int],
        *,
        residual: bool,
        zero_init_last_bn: bool,
        num_classes: int,
        stem: Stem,
        shortcut: Shortcut,
    ):
        super().__init__()
        if stem == "cifar":
            self.conv1 = resnet_models.conv3x3(3, widths[0])
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.stages = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (name, blocks, planes) in enumerate(zip(self.stages, layers, widths)):
            inplanes, stride = (widths[0], 1) if i == 0 else (widths[i - 1], 2)
            rest = (BasicBlock(planes, planes, 1, residual, shortcut) for _ in range(1, blocks))
            self.add_module(name, nn.Sequential(BasicBlock(inplanes, planes, stride, residual, shortcut), *rest))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)  # PyTorch's default Linear init, as torchvision

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last_bn:
            # Each residual block starts as the identity (Goyal et al. 2017; torchvision's zero_init_residual).
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet(
    layers: Sequence[int],
    widths: Sequence[int] = (64, 128, 256, 512),
    residual: bool = True,
    zero_init_last_bn: bool | None = None,
    num_classes: int = DEFAULT_NUM_CLASSES,
    stem: Stem = "imagenet",
    shortcut: Shortcut = "B",
) -> ResNet:
    """ResNet-18 is ``resnet([2, 2, 2, 2])``, plain-18 ``resnet([2, 2, 2, 2], residual=False)``, He et al.'s
    CIFAR ResNet-20 (§4.2) ``resnet([3, 3, 3], [16, 32, 64], stem="cifar", shortcut="A")``.

    ``zero_init_last_bn`` (default: same as ``residual``) sets the gamma of each block's last BN to 0: a
    residual block then starts as the identity, but a plain block would output ReLU(beta) = 0 whatever its
    input, cutting the forward signal and every earlier gradient. So plain-18 keeps gamma = 1.
    """
    if not layers or len(layers) != len(widths) or min(layers) < 1 or min(widths) < 1:
        raise ValueError(f"layers {layers} and widths {widths} must be lists of positive ints of the same length")
    for key, value, allowed in (("stem", stem, get_args(Stem)), ("shortcut", shortcut, get_args(Shortcut))):
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if shortcut == "A" and list(widths) != sorted(widths):
        raise ValueError(f"option-A shortcuts pad channels with zeros, so widths {widths} must not decrease")
    if zero_init_last_bn is None:
        zero_init_last_bn = residual
    return ResNet(
        list(layers),
        list(widths),
        residual=residual,
        zero_init_last_bn=zero_init_last_bn,
        num_classes=num_classes,
        stem=stem,
        shortcut=shortcut,
    )
