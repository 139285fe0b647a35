"""Traits read from the built module (residual, batch norm, depth), whatever builder made it."""

import pytest
import torch
import torchvision
from torch import nn

import archbench.models as models
from archbench.models import FunctionBuilder, read_traits
from archbench.models.resnet import resnet
from archbench.models.vgg import vgg
from archbench.registry import get_entry


def on_meta(make):
    with torch.device("meta"):
        return make()


@pytest.mark.parametrize(
    ("make", "residual", "batch_norm", "depth"),
    [
        (lambda: resnet([2, 2, 2, 2]), True, True, 18),
        (lambda: resnet([2, 2, 2, 2], residual=False), False, True, 18),  # projections lie on shorter paths
        (lambda: resnet([3, 4, 6, 3]), True, True, 34),
        (lambda: resnet([3, 4, 6, 3], residual=False), False, True, 34),
        (lambda: vgg("A"), False, False, 11),
        (lambda: vgg("A", batch_norm=True), False, True, 11),
        (lambda: vgg("D"), False, False, 16),
        (lambda: vgg("E", batch_norm=True), False, True, 19),
    ],
    ids=["resnet18", "plain18", "resnet34", "plain34", "vgg11", "vgg11_bn", "vgg16", "vgg19_bn"],
)
def test_archbench_models(make, residual, batch_norm, depth):
    assert read_traits(on_meta(make)) == models.ModelTraits(residual, batch_norm, depth)


@pytest.mark.parametrize(
    ("name", "residual", "batch_norm", "depth"),
    [
        ("resnet18", True, True, 18),
        ("resnet34", True, True, 34),
        ("resnet50", True, True, 50),  # Bottlenecks: 1 + 3 x 16 + 1
        ("densenet121", False, True, 121),  # dense connections concatenate: no sum
        ("alexnet", False, False, 8),
        ("vgg19", False, False, 19),
        ("convnext_tiny", True, False, None),  # LayerNorm, not batch norm
        ("mobilenet_v3_small", True, True, None),
        ("vit_b_16", True, False, None),
    ],
)
def test_torchvision_models(name, residual, batch_norm, depth):
    traits = read_traits(on_meta(lambda: torchvision.models.get_model(name, num_classes=200)))
    assert (traits.residual, traits.batch_norm) == (residual, batch_norm)
    if depth is not None:
        assert traits.depth == depth


class Branches(nn.Module):
    """Two branches of different depth whose outputs are added: a sum of two activations."""

    def __init__(self, add: bool = True):
        super().__init__()
        self.short = nn.Conv2d(3, 4, 1)
        self.long = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)
        self.add = add

    def forward(self, x):
        y = self.short(x) + self.long(x) if self.add else torch.cat([self.short(x), self.long(x)], 1)[:, :4]
        return self.head(y.mean((2, 3)))


class NotResidual(nn.Module):
    """Adds, but never two activations: a parameter, a constant, a size computed from shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x) + self.offset
        y = torch.add(y, 1.0)
        pixels = y.shape[2] * y.shape[3] + y.size(3) - y.size(3)  # adds two numbers read from shapes
        return self.fc(y.flatten(2)[:, :, :pixels].mean(2) + 0.5)


class ValueDependent(nn.Module):
    """Control flow on a tensor's value: cannot be traced symbolically."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(4, 2)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.a(x) if x.sum() > 0 else self.b(x)
        return self.fc(self.norm(y).mean((2, 3)))


def test_depth_is_the_longest_path_not_the_number_of_layers():
    assert read_traits(Branches()) == models.ModelTraits(residual=True, batch_norm=False, depth=4)
    assert read_traits(Branches(add=False)).residual is False  # concatenation is not a residual sum


def test_adding_a_parameter_a_constant_or_shape_arithmetic_is_not_residual():
    assert read_traits(NotResidual()) == models.ModelTraits(residual=False, batch_norm=False, depth=2)


def test_untraceable_model_has_unknown_residual_and_counts_its_layers():
    assert read_traits(ValueDependent()) == models.ModelTraits(residual=None, batch_norm=True, depth=3)


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 4), nn.LayerNorm([4, 8, 8]), nn.InstanceNorm2d(4)])
def test_only_batch_norm_counts_as_batch_norm(norm):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.Flatten(), nn.Linear(256, 2))
    assert read_traits(model).batch_norm is False
    model[1] = nn.SyncBatchNorm(4)
    assert read_traits(model).batch_norm is True


def test_reading_traits_restores_the_training_flag():
    model = resnet([1, 1], widths=[4, 8]).train()
    read_traits(model)
    assert model.training and all(m.training for m in model.modules())
    read_traits(model.eval())
    assert not model.training


def small_mlp(hidden: int = 16, batch_norm: bool = False, num_classes: int = 200) -> nn.Module:
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), *norm, nn.ReLU(), nn.Linear(hidden, num_classes))


def test_a_new_builder_needs_no_registry_edits(tmp_path, monkeypatch):
    """The catalogue's residual/BN/depth come from the built module, not from the builder's name or args."""
    monkeypatch.setitem(models.BUILDERS, "mlp", FunctionBuilder("mlp", small_mlp))
    (tmp_path / "mlp_bn.toml").write_text('description = "an MLP"\nbuilder = "mlp"\n[args]\nbatch_norm = true\n')
    entry = get_entry("mlp_bn", tmp_path)
    assert (entry.residual, entry.batch_norm, entry.depth) == (False, True, 2)
    assert entry.identity()["depth"] == 2
