"""archbench's builders against torchvision's modules (weights, outputs, parameters, FLOPs) and against the
measured counts in archbench.references.MODEL_COUNTS."""

import pytest
import torch
import torchvision
from torch import nn

from archbench.flops import count_gflops, count_parameters
from archbench.models import resnet
from archbench.models.resnet import BasicBlock, ResNet
from archbench.references import MODEL_COUNTS
from archbench.registry import build_model, get_entry

COUNTS = {c.model: c for c in MODEL_COUNTS}
TORCHVISION = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=200, zero_init_residual=True),
    "resnet34": lambda: torchvision.models.resnet34(num_classes=200, zero_init_residual=True),
    "vgg11": lambda: torchvision.models.vgg11(num_classes=200),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=200),
    "vgg16": lambda: torchvision.models.vgg16(num_classes=200),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=200),
    "vgg19": lambda: torchvision.models.vgg19(num_classes=200),
    "vgg19_bn": lambda: torchvision.models.vgg19_bn(num_classes=200),
}
# VGG's adaptive pool makes a small input valid, and CPU-cheap; ResNet at 64 still has 2x2 in layer4.
EQUIVALENCE_SIZE = {name: 64 if name.startswith("resnet") else 32 for name in TORCHVISION}


@pytest.fixture(scope="module", params=list(TORCHVISION))
def pair(request):
    """(name, torchvision model); module scope so each VGG is built (and initialised, seeded) once."""
    torch.manual_seed(0)
    return request.param, TORCHVISION[request.param]()


def with_their_weights(name: str, theirs: nn.Module) -> nn.Module:
    """Our model holding torchvision's tensors: built on the meta device, then given them by a strict load
    (same keys and shapes, no mapping) that assigns rather than copies, so no VGG is allocated twice."""
    ours = get_entry(name).build_on_meta()
    ours.load_state_dict(theirs.state_dict(), assign=True)
    return ours


def test_parameter_count_matches_torchvision_and_reference(pair):
    name, theirs = pair
    assert count_parameters(get_entry(name).build_on_meta()) == count_parameters(theirs) == COUNTS[name].parameters


def test_torchvision_weights_load_by_identity_and_outputs_agree(pair):
    name, theirs = pair
    ours = with_their_weights(name, theirs)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, EQUIVALENCE_SIZE[name], EQUIVALENCE_SIZE[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert got.shape == (2, 200)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gflops_at_64_match_torchvision_and_reference(pair):
    """At 224 the catalogue's rows are checked against the reference (test_registry.py)."""
    name, theirs = pair
    ours = with_their_weights(name, theirs).train()
    gflops = count_gflops(ours, 64)
    assert ours.training  # counted in eval mode, then the training flag comes back
    if COUNTS[name].gflops_64 is not None:  # measured on torchvision's module
        assert round(gflops, 4) == COUNTS[name].gflops_64
    else:
        assert gflops == count_gflops(theirs, 64)


@pytest.mark.parametrize(
    ("plain", "residual", "torchvision_name"),
    [
        ("resnet18_plain", "resnet18", "resnet18"),
        ("resnet34_plain", "resnet34", "resnet34"),
    ],
)
def test_plain_net_is_resnet_minus_the_three_projection_shortcuts(plain, residual, torchvision_name):
    with torch.device("meta"):
        theirs = torchvision.models.get_model(torchvision_name, num_classes=200)
    projections = [n for n, _ in theirs.named_modules() if n.endswith("downsample")]
    assert projections == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    projection_params = sum(p.numel() for n, p in theirs.named_parameters() if ".downsample." in n)
    ours = get_entry(plain).build_on_meta()
    assert count_parameters(ours) == count_parameters(theirs) - projection_params
    assert count_parameters(get_entry(residual).build_on_meta()) == count_parameters(theirs)
    assert not [n for n, _ in ours.named_modules() if "downsample" in n]
    if plain in COUNTS:
        assert count_parameters(ours) == COUNTS[plain].parameters


@pytest.mark.parametrize(
    ("name", "blocks", "zero"),
    [
        ("resnet18", 8, True),
        ("resnet18_plain", 8, False),
        ("resnet34", 16, True),
        ("resnet34_plain", 16, False),
    ],
)
def test_last_bn_gamma_is_zero_in_every_residual_block_and_in_no_plain_block(name, blocks, zero):
    found = [m for m in build_model(name).modules() if isinstance(m, BasicBlock)]
    assert len(found) == blocks
    for block in found:
        assert torch.all(block.bn2.weight == 0) if zero else torch.all(block.bn2.weight == 1)
        assert torch.all(block.bn1.weight == 1)


def test_zero_init_default_lives_in_the_builder_only():
    """resnet() defaults zero_init_last_bn to residual; the ResNet class has no default of its own."""
    for residual in (True, False):
        gammas = [
            m.bn2.weight
            for m in resnet([1, 1], widths=[4, 8], residual=residual).modules()
            if isinstance(m, BasicBlock)
        ]
        assert all(torch.all(g == (0 if residual else 1)) for g in gammas)
    with pytest.raises(TypeError, match="zero_init_last_bn"):
        ResNet([1, 1], [4, 8], residual=True, num_classes=10)


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
