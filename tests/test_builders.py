"""The torchvision and python builders end to end (read, build, check_forward at the training size, count,
identity) and every way an entry can be wrong: one ArchbenchError line naming the TOML file and key."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from archbench.catalogue import python_code_sha256
from archbench.cli import app
from archbench.errors import ArchbenchError
from archbench.flops import count_gflops, count_parameters
from archbench.models import ModelTraits
from archbench.references import MODEL_COUNTS
from archbench.registry import catalogue, check_forward, get_entry, list_models

MOBILENET = """\
description = "MobileNetV3-Small (Howard et al. 2019), torchvision's, from scratch"
builder = "torchvision"

[args]
name = "mobilenet_v3_small"
"""
NET_PY = """\
from torch import nn


def make_net(num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
"""
NET_TOML = """\
description = "A one-conv network of my own"
builder = "python"

[args]
target = "mynet.py:make_net"
width = 4
"""


@pytest.fixture(autouse=True)
def no_registry_env(monkeypatch):
    monkeypatch.delenv("ARCHBENCH_REGISTRY", raising=False)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def torchvision_entry(args: str) -> str:
    return f'description = "x"\nbuilder = "torchvision"\n[args]\n{args}\n'


def python_entry(args: str) -> str:
    return f'description = "x"\nbuilder = "python"\n[args]\n{args}\n'


def the_error(folder: Path, name: str = "net") -> str:
    """The one-line message of the first problem with the entry: on reading, or on building it."""
    with pytest.raises(ArchbenchError) as info:
        get_entry(name, folder).build_on_meta()
    return info.value.message


# --- torchvision -------------------------------------------------------------------------------------


def test_torchvision_mobilenet_end_to_end(tmp_path):
    write(tmp_path, "mobilenet.toml", MOBILENET)
    entry = get_entry("mobilenet", tmp_path)
    torch.manual_seed(0)
    ours, theirs = entry.build(), torchvision.models.mobilenet_v3_small(num_classes=200)
    reference = next(c for c in MODEL_COUNTS if c.model == "mobilenet_v3_small")
    assert count_parameters(ours) == count_parameters(theirs) == reference.parameters
    gflops = count_gflops(ours, 224)
    assert gflops == count_gflops(theirs, 224) and round(gflops, 4) == reference.gflops_224

    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=1e-5)

    # stem 1 + block 1 (depthwise, SE's two 1x1 convs, projection) 4 + blocks 2-3 (expansion, depthwise,
    # projection) 3 each + blocks 4-11 (the same with SE) 5 each + last 1x1 conv 1 + classifier 2 = 54
    assert entry.traits == ModelTraits(residual=True, batch_norm=True, depth=54)
    check_forward(entry, 64, 10)
    assert entry.build(num_classes=10).classifier[-1].out_features == 10  # the data's class count wins
    identity = entry.identity()
    assert (identity["builder"], identity["args"]) == ("torchvision", {"name": "mobilenet_v3_small"})
    assert (identity["residual"], identity["batch_norm"], identity["depth"]) == (True, True, 54)
    assert "target" not in identity and str(tmp_path) not in json.dumps(identity)


def test_torchvision_arguments_reach_the_constructor_and_its_helpers(tmp_path):
    """width_mult is taken by a helper of mobilenet_v3_small, not by the MobileNetV3 class."""
    write(tmp_path, "net.toml", torchvision_entry('name = "mobilenet_v3_small"\nwidth_mult = 0.5\ndropout = 0.1'))
    ours = get_entry("net", tmp_path).build_on_meta()
    with torch.device("meta"):
        theirs = torchvision.models.mobilenet_v3_small(num_classes=200, width_mult=0.5, dropout=0.1)
    assert count_parameters(ours) == count_parameters(theirs) < 1_722_856
    assert ours.classifier[2].p == 0.1


def test_fixed_input_size_is_one_line_at_the_wrong_size(tmp_path):
    path = write(tmp_path, "vit.toml", torchvision_entry('name = "vit_b_16"'))
    with pytest.raises(ArchbenchError) as info:
        check_forward(get_entry("vit", tmp_path), 32, 200)
    message = info.value.message
    assert message.startswith(f"{path}: key 'args' builds a model that cannot run on 32x32 input: AssertionError")
    assert "Expected 224 but got 32" in message and "\n" not in message
    check_forward(get_entry("vit", tmp_path), 224, 200)
    write(tmp_path, "vit32.toml", torchvision_entry('name = "vit_b_16"\nimage_size = 32'))
    check_forward(get_entry("vit32", tmp_path), 32, 200)


def test_auxiliary_outputs_are_off_and_too_small_inputs_are_one_line(tmp_path):
    write(tmp_path, "googlenet.toml", torchvision_entry('name = "googlenet"'))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # init_weights is set: no warning that its default will change
        get_entry("googlenet", tmp_path).build_on_meta()
    check_forward(get_entry("googlenet", tmp_path), 64, 200)  # training mode returns logits, not a tuple
    path = write(tmp_path, "inception.toml", torchvision_entry('name = "inception_v3"'))
    with pytest.raises(ArchbenchError, match=r"inception\.toml: key 'args' .* cannot run on 64x64 input: RuntimeError"):
        check_forward(get_entry("inception", tmp_path), 64, 200)
    assert get_entry("inception", tmp_path).path == path
    check_forward(get_entry("inception", tmp_path), 96, 200)


def test_torchvision_model_that_cannot_build_on_meta_is_built_on_the_cpu(tmp_path):
    """RegNet computes its widths from tensor values while it is built."""
    write(tmp_path, "regnet.toml", torchvision_entry('name = "regnet_x_400mf"'))
    entry = get_entry("regnet", tmp_path)
    assert next(entry.build_on_meta().parameters()).device.type == "cpu"
    assert (entry.residual, entry.batch_norm) == (True, True)
    check_forward(entry, 64, 200)


TORCHVISION_BAD = {
    "no name": ("num_classes = 10", "args.name", "is missing"),
    "name not a string": ("name = 3", "args.name", "must be str"),
    "unknown name": ('name = "resnet5O"', "args.name", "is not a torchvision image classifier (closest: resnet50"),
    "detection model": ('name = "fasterrcnn_resnet50_fpn"', "args.name", "is an object detection model"),
    "segmentation model": ('name = "deeplabv3_resnet50"', "args.name", "is a semantic segmentation model"),
    "video model": ('name = "r3d_18"', "args.name", "is a video classification model"),
    "unknown argument": ('name = "resnet50"\ncolour = "red"', "args.colour", "is not an argument of torchvision's"),
    # ConvNeXt's class takes **kwargs and ignores them: the constructor alone would accept the typo
    "misspelt argument": (
        'name = "convnext_tiny"\nstochastic_depth_probb = 0.1',
        "args.stochastic_depth_probb",
        "is not an argument",
    ),
    "wrong type": ('name = "mobilenet_v3_small"\ndropout = "high"', "args.dropout", "must be float, got 'high'"),
    "pretrained weights": ('name = "resnet50"\nweights = "DEFAULT"', "args.weights", "from scratch"),
    "auxiliary outputs": ('name = "googlenet"\naux_logits = true', "args.aux_logits", "must be false"),
    "argument the constructor fixes": ('name = "resnet50"\nlayers = [1, 1, 1, 1]', "args.layers", "is fixed by"),
    "value the constructor rejects": ('name = "resnext50_32x4d"\ngroups = 2', "args", "ValueError: The parameter"),
}


@pytest.mark.parametrize("case", list(TORCHVISION_BAD))
def test_bad_torchvision_entry_is_one_line_naming_file_and_key(tmp_path, case):
    args, key, expected = TORCHVISION_BAD[case]
    path = write(tmp_path, "net.toml", torchvision_entry(args))
    message = the_error(tmp_path)
    assert message.startswith(f"{path}: key '{key}' ") and expected in message and "\n" not in message


# --- python ------------------------------------------------------------------------------------------


def run_file(text: str) -> dict:
    namespace: dict = {}
    exec(compile(text, "mynet.py", "exec"), namespace)
    return namespace


def test_python_file_end_to_end(tmp_path):
    source = write(tmp_path, "mynet.py", NET_PY)
    write(tmp_path, "mine.toml", NET_TOML)
    assert list_models(tmp_path) == ["mine"]
    entry = get_entry("mine", tmp_path)
    ours = entry.build(num_classes=10)
    theirs = run_file(NET_PY)["make_net"](num_classes=10, width=4)
    assert count_parameters(ours) == count_parameters(theirs) == 3 * 4 * 9 + 4 + 2 * 4 + 4 * 10 + 10
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    assert count_gflops(ours, 32) > 0
    assert entry.traits == ModelTraits(residual=False, batch_norm=True, depth=2)
    check_forward(entry, 32, 10)

    identity = entry.identity()
    assert identity["target"] == "mynet.py:make_net" and identity["args"] == {"target": "mynet.py:make_net", "width": 4}
    assert identity["source_sha256"] == python_code_sha256("mynet.py:make_net", tmp_path)
    assert str(tmp_path) not in json.dumps(identity)
    source.write_text(NET_PY.replace("width: int = 8", "width: int = 8, extra: int = 0"))
    assert get_entry("mine", tmp_path).identity()["source_sha256"] != identity["source_sha256"]  # says which code

    result = CliRunner().invoke(app, ["list", "--registry", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "mine" in result.stdout and f"{count_parameters(entry.build()):,}" in result.stdout


NET_CLASS = """
import torch

OFFSET = torch.full((1, 3, 1, 1), 0.5)  # made at import: a real tensor, even if the first build is on meta


class Net(nn.Sequential):
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__(nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return super().forward(x - OFFSET)
"""


def test_python_module_on_the_path_and_a_class_target(tmp_path, monkeypatch):
    package = tmp_path / "site" / "archbench_test_nets"
    package.mkdir(parents=True)
    write(package, "__init__.py", "")
    write(package, "models.py", NET_PY + NET_CLASS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    write(tmp_path, "function.toml", NET_TOML.replace("mynet.py:make_net", "archbench_test_nets.models:make_net"))
    write(tmp_path, "cls.toml", python_entry('target = "archbench_test_nets.models:Net"\nwidth = 6'))
    function, cls = get_entry("function", tmp_path), get_entry("cls", tmp_path)
    assert (cls.depth, cls.residual) == (2, False)  # the first import, for a build on the meta device
    assert cls.build()(torch.zeros(1, 3, 32, 32)).shape == (1, 200)  # OFFSET is on the CPU
    assert function.build(num_classes=10)[-1].out_features == 10
    check_forward(cls, 32, 200)
    digest = python_code_sha256("archbench_test_nets.models:Net", tmp_path)
    assert function.identity()["source_sha256"] == cls.identity()["source_sha256"] == digest


WITH_A_DATACLASS_AND_A_SIBLING = """\
from __future__ import annotations

from dataclasses import dataclass

from blocks import stem
from torch import nn


@dataclass
class Config:
    width: int = 4


def make_net(num_classes: int) -> nn.Module:
    width = Config().width
    return nn.Sequential(stem(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""


def test_a_file_may_import_files_beside_it_and_define_dataclasses(tmp_path):
    write(tmp_path, "blocks.py", "from torch import nn\n\n\ndef stem(width):\n    return nn.Conv2d(3, width, 3)\n")
    write(tmp_path, "mynet.py", WITH_A_DATACLASS_AND_A_SIBLING)
    write(tmp_path, "net.toml", python_entry('target = "mynet.py:make_net"'))
    assert get_entry("net", tmp_path).build()[0].out_channels == 4


def test_a_file_beside_the_target_is_read_from_its_own_folder_as_it_is_now(tmp_path):
    """Two registries whose targets import a `blocks.py` of their own, and one edited between builds, in one
    process: each build uses the file its folder holds at that moment, never a module of that name imported
    before (another folder's, or the file before its edit)."""
    built = []
    for folder, width in ((tmp_path / "a", 4), (tmp_path / "b", 6), (tmp_path / "a", 8)):
        folder.mkdir(exist_ok=True)
        write(folder, "blocks.py", f"from torch import nn\n\n\ndef stem(width):\n    return nn.Conv2d(3, {width}, 3)\n")
        write(folder, "mynet.py", WITH_A_DATACLASS_AND_A_SIBLING)
        write(folder, "net.toml", python_entry('target = "mynet.py:make_net"'))
        built.append(get_entry("net", folder).build()[0].out_channels)
    assert built == [4, 6, 8]


def test_catalogue_lists_a_model_that_cannot_run_at_224_without_its_flops(tmp_path):
    write(
        tmp_path,
        "mynet.py",
        "from torch import nn\n\n\ndef make_net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n",
    )
    write(tmp_path, "net.toml", python_entry('target = "mynet.py:make_net"'))
    (row,) = catalogue(tmp_path)
    assert row["parameters"] == 3 * 32 * 32 * 200 + 200 and math.isnan(row["gflops_224"])


def test_reading_the_registry_imports_no_user_code(tmp_path):
    marker = tmp_path / "imported"
    write(tmp_path, "mynet.py", f"from pathlib import Path\nPath({str(marker)!r}).touch()\n" + NET_PY)
    write(tmp_path, "mine.toml", NET_TOML)
    assert list_models(tmp_path) == ["mine"] and not marker.exists()
    get_entry("mine", tmp_path).build()
    assert marker.exists()


VALUE_DEPENDENT_PY = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int, read_in_init: bool = True):
        super().__init__()
        # Reading a value (here in __init__, and in forward) is impossible on the meta device.
        width = int(torch.tensor([3, 3]).sum()) if read_in_init else 6
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        y = self.conv(x)
        if y.abs().sum().item() >= 0:
            y = y + self.conv(x)
        return self.fc(y.mean((2, 3)))
"""


def test_code_that_cannot_build_on_meta_is_built_on_the_cpu(tmp_path):
    write(tmp_path, "mynet.py", VALUE_DEPENDENT_PY)
    write(tmp_path, "net.toml", python_entry('target = "mynet.py:Net"'))
    entry = get_entry("net", tmp_path)
    assert entry.build_on_meta().conv.weight.device.type == "cpu"
    assert entry.traits == ModelTraits(residual=None, batch_norm=False, depth=2)  # untraceable: layers counted
    state = torch.get_rng_state()
    check_forward(entry, 16, 5)
    assert torch.equal(torch.get_rng_state(), state)  # seeding after the check is unaffected


def test_a_forward_pass_that_cannot_run_on_meta_is_checked_on_the_cpu(tmp_path):
    write(tmp_path, "mynet.py", VALUE_DEPENDENT_PY)
    write(tmp_path, "net.toml", python_entry('target = "mynet.py:Net"\nread_in_init = false'))
    entry = get_entry("net", tmp_path)
    assert entry.build_on_meta().conv.weight.device.type == "meta"
    state = torch.get_rng_state()
    check_forward(entry, 16, 5)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return (self.fc(x.mean((2, 3))), x)", "in training mode it returns tuple, not a tensor of logits"),
        (
            "return self.fixed(x.mean((2, 3)))",
            "in training mode its output for 2 image(s) has shape (2, 7), not (2, 10)",
        ),
        (
            "return self.fc(x.mean((2, 3))) if self.training else x.mean((2, 3))",
            "in eval mode its output for 1 image(s) has shape (1, 3), not (1, 10)",
        ),
        ("return self.fc(x.mean((2, 3)))", None),  # the same network, done right
    ],
)
def test_check_forward_wants_one_row_of_logits_per_image(tmp_path, body, expected):
    write(
        tmp_path,
        "mynet.py",
        "from torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self, num_classes):\n        super().__init__()\n"
        "        self.fc, self.fixed = nn.Linear(3, num_classes), nn.Linear(3, 7)\n\n"
        f"    def forward(self, x):\n        {body}\n",
    )
    path = write(tmp_path, "net.toml", python_entry('target = "mynet.py:Net"'))
    if expected is None:
        check_forward(get_entry("net", tmp_path), 48, 10)
        return
    with pytest.raises(ArchbenchError) as info:
        check_forward(get_entry("net", tmp_path), 48, 10)
    assert info.value.message == f"{path}: key 'args' builds a model that cannot run on 48x48 input: {expected}"


def test_check_forward_names_a_fixed_size_of_a_user_network(tmp_path):
    write(
        tmp_path,
        "mynet.py",
        "from torch import nn\n\n\ndef make_net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n",
    )
    write(tmp_path, "net.toml", python_entry('target = "mynet.py:make_net"'))
    entry = get_entry("net", tmp_path)
    check_forward(entry, 32, 200)
    with pytest.raises(ArchbenchError, match=r"net\.toml: key 'args' .* 64x64 input: RuntimeError: "):
        check_forward(entry, 64, 200)


def test_shipped_entries_pass_check_forward_at_the_smoke_size():
    for name in ("resnet18", "resnet34_plain", "vgg16_bn"):
        check_forward(get_entry(name), 32, 200)


PYTHON_BAD = {
    "no target": (python_entry("width = 4"), NET_PY, "args.target", "is missing"),
    "target not a string": (python_entry("target = 3"), NET_PY, "args.target", "must be str"),
    "malformed target": (python_entry('target = "mynet.py"'), NET_PY, "args.target", 'must be "mynet.py:make_net" or'),
    "absolute path": (python_entry('target = "/opt/nets/mynet.py:make_net"'), NET_PY, "args.target", "relative to"),
    "missing file": (python_entry('target = "other.py:make_net"'), NET_PY, "args.target", "other.py, which is not a"),
    "error inside the file": (
        NET_TOML,
        "import numpyy\n" + NET_PY,
        "args.target",
        "cannot be imported: ModuleNotFoundError: No module named 'numpyy'",
    ),
    "syntax error": (NET_TOML, "def make_net(:\n", "args.target", "cannot be imported: SyntaxError"),
    "missing module": (
        python_entry('target = "archbench_no_such_package.nets:make_net"'),
        NET_PY,
        "args.target",
        "cannot be imported: ModuleNotFoundError: No module named 'archbench_no_such_package'",
    ),
    "missing attribute": (
        NET_TOML.replace("make_net", "make_nett"),
        NET_PY,
        "args.target",
        "names 'make_nett', which mynet.py does not define",
    ),
    "not callable": (NET_TOML, "make_net = 3\n", "args.target", "a int, not a callable"),
    "not a module": (
        NET_TOML,
        "def make_net(num_classes, width):\n    return [width]\n",
        "args.target",
        "names mynet.py:make_net, which returned list, not a torch.nn.Module",
    ),
    "raises": (
        NET_TOML,
        "def make_net(num_classes, width):\n    raise ValueError('width must be even')\n",
        "args",
        "is rejected by mynet.py:make_net: ValueError: width must be even",
    ),
    "unknown argument": (
        NET_TOML + 'colour = "red"\n',
        NET_PY,
        "args.colour",
        "is not an argument of mynet.py:make_net (num_classes, width)",
    ),
    "wrong type": (NET_TOML.replace("width = 4", 'width = "wide"'), NET_PY, "args.width", "must be int, got 'wide'"),
    "no num_classes": (
        NET_TOML,
        NET_PY.replace("num_classes: int, width", "width").replace(", num_classes)", ", 7)"),
        "args.target",
        "must take a num_classes argument",
    ),
}


@pytest.mark.parametrize("case", list(PYTHON_BAD))
def test_bad_python_entry_is_one_line_naming_file_and_key(tmp_path, case):
    toml, source, key, expected = PYTHON_BAD[case]
    write(tmp_path, "mynet.py", source)
    path = write(tmp_path, "net.toml", toml)
    message = the_error(tmp_path)
    assert message.startswith(f"{path}: key '{key}' ") and expected in message and "\n" not in message


CLI_CASES = [
    ("torchvision", "unknown name"),
    ("torchvision", "detection model"),
    ("torchvision", "misspelt argument"),
    ("torchvision", "argument the constructor fixes"),
    ("python", "missing file"),
    ("python", "error inside the file"),
    ("python", "not a module"),
    ("python", "raises"),
]


@pytest.mark.parametrize(("builder", "case"), CLI_CASES)
def test_cli_turns_a_bad_entry_into_exit_2_without_traceback(tmp_path, builder, case):
    if builder == "torchvision":
        args, key, expected = TORCHVISION_BAD[case]
        write(tmp_path, "net.toml", torchvision_entry(args))
    else:
        toml, source, key, expected = PYTHON_BAD[case]
        write(tmp_path, "mynet.py", source)
        write(tmp_path, "net.toml", toml)
    result = CliRunner().invoke(app, ["list", "--registry", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert "net.toml" in result.stderr and f"key '{key}'" in result.stderr and expected in result.stderr
