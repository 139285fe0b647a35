"""Nothing silent: options and models are checked before a run folder exists, and every expected failure of
every command is one line and exit code 2, never a traceback, with nothing left half-made."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from conftest import invoke, run_args

from archbench.config import RunRequest
from archbench.study import run_models

FIXED_SIZE_NET = '''
from torch import nn


class Fixed(nn.Module):
    """Runs at 64x64 input only, like a network with a fixed-size head."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64 * 64, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))
'''


def one_line(output: str) -> bool:
    """The whole answer is a single line, the error."""
    lines = output.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error:")


def test_a_model_that_fails_at_the_requested_size_creates_no_run(tiny_data, tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "fixed.py").write_text(FIXED_SIZE_NET)
    (registry / "fixed.toml").write_text(
        'description = "fixed"\nbuilder = "python"\n[args]\ntarget = "fixed.py:Fixed"\n'
    )
    out = tmp_path / "runs"
    code, output = invoke(
        "run",
        "fixed",
        "--data",
        tiny_data,
        "--preset",
        "smoke",
        "--image-size",
        32,
        "--device",
        "cpu",
        "--registry",
        registry,
        "--out",
        out,
    )
    assert code == 2 and one_line(output) and "fixed.toml" in output and "32x32" in output
    assert not out.exists()


def test_a_batch_larger_than_the_training_split_is_refused_before_anything(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    code, output = invoke(*run_args(tiny_registry, tiny_data, out)[:-2], "--batch-size", 97, "--out", out)
    assert code == 2 and one_line(output) and "larger than the 96 training images" in output
    assert not out.exists()


def test_an_unknown_compile_backend_is_refused_before_anything(tiny_registry, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_COMPILE_BACKEND", "bogus")
    out = tmp_path / "runs"
    code, output = invoke(*run_args(tiny_registry, tiny_data, out), "--compile")
    assert code == 2 and one_line(output) and "ARCHBENCH_COMPILE_BACKEND='bogus'" in output
    assert not out.exists()


def test_the_batch_that_runs_is_the_batch_recorded_and_scaled_to(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(
        RunRequest(
            models=["tiny_resnet"],
            data=str(tiny_data),
            preset="smoke",
            epochs=1,
            batch_size=20,
            image_size=32,
            device="cpu",
            out=tmp_path,
            quiet=True,
            registry=tiny_registry,
        )
    )
    run = tmp_path / "tiny_resnet" / summary["run_id"]
    config = json.loads((run / "config.json").read_text())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert config["recipe"]["global_batch_size"] == 20 and config["recipe"]["lr"] == pytest.approx(0.1 * 20 / 32)
    assert rows[1].split(",")[8] == "80"  # four full batches of 20 ran (96 images: 16 wait for a later epoch)


def test_an_out_that_is_a_file_is_one_line(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    out.write_text("not a folder")
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    assert code == 2 and one_line(output) and "cannot write run records to" in output
    assert out.read_text() == "not a folder"


def test_an_unwritable_out_is_one_line(tiny_registry, tiny_data, tmp_path, monkeypatch):
    def refuse(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    code, output = invoke(*run_args(tiny_registry, tiny_data, tmp_path / "runs"))
    assert code == 2 and one_line(output) and "Permission denied" in output


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary(
    tiny_registry, tiny_data, tmp_path, monkeypatch
):
    def full(f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "runs"
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in output and len(errors) == 1
    assert "checkpoint.pt" in errors[0] and "No space left on device" in errors[0]
    assert list(out.rglob("*.tmp")) == []


def test_a_checkpoint_that_does_not_fit_names_the_run_and_fresh(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    code, _ = invoke(*run_args(tiny_registry, tiny_data, out, "--keep-checkpoint"))
    assert code == 0
    (run,) = (out / "tiny_resnet").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["model"] = {"foreign.weight": torch.zeros(1)}
    torch.save(ckpt, run / "checkpoint.pt")
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    assert code == 2 and one_line(output)
    assert run.name in output and "--fresh" in output and "does not fit" in output


def test_stale_temporaries_of_an_interrupted_write_are_removed_on_resume(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    invoke(*run_args(tiny_registry, tiny_data, out, "--keep-checkpoint"))
    (run,) = (out / "tiny_resnet").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    stale = run / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, _ = invoke(*run_args(tiny_registry, tiny_data, out, "--epochs", 2))
    assert code in (0, 2)  # the recipe changed, so this may be another run; the stale file is what matters
    code, _ = invoke(*run_args(tiny_registry, tiny_data, out))
    assert code == 0 and not stale.exists()


def test_option_errors_are_one_line_not_a_usage_box(tiny_registry, tmp_path):
    for args in (
        ["run", "tiny_resnet", "--epochs", "0"],
        ["run", "tiny_resnet", "--bogus"],
        ["run"],
        ["bench", "tiny_resnet", "--batch-size", "x"],
        ["report", "--runs"],
        ["nope"],
    ):
        code, output = invoke(*args, "--registry", tiny_registry) if args[0] != "nope" else invoke(*args)
        assert code == 2, (args, output)
        assert one_line(output), (args, output)
        assert output.startswith("error:"), (args, output)


def test_every_command_answers_bad_input_without_a_traceback(tiny_registry, tiny_data, tmp_path):
    """The whole command-line surface against a table of bad inputs: each is exit 2 and one line."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    bad_toml = tmp_path / "bad-registry"
    bad_toml.mkdir()
    (bad_toml / "m.toml").write_text('builder = "resnet"\n')
    table = [
        ["run", "resnt18"],
        ["run", "tiny_resnet", "--data", tmp_path / "nowhere"],
        ["run", "tiny_resnet", "--preset", "huge"],
        ["run", "tiny_resnet", "--data", tiny_data, "--device", "tpu"],
        ["run", "tiny_resnet", "--data", tiny_data, "--precision", "fp8"],
        ["run", "tiny_resnet", "--data", tiny_data, "--schedule", "linear"],
        ["run", "tiny_resnet", "--data", tiny_data, "--lr", "inf"],
        ["run", "tiny_resnet", "--data", tiny_data, "--holdout-per-class", "24"],
        ["run", "tiny_resnet", "--data", tiny_data, "--gpus", "0,0"],
        ["run", "tiny_resnet", "--data", tiny_data, "--out", a_file],
        ["tune", "tiny_resnet", "--data", tiny_data, "--lr", "-3"],
        ["bench", "tiny_resnet", "--data", tmp_path / "nowhere", "--device", "cpu"],
        ["bench", "nosuchmodel"],
        ["report", "--runs", tmp_path / "no-runs"],
        ["status", "--runs", tmp_path / "no-runs"],
        ["list", "--registry", bad_toml],
        ["data", "prepare", "--root", a_file, "--source", tiny_data],
        ["data", "prepare", "--root", tmp_path / "d", "--source", tmp_path / "nowhere"],
        ["data", "synth", "--root", tmp_path / "s", "--classes", "1"],
    ]
    for args in table:
        registry = (
            [] if args[0] in ("report", "status", "data") or "--registry" in args else ["--registry", tiny_registry]
        )
        extra = ["--out", tmp_path / "runs"] if args[0] in ("run", "tune") and "--out" not in args else []
        code, output = invoke(*args, *registry, *extra)
        assert code == 2, (args, output)
        assert one_line(output), (args, output)
