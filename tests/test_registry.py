"""The registry: the shipped entries, where the folder is found, user-added and malformed TOML files."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

import archbench
import archbench.catalogue
from archbench.cli import app
from archbench.errors import ArchbenchError
from archbench.flops import count_parameters
from archbench.references import MODEL_COUNTS
from archbench.registry import (
    build_model,
    catalogue,
    get_entry,
    list_models,
    load_registry,
    resolve_registry_dir,
    tomllib,
)

REPO = Path(__file__).resolve().parent.parent
CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # He et al. 2016, §4.2: 6n+2 layers, n = 3, 5, 7, 9, 18
SHIPPED = sorted(
    [
        "resnet18",
        "resnet18_plain",
        "resnet34",
        "resnet34_plain",
        *(f"resnet{d}{suffix}" for d in CIFAR_DEPTHS for suffix in ("", "_plain")),
    ]
) + [
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]
RESNET34 = """\
description = "ResNet-34 (He et al. 2016): BasicBlocks [3,4,6,3]"
builder = "resnet"

[args]
layers = [3, 4, 6, 3]
"""


@pytest.fixture(autouse=True)
def no_registry_env(monkeypatch):
    monkeypatch.delenv("ARCHBENCH_REGISTRY", raising=False)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_shipped_entries_and_what_they_declare():
    """Residual, BN and depth are read from each built model; the depth counts the longest path."""
    entries = load_registry()
    assert sorted(entries) == list_models() == SHIPPED
    declared = {n: (e.builder, e.residual, e.batch_norm, e.depth, e.lr_scale) for n, e in entries.items()}
    assert declared == {
        **{f"resnet{d}": ("resnet", True, True, d, None) for d in CIFAR_DEPTHS},
        **{f"resnet{d}_plain": ("resnet", False, True, d, None) for d in CIFAR_DEPTHS},
        "resnet18": ("resnet", True, True, 18, None),
        "resnet18_plain": ("resnet", False, True, 18, None),
        "resnet34": ("resnet", True, True, 34, None),
        "resnet34_plain": ("resnet", False, True, 34, None),
        "vgg11": ("vgg", False, False, 11, 0.1),  # torchvision's reference: lr 0.01 for VGG without BN
        "vgg11_bn": ("vgg", False, True, 11, None),
        "vgg16": ("vgg", False, False, 16, 0.1),
        "vgg16_bn": ("vgg", False, True, 16, None),
        "vgg19": ("vgg", False, False, 19, 0.1),
        "vgg19_bn": ("vgg", False, True, 19, None),
    }
    assert all(e.path.parent == resolve_registry_dir() and e.description for e in entries.values())


def test_depth_study_pairs_differ_only_in_the_shortcut():
    entries = load_registry()
    for depth in (18, 34):
        residual, plain = entries[f"resnet{depth}"], entries[f"resnet{depth}_plain"]
        assert {k: v for k, v in residual.args.items() if k not in ("residual", "zero_init_last_bn")} == {
            k: v for k, v in plain.args.items() if k not in ("residual", "zero_init_last_bn")
        }
        assert (residual.args["zero_init_last_bn"], plain.args["zero_init_last_bn"]) == (True, False)
    for depth in CIFAR_DEPTHS:  # He et al. initialise every BN gamma to 1, residual or plain
        residual, plain = entries[f"resnet{depth}"], entries[f"resnet{depth}_plain"]
        assert {**residual.args, "residual": False} == plain.args and residual.args["residual"] is True
        assert residual.args["zero_init_last_bn"] is False


def test_catalogue_rows_match_the_reference_table():
    # archbench.references.MODEL_COUNTS (torchvision 0.29.1, fvcore 0.1.5); plain-18 is checked in test_models.py.
    rows = {row["name"]: row for row in catalogue()}
    assert list(rows) == SHIPPED
    checked = [c for c in MODEL_COUNTS if c.model in rows]
    cifar = {f"resnet{d}{suffix}" for d in CIFAR_DEPTHS for suffix in ("", "_plain")}  # test_models_cifar.py
    assert {c.model for c in checked} == set(SHIPPED) - {"resnet18_plain"} - cifar
    for count in checked:
        assert rows[count.model]["parameters"] == count.parameters, count.model
        if count.gflops_224 is not None:
            assert round(rows[count.model]["gflops_224"], 4) == count.gflops_224, count.model
    for depth in (18, 34):  # no 1x1 projections
        assert rows[f"resnet{depth}_plain"]["gflops_224"] < rows[f"resnet{depth}"]["gflops_224"]
    entries = load_registry()  # their values are checked in test_the_shipped_entries_and_what_they_declare
    shown = {n: (r["residual"], r["batch_norm"], r["depth"], r["description"]) for n, r in rows.items()}
    assert shown == {n: (e.residual, e.batch_norm, e.depth, e.description) for n, e in entries.items()}


def test_unknown_model_names_the_closest():
    with pytest.raises(ArchbenchError) as info:
        get_entry("resnt18")
    closest = "closest: resnet18, resnet110, resnet56"
    assert info.value.message == f"unknown model 'resnt18'; {closest} (see `archbench list`)"
    with pytest.raises(ArchbenchError, match="known: resnet110, resnet110_plain, resnet18, resnet18_plain, resnet20, "):
        build_model("transformer")


def test_build_model_overrides_num_classes():
    assert build_model("resnet18", num_classes=10).fc.out_features == 10


def test_folder_resolution_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    write(explicit, "resnet34", RESNET34)
    write(env, "tiny", RESNET34.replace("[3, 4, 6, 3]", "[1, 1, 1, 1]"))
    assert resolve_registry_dir() == REPO / "registry"  # the checkout's, beside the package
    monkeypatch.setenv("ARCHBENCH_REGISTRY", str(env))
    assert resolve_registry_dir() == env and list_models() == ["tiny"]
    assert resolve_registry_dir(explicit) == explicit and list_models(explicit) == ["resnet34"]
    with pytest.raises(ArchbenchError, match="does not exist"):
        resolve_registry_dir(tmp_path / "missing")


def test_no_registry_anywhere_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(archbench.catalogue, "CHECKOUT_REGISTRY", tmp_path / "no-checkout")
    monkeypatch.setattr(archbench.catalogue, "installed_registry", lambda: tmp_path / "no-install")
    with pytest.raises(ArchbenchError, match="no model registry found .* pass --registry DIR"):
        resolve_registry_dir()


def test_installed_copy_is_found_through_importlib_resources(tmp_path):
    """The layout `pip install .` makes (package + registry_files/*.toml), imported away from the checkout."""
    site = tmp_path / "site"
    shutil.copytree(Path(archbench.__file__).parent, site / "archbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "registry", site / "archbench" / "registry_files")
    found = _installed_registry_listing(site, cwd=tmp_path)
    assert found == [str(site / "archbench" / "registry_files"), " ".join(SHIPPED)]


def _installed_registry_listing(site: Path, cwd: Path) -> list[str]:
    code = "import archbench.registry as r; print(r.resolve_registry_dir()); print(*r.list_models())"
    env = {**os.environ, "PYTHONPATH": str(site)}  # ARCHBENCH_REGISTRY is unset by the autouse fixture
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_pyproject_installs_every_package():
    """The fast counterpart of the wheel test: each folder of archbench/ with an __init__.py is listed."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "archbench").rglob("__init__.py")}
    assert found <= set(listed)


@pytest.mark.slow
def test_wheel_carries_the_registry(tmp_path):
    src = tmp_path / "src"
    top_level = {".git", ".venv", "data", "runs", "build", "dist"}  # a source tree as a fresh clone has it

    def skip(folder, names):
        at_top = Path(folder) == REPO
        return [n for n in names if at_top and n in top_level or n.endswith(("__pycache__", ".egg-info"))]

    shutil.copytree(REPO, src, ignore=skip)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("archbench-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tomls = sorted(n for n in zf.namelist() if n.endswith(".toml"))
        modules = sorted(n for n in zf.namelist() if n.endswith(".py"))
        zf.extractall(tmp_path / "site")
    assert tomls == [f"archbench/registry_files/{name}.toml" for name in SHIPPED]
    # every module of the source tree is installed (a subpackage missing from pyproject's list is not)
    assert modules == sorted(p.relative_to(REPO).as_posix() for p in (REPO / "archbench").rglob("*.py"))
    found = _installed_registry_listing(tmp_path / "site", cwd=tmp_path)
    assert found == [str(tmp_path / "site" / "archbench" / "registry_files"), " ".join(SHIPPED)]


def test_user_added_resnet10_builds_and_lists(tmp_path):
    """A file a user adds (not one archbench ships) builds, and its traits are read from the model."""
    write(tmp_path, "resnet10", RESNET34.replace("[3, 4, 6, 3]", "[1, 1, 1, 1]"))
    assert list_models(tmp_path) == ["resnet10"]
    entry = get_entry("resnet10", tmp_path)
    assert (entry.depth, entry.residual, entry.batch_norm, entry.lr_scale) == (10, True, True, None)
    block = torchvision.models.resnet.BasicBlock
    with torch.device("meta"):
        parameters = count_parameters(torchvision.models.ResNet(block, [1, 1, 1, 1], num_classes=200))
    assert count_parameters(build_model("resnet10", tmp_path)) == parameters
    result = CliRunner().invoke(app, ["list", "--registry", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "resnet10" in result.stdout and f"{parameters:,}" in result.stdout


def test_identity_is_portable_and_names_the_file_by_its_hash(tmp_path):
    path = write(tmp_path, "resnet10", RESNET34.replace("[3, 4, 6, 3]", "[1, 1, 1, 1]"))
    identity = get_entry("resnet10", tmp_path).identity()
    assert identity == {
        "name": "resnet10",
        "builder": "resnet",
        "args": {"layers": [1, 1, 1, 1]},
        "description": "ResNet-34 (He et al. 2016): BasicBlocks [3,4,6,3]",
        "lr_scale": None,
        "toml_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "residual": True,
        "batch_norm": True,
        "depth": 10,
    }
    assert str(tmp_path) not in json.dumps(identity)  # JSON, and no path of this machine
    path.write_text(path.read_text() + "# a comment changes the file, so its recorded hash\n")
    assert get_entry("resnet10", tmp_path).identity()["toml_sha256"] != identity["toml_sha256"]
    for entry in load_registry().values():
        shipped = json.loads(json.dumps(entry.identity()))
        assert shipped["toml_sha256"] == hashlib.sha256(entry.path.read_bytes()).hexdigest()
        assert (shipped["residual"], shipped["depth"]) == (entry.residual, entry.depth)


MALFORMED = {
    "bad syntax": ('description = "x"\nbuilder = \n', "not valid TOML"),
    "unknown key": ('colour = "red"\n' + RESNET34, "key 'colour' is not allowed"),
    "unknown builder arg": (RESNET34 + 'colour = "red"\n', "key 'args.colour' is not an argument of builder 'resnet'"),
    "wrong type": (RESNET34.replace("[3, 4, 6, 3]", '"3,4,6,3"'), "key 'args.layers' must be "),
    "wrong type in a list": (RESNET34.replace("[3, 4, 6, 3]", "[3, 4, 6.5, 3]"), "key 'args.layers' must be "),
    "bool is not a number": (RESNET34 + "num_classes = true\n", "key 'args.num_classes' must be int"),
    "wrong top-level type": (RESNET34.replace('"resnet"', "1"), "key 'builder' must be str"),
    "missing builder": (RESNET34.replace('builder = "resnet"', ""), "key 'builder' is missing"),
    "unknown builder": (RESNET34.replace('"resnet"', '"resnett"'), "key 'builder' names an unknown builder 'resnett'"),
    "missing builder arg": (RESNET34.replace("layers = [3, 4, 6, 3]", ""), "key 'args.layers' is missing"),
    "arg value the builder rejects": (RESNET34 + "widths = [64, 128]\n", "key 'args' is rejected by builder"),
    "unknown recipe key": (RESNET34 + "[recipe]\nlr = 0.01\n", "key 'recipe.lr' is not allowed"),
    "recipe type": (RESNET34 + '[recipe]\nlr_scale = "0.1"\n', "key 'recipe.lr_scale' must be float"),
    "recipe value": (RESNET34 + "[recipe]\nlr_scale = -1\n", "key 'recipe.lr_scale' must be positive"),
    "vgg config": ('description = "x"\nbuilder = "vgg"\n[args]\nconfig = "Z"\n', "config 'Z' is not one of A, B, D, E"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_is_one_line_naming_file_and_key(tmp_path, case):
    text, expected = MALFORMED[case]
    path = write(tmp_path, "broken", text)
    write(tmp_path, "resnet34", RESNET34)
    with pytest.raises(ArchbenchError) as info:
        list_models(tmp_path)
    message = info.value.message
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message


def test_duplicate_names_differing_only_in_case(tmp_path):
    write(tmp_path, "resnet34", RESNET34)
    write(tmp_path, "ResNet34", RESNET34)
    with pytest.raises(ArchbenchError, match=r"resnet34\.toml: name 'resnet34' clashes with .*ResNet34\.toml"):
        load_registry(tmp_path)


@pytest.mark.parametrize("case", ["bad syntax", "unknown key", "wrong type", "unknown builder", "unknown builder arg"])
@pytest.mark.parametrize("via", ["--registry", "ARCHBENCH_REGISTRY"])
def test_cli_turns_a_malformed_file_into_exit_2_without_traceback(tmp_path, case, via):
    write(tmp_path, "broken", MALFORMED[case][0])
    if via == "--registry":
        result = CliRunner().invoke(app, ["list", "--registry", str(tmp_path)])
    else:
        result = CliRunner().invoke(app, ["list"], env={"ARCHBENCH_REGISTRY": str(tmp_path)})
    assert result.exit_code == 2
    assert "broken.toml" in result.stderr and MALFORMED[case][1] in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
