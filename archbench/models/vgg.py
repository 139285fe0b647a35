"""VGG (Simonyan & Zisserman 2015), configurations as in the paper's Table 1, with and without BN.

Module names follow torchvision's ``models/vgg.py`` (features, avgpool, classifier), so a torchvision
state_dict loads with an identity key mapping.
"""

from __future__ import annotations

from torch import Tensor, nn

# Numbers are 3x3 conv widths, "M" a 2x2/2 max-pool. VGG11 is A, VGG13 B, VGG16 D, VGG19 E.
cfgs: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Conv features, adaptive average pool to ``pool_size`` squared, then hidden-hidden-classes FC."""

    def __init__(
        self, features: nn.Sequential, channels: int, num_classes: int, hidden: int, dropout: float, pool_size: int
    ):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg(
    config: str | list[int | str],
    batch_norm: bool = False,
    hidden: int = 4096,
    dropout: float = 0.5,
    pool_size: int = 7,
    num_classes: int = 200,
) -> VGG:
    """VGG11 is ``vgg("A")``, VGG16-BN is ``vgg("D", batch_norm=True)``; ``config`` may also be a list."""
    cfg = cfgs.get(config) if isinstance(config, str) else config
    if cfg is None:
        raise ValueError(f"config '{config}' is not one of {', '.join(cfgs)} (or a list of widths and 'M')")
    widths = [v for v in cfg if v != "M"]
    if not widths or any(not isinstance(v, int) or v < 1 for v in widths):
        raise ValueError(f"config {config} must hold positive conv widths and 'M' for max-pool")
    return VGG(make_layers(cfg, batch_norm), widths[-1], num_classes, hidden, dropout, pool_size)
