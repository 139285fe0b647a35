"""He et al. 2016's CIFAR-10 ResNets (§4.2, Table 6) and their plain twins: sizes, the option-A shortcut, the
missing shortcut of the plain nets, the 32x32 forward pass and the traits read from the built modules."""

import pytest
import torch
import torch.nn.functional as F

from archbench.errors import ArchbenchError
from archbench.flops import count_parameters
from archbench.models import read_traits, resnet
from archbench.models.resnet import BasicBlock, PadShortcut
from archbench.registry import get_entry, list_models

# Exact parameter counts at 10 classes with option A (He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M,
# 1.7M); the plain twins have the same, since option A has no parameters.
PARAMETERS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
NAMES = [f"resnet{d}{suffix}" for d in PARAMETERS for suffix in ("", "_plain")]


def depth_of(name: str) -> int:
    return int(name.removeprefix("resnet").removesuffix("_plain"))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_traits_at_10_classes(name):
    model = get_entry(name).build_on_meta(num_classes=10)
    assert count_parameters(model) == PARAMETERS[depth_of(name)]
    traits = read_traits(model)
    assert (traits.depth, traits.residual, traits.batch_norm) == (depth_of(name), not name.endswith("_plain"), True)
    assert (get_entry(name).depth, get_entry(name).residual) == (traits.depth, traits.residual)


def test_every_cifar_entry_is_shipped():
    assert set(NAMES) <= set(list_models())


def real_pair(depth: int = 20) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The residual net and its plain twin holding the same weights (their state_dicts have the same keys)."""
    torch.manual_seed(0)
    residual = get_entry(f"resnet{depth}").build(num_classes=10)
    plain = get_entry(f"resnet{depth}_plain").build(num_classes=10)
    plain.load_state_dict(residual.state_dict(), strict=True)
    return residual.eval(), plain.eval()


def test_option_a_shortcut_is_the_strided_identity_padded_with_zero_channels():
    residual, _ = real_pair()
    for stage, (channels, size) in (("layer2.0", (16, 16)), ("layer3.0", (32, 8))):
        block = residual.get_submodule(stage)
        x = torch.randn(2, channels, 2 * size, 2 * size, generator=torch.Generator().manual_seed(1))
        by_hand = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, channels, size, size)], dim=1)
        assert isinstance(block.downsample, PadShortcut) and not list(block.downsample.parameters())
        assert torch.equal(block.downsample(x), by_hand)
        with torch.no_grad():
            main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
            torch.testing.assert_close(block(x), F.relu(main + by_hand))
    # the other blocks add their input unchanged
    block = residual.get_submodule("layer1.1")
    assert block.downsample is None


def test_plain_twin_has_no_shortcut_path():
    residual, plain = real_pair()
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(b.downsample is None and not b.residual for b in blocks)
    x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    block = plain.get_submodule("layer1.0")
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))))
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        assert not torch.allclose(plain(images), residual(images))


def test_forward_on_32x32_keeps_feature_maps_at_32_16_8():
    """A 3x3 stem with stride 1 and no max-pool: the three stages see 32x32, 16x16 and 8x8 maps."""
    residual, plain = real_pair()
    for model in (residual, plain):
        shapes = {}
        hooks = [
            model.get_submodule(s).register_forward_hook(
                lambda m, i, o, s=s, found=shapes: found.update({s: tuple(o.shape)})
            )
            for s in ("layer1", "layer2", "layer3")
        ]
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert shapes == {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8)}
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_every_bn_gamma_starts_at_one_and_convs_are_kaiming():
    residual, plain = real_pair(depth=56)
    for model in (residual, plain):
        gammas = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(torch.all(g == 1) for g in gammas)
    conv = residual.layer3[1].conv1  # fan_out = 64 * 9: kaiming_normal_ std sqrt(2 / 576)
    assert abs(conv.weight.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('shortcut = "C"', "key 'args.shortcut' must be one of 'B', 'A', got 'C'"),
        ('stem = "tiny"', "key 'args.stem' must be one of 'imagenet', 'cifar', got 'tiny'"),
        ('shortcut = "A"\nwidths = [64, 32]', "option-A shortcuts pad channels with zeros, so widths"),
    ],
)
def test_bad_stem_or_shortcut_is_one_line_naming_the_key(tmp_path, args, expected):
    (tmp_path / "net.toml").write_text(f'description = "x"\nbuilder = "resnet"\n[args]\nlayers = [1, 1]\n{args}\n')
    with pytest.raises(ArchbenchError) as info:
        get_entry("net", tmp_path)
    assert "\n" not in info.value.message and "net.toml" in info.value.message and expected in info.value.message


def test_builder_checks_its_choices_when_called_directly():
    with pytest.raises(ValueError, match="shortcut must be one of 'B', 'A', got 'C'"):
        resnet([1, 1], [16, 32], shortcut="C")
