"""The command line as a new user meets it: help that reads at 80 columns, choices shown and checked before
anything heavy is imported, -h, --version, completion, one --runs flag, the report's files found beside the
runs folder, and the Python API taking strings for paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

import archbench
from archbench.cli import app
from archbench.config import PRECISION_CHOICES, PRESETS, SCHEDULES, BenchRequest, RunRequest, TuneRequest

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
COMMANDS = [["run"], ["tune"], ["bench"], ["status"], ["report"], ["list"], ["data"], ["data", "prepare"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "archbench")
def test_help_wraps_at_80_columns_and_cuts_nothing(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    for line in result.output.splitlines():
        assert len(line) <= 80, line
        assert "…" not in line, line
        assert line.startswith("Usage:") or not line.rstrip().endswith("..."), line  # a command's help cut short
    assert runner.invoke(app, [*command, "-h"], env={"COLUMNS": "80"}, terminal_width=80).output == result.output


def test_help_shows_the_choices_from_where_they_are_defined():
    text = " ".join(runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output.split())
    assert f"--preset <{'|'.join(PRESETS)}>" in text
    assert f"--schedule <{'|'.join(SCHEDULES)}>" in text
    assert f"--precision <{'|'.join(PRECISION_CHOICES)}>" in text
    assert "--cluster <slurm|local>" in text


@pytest.mark.parametrize("command", [["run"], ["tune"], ["bench"], ["data", "prepare"], ["data", "synth"]])
def test_help_names_values_by_what_they_are_not_by_their_python_type(command):
    text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output
    for placeholder in ("<str>", "<path>", "<int>", "<float>", "<list[str]>", "<int range>"):
        assert placeholder not in text, placeholder
    expected = {
        "run": ["MODEL...  "],
        "tune": ["MODEL...  "],
        "bench": ["MODEL...  "],
        "prepare": ["DATASET  ", "--root DIR ", "--source URL|FILE|DIR ", "--image-size N "],
        "synth": ["--root DIR ", "--classes N ", "--seed N "],
    }[command[-1]]
    assert all(f"  {shown}" in text for shown in expected), text


def test_the_precision_choices_are_the_ones_the_loop_knows():
    from archbench.devices import PRECISIONS

    assert set(PRECISION_CHOICES) == {"auto", *PRECISIONS}


def test_version_and_completion():
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and result.output.strip() == f"archbench {archbench.__version__}"
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


CHECK = """
import sys, time
from archbench.cli import app
started = time.perf_counter()
code = app(sys.argv[1:], standalone_mode=False)
print("torch" in sys.modules, round(time.perf_counter() - started, 3), code)
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "smokey"], "unknown preset 'smokey'; use one of: paper, smoke"),
        (["--schedule", "linear"], "unknown schedule 'linear'; use one of: cosine, constant"),
        (["--precision", "fp8"], "unknown precision 'fp8'; use one of: auto, fp32, bf16, fp16."),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--launcher", "ray"], "unknown launcher 'ray'; use one of: submitit."),
        (["--lr", "fast"], "neither a number nor 'tuned'"),
        (["--lr", "tuned"], "does not exist"),
    ],
)
def test_a_bad_choice_or_a_missing_tuning_file_is_answered_before_torch_is_imported(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-c", CHECK, "run", "resnet18", "--runs", str(tmp_path / "runs"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    torch_imported, _seconds, code = result.stdout.split()
    assert message in result.stderr and code == "2", result.stderr
    assert torch_imported == "False"  # no heavy import, no data read
    assert not (tmp_path / "runs").exists()


def test_runs_is_the_folder_flag_and_out_its_alias():
    for command in ("run", "tune"):
        for flag in ("--runs", "--out"):
            result = runner.invoke(app, [command, "resnet18", flag, "elsewhere", "--print-config"])
            assert result.exit_code == 0, result.output
            assert tomllib.loads(result.output)["runs"] == "elsewhere"


def test_the_report_and_its_benchmark_files_default_beside_the_runs_folder(tmp_path, monkeypatch):
    import archbench.report

    called = {}
    monkeypatch.setattr(archbench.report, "write_report", lambda **kw: called.update(kw) or kw["out"])
    project = tmp_path / "study"
    result = runner.invoke(app, ["report", "--runs", str(project / "runs")])
    assert result.exit_code == 0, result.output
    assert called == {
        "runs_dir": project / "runs",
        "out": project / "REPORT.md",
        "benchmarks": project / "benchmarks" / "forward_latency.json",
        "bench_results": project / "benchmarks" / "results",
        "gpu_results": project / "benchmarks" / "gpu" / "gpu-results.json",
    }
    result = runner.invoke(app, ["report", "--runs", str(project / "runs"), "--report", str(tmp_path / "R.md")])
    assert result.exit_code == 0 and called["out"] == tmp_path / "R.md"


def test_the_holdout_option_is_not_the_synthetic_sets_test_option():
    run_help = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--holdout-per-class" in run_help and "--val-per-class" not in run_help
    assert "--holdout-per-class" in runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output


def test_the_python_api_takes_strings_for_paths():
    request = RunRequest(models=["resnet18"], out="somewhere", registry="my-registry", tuning=None)
    assert request.out == Path("somewhere") and request.registry == Path("my-registry")
    assert request.tuning_file == Path("somewhere") / "tuning.json"
    assert TuneRequest(models=["m"], tuning="t.json").tuning == Path("t.json")
    assert BenchRequest(models=["m"], out="bench-out").out == Path("bench-out")
    assert RunRequest(models=["m"], data="synthetic").data == "synthetic"  # a name, not a path


def test_the_licence_file_matches_the_declared_licence_and_the_metadata_is_complete():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the archbench authors" in text
    assert "Permission is hereby granted, free of charge" in text
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the SPDX field alone
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("tensorboard") for dep in extras["tensorboard"])


def test_list_says_its_counts_are_at_the_class_count_it_builds(tiny_registry, tmp_path, monkeypatch):
    from archbench.config import DEFAULT_NUM_CLASSES
    from archbench.flops import count_parameters
    from archbench.registry import load_registry

    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["list", "--registry", str(tiny_registry)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"Parameters and GFLOPs at {DEFAULT_NUM_CLASSES} output classes" in " ".join(result.output.split())
    entry = load_registry(tiny_registry)["tiny_resnet"]
    shown = f"{count_parameters(entry.build(num_classes=DEFAULT_NUM_CLASSES)):,}"
    assert any(line.split()[:2] == ["tiny_resnet", shown] for line in result.output.replace("│", " ").splitlines())
