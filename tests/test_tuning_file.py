"""What a tuning file and a run are tied to: a python entry's code with the files it imports, and a tuning
file whose every field has the type its readers rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_run_request, tiny_tune_request
from rich.console import Console
from typer.testing import CliRunner

from archbench.catalogue import _archbench_code, cache_key
from archbench.cli import app
from archbench.data import resolve
from archbench.errors import ArchbenchError
from archbench.registry import get_entry
from archbench.study import run_models
from archbench.tune import tune
from archbench.tuning import read_tuning

NET_PY = """
from torch import nn
from blocks import body


def make(num_classes):
    return nn.Sequential(body(8), nn.Linear(8, num_classes))
"""
BLOCKS_PY = """
from torch import nn


def body(c):
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
"""
MYNET_TOML = 'description = "a network of two files"\nbuilder = "python"\n[args]\ntarget = "net.py:make"\n'


def python_registry(folder: Path) -> Path:
    """A registry of one python entry, `mynet`, whose target file imports the file beside it."""
    folder.mkdir()
    for name, text in {"net.py": NET_PY, "blocks.py": BLOCKS_PY, "mynet.toml": MYNET_TOML}.items():
        (folder / name).write_text(text)
    return folder


def to_tanh(registry: Path) -> None:
    """Edit the imported file only: the same target file builds another network."""
    (registry / "blocks.py").write_text(BLOCKS_PY.replace("nn.ReLU()", "nn.Tanh()"))


def source_and_cache_key(registry: Path) -> tuple[str, str]:
    return (
        get_entry("mynet", registry).identity()["source_sha256"],
        cache_key(registry / "mynet.toml", [_archbench_code()]),
    )


def test_a_python_entrys_identity_and_catalogue_row_change_with_a_file_its_target_imports(tmp_path):
    registry = python_registry(tmp_path / "registry")
    before = source_and_cache_key(registry)
    (registry / "notes.txt").write_text("not code")
    assert source_and_cache_key(registry) == before
    to_tanh(registry)
    after = source_and_cache_key(registry)
    assert after[0] != before[0] and after[1] != before[1]


def test_a_run_after_editing_an_imported_file_is_a_new_run(tmp_path, tiny_data):
    registry = python_registry(tmp_path / "registry")
    request = tiny_run_request(registry, tiny_data, tmp_path / "runs", models=["mynet"], epochs=1)
    (first,) = run_models(request)
    to_tanh(registry)
    (second,) = run_models(request)
    assert second["run_id"] != first["run_id"]
    assert len(list((tmp_path / "runs" / "mynet").glob("*/summary.json"))) == 2


@pytest.fixture(scope="module")
def tuned_mynet(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """A python entry tuned on two rates for one epoch: its registry and its tuning file."""
    tmp = tmp_path_factory.mktemp("tuned-mynet")
    registry = python_registry(tmp / "registry")
    request = tiny_tune_request(registry, tiny_data, tmp / "runs", models=("mynet",))
    tune(request, Console(quiet=True))
    return registry, tmp / "runs" / "tuning.json"


def run_tuned(registry: Path, tuning: Path, data: Path, out: Path):
    args = ["run", "mynet", "--data", data, "--lr", "tuned", "--tuning", tuning, "--epochs", 1, "--batch-size", 16]
    return CliRunner().invoke(app, [str(a) for a in [*args, "--device", "cpu", "--registry", registry, "--out", out]])


def test_a_tuned_rate_is_refused_once_a_file_the_python_entry_imports_has_changed(tuned_mynet, tiny_data, tmp_path):
    registry, tuning = tuned_mynet
    tuned_hash = json.loads(tuning.read_text())["models"]["mynet"]["source_sha256"][0]
    assert tuned_hash == get_entry("mynet", registry).identity()["source_sha256"]
    changed = Path(shutil.copytree(registry, tmp_path / "registry"))
    to_tanh(changed)
    now = get_entry("mynet", changed).identity()["source_sha256"]
    result = run_tuned(changed, tuning, tiny_data, tmp_path / "runs")
    assert result.exit_code == 2 and "mynet's code has changed since" in result.output, result.output
    assert tuned_hash[:12] in result.output and now[:12] in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_tuning_file_that_does_not_record_a_python_entrys_code_is_refused(tuned_mynet, tiny_data, tmp_path):
    registry, tuning = tuned_mynet
    content = json.loads(tuning.read_text())
    del content["models"]["mynet"]["source_sha256"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(content))
    result = run_tuned(registry, older, tiny_data, tmp_path / "runs")
    assert result.exit_code == 2 and "does not record which code mynet was tuned with" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def damaged(content: dict, path: str, value) -> dict:
    """`content` with the field at `path` ("models.mynet.lr") set to `value`, or removed for `...`."""
    *parents, last = path.split(".")
    copy = json.loads(json.dumps(content))
    where = copy
    for key in parents:
        where = where[key]
    if value is ...:
        del where[last]
    else:
        where[last] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("models.mynet.status", ..., "models.mynet.status is missing"),
        ("models.mynet.grid", ..., "models.mynet.grid is missing"),
        ("validation", ..., "validation is missing"),
        ("models", [1], "models is [1], not an object"),
        ("models.mynet", 0.1, "models.mynet is 0.1, not an object"),
        ("data", "abc", 'data is "abc", not an object'),
        ("models.mynet.grid", 5, "models.mynet.grid is 5, not a list"),
        ("models.mynet.registry_toml_sha256", "abc", 'models.mynet.registry_toml_sha256 is "abc", not a list'),
        ("models.mynet.global_batch_size", "x", 'models.mynet.global_batch_size is "x", not an integer'),
        ("models.mynet.lr", True, "models.mynet.lr is true, not a number"),
        ("models.mynet.status", "best", 'models.mynet.status is "best", not one of'),
    ],
)
def test_a_damaged_tuning_file_is_one_line_naming_the_file_and_the_field(
    tuned_mynet, tiny_data, tmp_path, path, value, problem
):
    _, tuning = tuned_mynet
    content = json.loads(tuning.read_text())
    data = resolve(str(tiny_data))
    read_tuning(tuning, data).rate_for("mynet")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(damaged(content, path, value)))
    with pytest.raises(ArchbenchError) as e:
        read_tuning(bad, data).rate_for("mynet")
    assert f"the tuning file {bad} is damaged: {problem}" in str(e.value) and "\n" not in str(e.value)
