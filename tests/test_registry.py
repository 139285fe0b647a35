"""The registry: the six entries, where the folder is found, user-added and malformed TOML files."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torchvision
from typer.testing import CliRunner

import archbench
import archbench.registry as registry
from archbench.cli import app
from archbench.errors import ArchbenchError
from archbench.flops import count_parameters
from archbench.registry import build_model, catalogue, get_entry, list_models, load_registry, resolve_registry_dir

REPO = Path(__file__).resolve().parent.parent
SIX = ["resnet18", "resnet18_plain", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]
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


def test_the_six_entries_and_what_they_declare():
    entries = load_registry()
    assert sorted(entries) == list_models() == SIX
    declared = {n: (e.builder, e.residual, e.batch_norm, e.depth, e.lr_scale) for n, e in entries.items()}
    assert declared == {
        "resnet18": ("resnet", True, True, 18, None),
        "resnet18_plain": ("resnet", False, True, 18, None),
        "vgg11": ("vgg", False, False, 11, 0.1),  # torchvision's reference: lr 0.01 for VGG without BN
        "vgg11_bn": ("vgg", False, True, 11, None),
        "vgg16": ("vgg", False, False, 16, 0.1),
        "vgg16_bn": ("vgg", False, True, 16, None),
    }
    assert all(e.path.parent == resolve_registry_dir() and e.description for e in entries.values())


def test_catalogue_rows_match_the_reference_table():
    # REFERENCES.md (torchvision 0.29.1, fvcore 0.1.5); plain-18 is checked in test_models.py.
    reference = {
        "resnet18": (11_279_112, 1.8187),
        "vgg11": (129_585_736, 7.6058),
        "vgg11_bn": (129_591_240, 7.6207),
        "vgg16": (135_079_944, 15.4670),
        "vgg16_bn": (135_088_392, 15.4941),
    }
    rows = {row["name"]: row for row in catalogue()}
    assert list(rows) == SIX
    for name, (parameters, gflops) in reference.items():
        assert (rows[name]["parameters"], round(rows[name]["gflops_224"], 4)) == (parameters, gflops)
    assert rows["resnet18_plain"]["gflops_224"] < rows["resnet18"]["gflops_224"]  # no 1x1 projections
    assert [rows[n]["residual"] for n in SIX] == [True, False, False, False, False, False]


def test_unknown_model_names_the_closest():
    with pytest.raises(ArchbenchError) as info:
        get_entry("resnt18")
    assert info.value.message == "unknown model 'resnt18'; closest: resnet18, resnet18_plain (see `archbench list`)"
    with pytest.raises(ArchbenchError, match="known: resnet18, resnet18_plain, vgg11"):
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
    monkeypatch.setattr(registry, "CHECKOUT_REGISTRY", tmp_path / "no-checkout")
    monkeypatch.setattr(registry, "installed_registry", lambda: tmp_path / "no-install")
    with pytest.raises(ArchbenchError, match="no model registry found .* pass --registry DIR"):
        resolve_registry_dir()


def test_installed_copy_is_found_through_importlib_resources(tmp_path):
    """The layout `pip install .` makes (package + registry_files/*.toml), imported away from the checkout."""
    site = tmp_path / "site"
    shutil.copytree(Path(archbench.__file__).parent, site / "archbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "registry", site / "archbench" / "registry_files")
    found = _installed_registry_listing(site, cwd=tmp_path)
    assert found == [str(site / "archbench" / "registry_files"), " ".join(SIX)]


def _installed_registry_listing(site: Path, cwd: Path) -> list[str]:
    code = "import archbench.registry as r; print(r.resolve_registry_dir()); print(*r.list_models())"
    env = {**os.environ, "PYTHONPATH": str(site)}  # ARCHBENCH_REGISTRY is unset by the autouse fixture
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


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
        zf.extractall(tmp_path / "site")
    assert tomls == [f"archbench/registry_files/{name}.toml" for name in SIX]
    found = _installed_registry_listing(tmp_path / "site", cwd=tmp_path)
    assert found == [str(tmp_path / "site" / "archbench" / "registry_files"), " ".join(SIX)]


def test_user_added_resnet34_builds_and_lists(tmp_path):
    write(tmp_path, "resnet34", RESNET34)
    assert list_models(tmp_path) == ["resnet34"]
    entry = get_entry("resnet34", tmp_path)
    assert (entry.depth, entry.residual, entry.lr_scale) == (34, True, None)
    parameters = count_parameters(torchvision.models.resnet34(num_classes=200))
    assert count_parameters(build_model("resnet34", tmp_path)) == parameters
    result = CliRunner().invoke(app, ["list", "--registry", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "resnet34" in result.stdout and f"{parameters:,}" in result.stdout


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
