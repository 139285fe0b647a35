"""ResNet (He et al. 2016) with the shortcut as a flag, so plain-18 and ResNet-18 share every line.

Two stems and two shortcuts cover both of the paper's families: the ImageNet networks (7x7/2 stem and
max-pool, 1x1 projection shortcuts, "option B") and the CIFAR-10 networks of §4.2 (3x3 stem, no max-pool,
parameter-free "option A" shortcuts). Module names follow torchvision's ``models/resnet.py`` (conv1, bn1,
layer1..4, downsample, fc), so a torchvision state_dict loads with an identity key mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

Stem = Literal["imagenet", "cifar"]
Shortcut = Literal["B", "A"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """He et al. 2016's option A (§3.3, §4.2): the identity subsampled by ``stride`` with zero channels
    appended to reach ``planes``; no parameters. (fb.resnet.torch's shortcutType 'A' likewise appends them.)"""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = planes - inplanes

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """conv3x3 (stride s) -> BN -> ReLU -> conv3x3 -> BN -> (+ shortcut, if residual) -> ReLU.

    The shortcut is the identity, or where the shape changes a 1x1 conv + BN (``shortcut="B"``) or a
    :class:`PadShortcut` (``shortcut="A"``). With ``residual=False`` there is no shortcut at all: the block
    is ReLU(BN(conv(ReLU(BN(conv(x)))))).
    """

    def __init__(self, inplanes: int, planes: int, stride: int, residual: bool, shortcut: Shortcut = "B"):
        super().__init__()
        self.residual = residual
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if residual and (stride != 1 or inplanes != planes) and shortcut == "A":
            self.downsample = PadShortcut(inplanes, planes, stride)
        elif residual and (stride != 1 or inplanes != planes):  # option B
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """A stem, stages of BasicBlocks (stride 2 from the second), global average pool, one fully connected
    layer. The ``"imagenet"`` stem is 7x7/2 conv + BN + ReLU + 3x3/2 max-pool; the ``"cifar"`` stem is a
    3x3/1 conv + BN + ReLU with no max-pool. No defaults here: ``resnet()`` holds them."""

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
        self.inplanes = widths[0]
        if stem == "cifar":
            self.conv1 = conv3x3(3, self.inplanes)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.stages = [f"layer{i + 1}" for i in range(len(layers))]
        for i, (name, blocks, width) in enumerate(zip(self.stages, layers, widths)):
            stride = 1 if i == 0 else 2
            self.add_module(name, self._make_layer(width, blocks, stride, residual=residual, shortcut=shortcut))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)  # PyTorch's default Linear init, as torchvision

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_last_bn:
            # Each residual block starts as the identity (Goyal et al. 2017; torchvision's zero_init_residual).
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int, residual: bool, shortcut: Shortcut) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride, residual, shortcut)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, residual, shortcut) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

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
    num_classes: int = 200,
    stem: Stem = "imagenet",
    shortcut: Shortcut = "B",
) -> ResNet:
    """ResNet-18 is ``resnet([2, 2, 2, 2])``, ResNet-34 ``resnet([3, 4, 6, 3])``; plain-18 is
    ``resnet([2, 2, 2, 2], residual=False)``. He et al.'s CIFAR ResNet-20 (§4.2) is
    ``resnet([3, 3, 3], [16, 32, 64], stem="cifar", shortcut="A")``.

    ``zero_init_last_bn`` (default: same as ``residual``) sets the gamma of each block's last BN to 0.
    That is right for a residual block, which then starts as the identity, and wrong for a plain block:
    with no shortcut a zero gamma makes the block's output ReLU(beta) = 0 whatever its input, cutting the
    forward signal and every earlier layer's gradient. So plain-18 keeps the usual gamma = 1.
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
