"""`archbench list` and the catalogue cache: rows counted once and cached by everything that changes them,
a cached listing that imports no torch, `--json`, the depth column, 80 columns, and no fvcore note."""

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import archbench.catalogue as catalogue_module
from archbench.catalogue import catalogue
from archbench.cli import app
from archbench.distributed import DistContext
from archbench.errors import ArchbenchError
from archbench.flops import count_gflops, fvcore_count
from archbench.train import model_size

TINY = 'description = "A tiny ResNet for tests"\nbuilder = "resnet"\n[args]\nlayers = [1, 1]\nwidths = [4, 8]\n'
NET_PY = """\
from torch import nn


def make_net(num_classes: int, width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""
NET_TOML = 'description = "mine"\nbuilder = "python"\n[args]\ntarget = "mynet.py:make_net"\n'


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ARCHBENCH_REGISTRY", raising=False)


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The names of the entries the catalogue counts (builds and traces) rather than reads from the cache."""
    names: list[str] = []
    count = catalogue_module._count
    monkeypatch.setattr(catalogue_module, "_count", lambda entry: names.append(entry.name) or count(entry))
    return names


def folder_with(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "registry"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def test_second_call_is_served_from_the_cache_with_the_same_rows(tmp_path, counted):
    folder = folder_with(tmp_path, tiny__toml=TINY, other__toml=TINY.replace("[4, 8]", "[4, 16]"))
    first = catalogue(folder)
    assert counted == ["other", "tiny"]
    assert catalogue(folder) == first and counted == ["other", "tiny"]
    assert [(r["name"], r["depth"], r["residual"], r["batch_norm"]) for r in first] == [
        ("other", 6, True, True),
        ("tiny", 6, True, True),
    ]
    assert first[1]["uncounted_ops"] == ["aten::add_", "aten::max_pool2d"]


def test_a_changed_toml_or_code_is_counted_again(tmp_path, counted, monkeypatch):
    folder = folder_with(tmp_path, tiny__toml=TINY)
    catalogue(folder)
    (folder / "tiny.toml").write_text(TINY + "# a comment\n")
    catalogue(folder)
    assert counted == ["tiny", "tiny"]
    monkeypatch.setattr(catalogue_module, "_archbench_code", lambda: b"other model code")
    catalogue(folder)
    monkeypatch.setattr(catalogue_module, "COUNTING_PACKAGES", ("torch", "torchvision"))  # another fvcore
    catalogue(folder)
    assert counted == ["tiny"] * 4


def test_a_python_entry_is_counted_again_when_its_code_or_a_file_beside_it_changes(tmp_path, counted):
    folder = folder_with(tmp_path, mine__toml=NET_TOML, mynet__py=NET_PY)
    (row,) = catalogue(folder)
    assert row["parameters"] == 3 * 4 * 9 + 4 + 4 * 200 + 200
    (folder / "mynet.py").write_text(NET_PY.replace("width: int = 4", "width: int = 5"))
    (row,) = catalogue(folder)
    assert row["parameters"] == 3 * 5 * 9 + 5 + 5 * 200 + 200
    (folder / "blocks.py").write_text("# a file the target may import\n")
    catalogue(folder)
    assert catalogue(folder) == [row] and counted == ["mine"] * 3


def test_a_broken_file_is_reported_even_when_the_others_are_cached(tmp_path):
    folder = folder_with(tmp_path, tiny__toml=TINY)
    catalogue(folder)
    folder_with(tmp_path, broken__toml=TINY.replace("layers", "colour"))
    with pytest.raises(ArchbenchError, match=r"broken\.toml: key 'args.colour' is not an argument"):
        catalogue(folder)
    (folder / "broken.toml").unlink()
    (folder / "mine.toml").write_text(NET_TOML)  # its target file does not exist
    with pytest.raises(ArchbenchError, match=r"mine\.toml: key 'args.target' names mynet.py, which is not a file"):
        catalogue(folder)


def test_a_damaged_cache_file_is_counted_again_and_nan_flops_survive_the_cache(tmp_path, counted):
    fixed = NET_PY.replace("nn.AdaptiveAvgPool2d(1), ", "nn.Flatten(), nn.Linear(4 * 30 * 30, 4), ")
    folder = folder_with(tmp_path, mine__toml=NET_TOML, mynet__py=fixed)  # runs at 32x32 only
    (row,) = catalogue(folder)
    assert math.isnan(row["gflops_224"]) and row["uncounted_ops"] == []
    (cached,) = (tmp_path / "cache" / "catalogue").glob("*.json")
    assert json.loads(cached.read_text())["gflops_224"] is None  # strict JSON: null, not NaN
    (again,) = catalogue(folder)
    assert math.isnan(again["gflops_224"]) and counted == ["mine"]
    cached.write_text('{"parameters": 1')
    (again,) = catalogue(folder)
    assert again["parameters"] == row["parameters"] and counted == ["mine", "mine"]


def test_an_unwritable_cache_costs_a_warning_not_the_listing(tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "a-file"))
    folder = folder_with(tmp_path, tiny__toml=TINY)
    with caplog.at_level(logging.WARNING, logger="archbench"):
        (row,) = catalogue(folder)
    assert row["name"] == "tiny" and "the catalogue is not cached" in caplog.text


def test_a_cached_listing_imports_no_torch(tmp_path):
    folder = folder_with(tmp_path, tiny__toml=TINY, mine__toml=NET_TOML, mynet__py=NET_PY)
    expected = catalogue(folder)
    code = (
        "import json, sys; from archbench.catalogue import catalogue; rows = catalogue(sys.argv[1]); "
        "print(json.dumps([rows, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fvcore'))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120, check=True
    )
    rows, imported = json.loads(done.stdout)
    assert rows == expected and imported == []


def test_list_json_has_every_field_and_null_for_uncounted_flops(tmp_path):
    folder = folder_with(tmp_path, tiny__toml=TINY)
    result = CliRunner().invoke(app, ["list", "--registry", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row == {**catalogue(folder)[0]}
    assert list(row) == ["name", *catalogue_module.COUNTED]


def test_list_at_80_columns_shows_depth_fits_and_prints_no_fvcore_note(tmp_path):
    folder = folder_with(tmp_path, tiny__toml=TINY, long__toml=TINY.replace("A tiny", "A " + "very " * 20 + "tiny"))
    result = CliRunner().invoke(app, ["list", "--registry", str(folder)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "parameters" in line)
    assert "depth" in header and "residual" in header
    (tiny,) = [line for line in lines if line.startswith("│ tiny")]
    assert tiny.split("│")[4].strip() == "6"  # the depth column
    description = [i for i, line in enumerate(lines) if line.startswith("long ")]
    assert description and lines[description[0] + 1].startswith(" ") and not lines[description[0] + 2].startswith(" ")
    assert "fvcore does not count" not in result.output and "aten::" not in result.output
    wide = CliRunner().invoke(app, ["list", "--registry", str(folder)], env={"COLUMNS": "160"})
    assert max(len(line) for line in wide.stdout.splitlines()) <= 160 and "│ A tiny ResNet for tests" in wide.stdout


def test_flop_counts_are_quiet_and_say_what_they_left_out(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 16, 16))
    with caplog.at_level(logging.DEBUG, logger="archbench"):
        gflops, uncounted = fvcore_count(model, 16)
        assert count_gflops(model, 16) == gflops
    assert uncounted == ["aten::max_pool2d"] and caplog.text == ""
    assert gflops == (4 * 3 * 9 * 14 * 14 + 4 * 7 * 7 * 2) / 1e9


def test_a_run_records_the_ops_fvcore_left_out():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    size = model_size(model, 16, DistContext())
    assert size["gflops"]["uncounted_ops"] == ["aten::max_pool2d"]
