"""The builders against torchvision (weights, outputs, parameter counts) and REFERENCES.md's numbers."""

import pytest
import torch
import torchvision
from torch import nn

from archbench.flops import count_gflops, count_parameters
from archbench.models import resnet
from archbench.models.resnet import BasicBlock
from archbench.registry import build_model

# shared/REFERENCES.md: parameters at 200 classes and fvcore GFLOPs at 64x64 (eval mode), measured
# there with torchvision 0.29.1 and fvcore 0.1.5. (The 224 column: test_registry.py, through catalogue().)
REFERENCE = {
    "resnet18": (11_279_112, 0.1486),
    "vgg11": (129_585_736, 0.7314),
    "vgg11_bn": (129_591_240, 0.7326),
    "vgg16": (135_079_944, 1.3731),
    "vgg16_bn": (135_088_392, 1.3754),
}
TORCHVISION = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=200, zero_init_residual=True),
    "vgg11": lambda: torchvision.models.vgg11(num_classes=200),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=200),
    "vgg16": lambda: torchvision.models.vgg16(num_classes=200),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=200),
}
# VGG's adaptive pool makes a small input valid, and CPU-cheap; ResNet at 64 still has 2x2 in layer4.
EQUIVALENCE_SIZE = {"resnet18": 64, "vgg11": 32, "vgg11_bn": 32, "vgg16": 32, "vgg16_bn": 32}


@pytest.fixture(scope="module", params=list(REFERENCE))
def pair(request):
    """(name, archbench model, torchvision model); module scope so each VGG is built once, then freed."""
    torch.manual_seed(0)
    return request.param, build_model(request.param), TORCHVISION[request.param]()


def test_parameter_count_matches_torchvision_and_reference(pair):
    name, ours, theirs = pair
    assert count_parameters(ours) == count_parameters(theirs) == REFERENCE[name][0]


def test_torchvision_weights_load_by_identity_and_outputs_agree(pair):
    name, ours, theirs = pair
    ours.load_state_dict(theirs.state_dict())  # strict: same keys and shapes, no mapping
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, EQUIVALENCE_SIZE[name], EQUIVALENCE_SIZE[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert got.shape == (2, 200)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gflops_at_64_match_reference_table(pair):
    name, ours, _ = pair
    ours.train()
    assert round(count_gflops(ours, 64), 4) == REFERENCE[name][1]
    assert ours.training  # counted in eval mode, then the training flag comes back


def test_plain18_is_resnet18_minus_the_three_projection_shortcuts():
    theirs = TORCHVISION["resnet18"]()
    projections = [n for n, _ in theirs.named_modules() if n.endswith("downsample")]
    assert projections == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    projection_params = sum(p.numel() for n, p in theirs.named_parameters() if ".downsample." in n)
    plain = build_model("resnet18_plain")
    assert count_parameters(plain) == count_parameters(theirs) - projection_params
    assert not [n for n, _ in plain.named_modules() if "downsample" in n]


def test_last_bn_gamma_is_zero_in_every_resnet18_block_and_in_no_plain18_block():
    for name, zero in [("resnet18", True), ("resnet18_plain", False)]:
        blocks = [m for m in build_model(name).modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 8
        for block in blocks:
            assert torch.all(block.bn2.weight == 0) if zero else torch.all(block.bn2.weight == 1)
            assert torch.all(block.bn1.weight == 1)


def _main_path(block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    return block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))


@pytest.mark.parametrize("stage", ["layer1.0", "layer2.0"])  # identity shortcut, then 1x1 projection
def test_plain_block_adds_nothing_and_residual_block_adds_its_shortcut(stage):
    torch.manual_seed(0)
    x = torch.randn(2, 64, 16, 16)
    for residual in (True, False):
        model = resnet([2, 2, 2, 2], residual=residual, zero_init_last_bn=False).eval()
        block = model.get_submodule(stage)
        with torch.no_grad():
            main = _main_path(block, x)
            shortcut = 0 if not residual else x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(block(x), torch.relu(main + shortcut))


def test_zero_gamma_would_cut_the_signal_of_a_plain_net():
    """Why plain-18 keeps gamma = 1: with gamma = 0 and no shortcut, the output ignores the input."""
    x1, x2 = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for zero_init, constant in [(True, True), (False, False)]:
        torch.manual_seed(0)
        model = resnet([2, 2, 2, 2], residual=False, zero_init_last_bn=zero_init).eval()
        with torch.no_grad():
            assert torch.equal(model(x1), model(x2)) is constant


def test_builders_take_num_classes_and_other_widths():
    model = resnet([1, 1], widths=[8, 16], num_classes=10)
    assert model.fc.out_features == 10 and model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert [n for n, m in model.named_children() if isinstance(m, nn.Sequential)] == ["layer1", "layer2"]
