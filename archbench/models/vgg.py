"""VGG (Simonyan & Zisserman 2015) with and without BN: torchvision's conv features (``make_layers`` and the
paper's Table 1 configurations, ``cfgs``: VGG11 is A, VGG13 B, VGG16 D, VGG19 E) under a classifier whose
hidden width, dropout and pool size are arguments. Module names are torchvision's, so its state_dict loads
with an identity key mapping.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from archbench.config import DEFAULT_NUM_CLASSES


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
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg(
    config: str | list[int | str],
    batch_norm: bool = False,
    hidden: int = 4096,
    dropout: float = 0.5,
    pool_size: int = 7,
    num_classes: int = DEFAULT_NUM_CLASSES,
) -> VGG:
    """VGG11 is ``vgg("A")``, VGG16-BN is ``vgg("D", batch_norm=True)``; ``config`` may also be a list of
    3x3 conv widths and "M" for a 2x2/2 max-pool."""
    cfg = cfgs.get(config) if isinstance(config, str) else config
    if cfg is None:
        raise ValueError(f"config '{config}' is not one of {', '.join(cfgs)} (or a list of widths and 'M')")
    widths = [v for v in cfg if v != "M"]
    if not widths or any(not isinstance(v, int) or v < 1 for v in widths):
        raise ValueError(f"config {config} must hold positive conv widths and 'M' for max-pool")
    return VGG(make_layers(cfg, batch_norm), widths[-1], num_classes, hidden, dropout, pool_size)
