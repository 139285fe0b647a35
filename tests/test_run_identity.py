"""A run is what it says it is: a checkpoint resumes only into its own run, a non-finite evaluation is a
divergence like a non-finite training loss, and a network that cannot learn, or cannot fit in memory at
the requested size, is refused in one line before any run folder exists."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import invoke, run_args, tiny_tune_request
from rich.console import Console

from archbench import registry, train
from archbench.errors import DIVERGED_EXIT, ArchbenchError
from archbench.tune import read_trial, tune


def error_line(output: str) -> str:
    """The one line of the answer, which must be an error."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def unfinished_runs(out: Path, *extra, registry_dir, data) -> list[Path]:
    """Record one-epoch runs with their checkpoints, then mark them interrupted, as a crash would leave them."""
    code, _ = invoke(*run_args(registry_dir, data, out, "--keep-checkpoint", *extra))
    assert code == 0
    folders = sorted((out / "tiny_resnet").iterdir(), key=lambda run: read(run / "config.json")["seed"])
    for run in folders:
        (run / "summary.json").write_text(json.dumps({**read(run / "summary.json"), "status": "interrupted"}))
    return folders


# ------------------------------------------------------------------------------------------ identity


def test_the_checkpoint_of_another_run_is_refused_naming_both_hashes(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    ours, theirs = unfinished_runs(out, "--seed", 0, "--seed", 1, registry_dir=tiny_registry, data=tiny_data)
    shutil.copy(theirs / "checkpoint.pt", ours / "checkpoint.pt")  # seed 1's checkpoint, copied in by hand
    before = {name: (ours / name).read_text() for name in ("summary.json", "metrics.csv")}
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    line = error_line(output)
    assert code == 2 and ours.name in line and "--fresh" in line and "another run" in line
    assert read(ours / "config.json")["config_hash"] in line and read(theirs / "config.json")["config_hash"] in line
    assert {name: (ours / name).read_text() for name in before} == before  # no record of the wrong run


def test_a_checkpoint_of_other_data_says_so(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    (run,) = unfinished_runs(out, registry_dir=tiny_registry, data=tiny_data)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "config_hash": "0123456789abcdef", "data_fingerprint": "f" * 64}, run / "checkpoint.pt")
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    line = error_line(output)
    assert code == 2 and "0123456789abcdef, other data" in line and "--fresh" in line


@pytest.mark.parametrize("deleted", [("config_hash", "data_fingerprint"), ("data_fingerprint",)], ids=["both", "data"])
def test_a_checkpoint_that_carries_no_run_identity_is_refused(tiny_registry, tiny_data, tmp_path, deleted):
    out = tmp_path / "runs"
    (run,) = unfinished_runs(out, registry_dir=tiny_registry, data=tiny_data)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config_hash"] == read(run / "config.json")["config_hash"]
    assert ckpt["data_fingerprint"] == read(run / "config.json")["data"]["fingerprint"]
    torch.save({k: v for k, v in ckpt.items() if k not in deleted}, run / "checkpoint.pt")
    before = {name: (run / name).read_text() for name in ("summary.json", "metrics.csv")}
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    line = error_line(output)
    assert code == 2 and run.name in line and "carries no run identity (older archbench, or edited)" in line
    assert "rerun with --fresh" in line
    assert {name: (run / name).read_text() for name in before} == before  # nothing of another run's history


# ------------------------------------------------------------------------------------------ found again


def finished_run(out: Path, registry_dir, data) -> Path:
    """One recorded one-epoch run, finished."""
    code, _ = invoke(*run_args(registry_dir, data, out))
    assert code == 0
    (run,) = (out / "tiny_resnet").iterdir()
    return run


def files(run: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in run.iterdir() if path.is_file() and path.name != ".lock"}


def set_metric(run: Path, column: str, value: str, row: int = 0) -> None:
    """Overwrite one value of metrics.csv, as an edit or a damaged disk would."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row][column] = value
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda run: (run / "summary.json").write_text(
                json.dumps({**read(run / "summary.json"), "final_test_acc": 0.9})
            ),
            "final_test_acc 0.9",
        ),
        (lambda run: set_metric(run, "test_acc", "0.99"), "metrics.csv gives 0.99"),
        (lambda run: set_metric(run, "test_acc", "many"), "metrics.csv has a non-numeric value in column 'test_acc'"),
    ],
    ids=["summary", "metrics", "unreadable"],
)
def test_a_finished_run_found_again_whose_record_disagrees_is_refused(
    tiny_registry, tiny_data, tmp_path, damage, reason
):
    out = tmp_path / "runs"
    run = finished_run(out, tiny_registry, tiny_data)
    damage(run)
    before = files(run)
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    line = error_line(output)
    assert code == 2 and run.name in line and "damaged" in line and reason in line and "--fresh" in line
    assert files(run) == before and list((out / "tiny_resnet").iterdir()) == [run]  # nothing written


def test_a_damaged_finished_run_stops_the_study_before_any_other_model_trains(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    run = finished_run(out, tiny_registry, tiny_data)
    set_metric(run, "test_acc", "0.99")
    args = run_args(tiny_registry, tiny_data, out, model="tiny_plain")
    args.insert(args.index("tiny_plain") + 1, "tiny_resnet")  # tiny_plain first, then the damaged tiny_resnet
    code, output = invoke(*args)
    assert code == 2 and run.name in error_line(output) and "damaged" in error_line(output)
    assert not (out / "tiny_plain").exists()  # refused while planning: nothing trained before it


def test_a_finished_run_found_again_with_a_non_finite_metric_is_reported_diverged(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    run = finished_run(out, tiny_registry, tiny_data)
    set_metric(run, "test_loss", "nan")
    before = files(run)
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    assert code == DIVERGED_EXIT and "(diverged)" in output and "(completed)" not in output
    assert files(run) == before


# ------------------------------------------------------------------------------------------ rates


@pytest.mark.parametrize("lr", ["1e39", "3.5e38"])
def test_a_rate_beyond_float32_is_refused_before_any_run_folder(tiny_registry, tiny_data, tmp_path, lr):
    out = tmp_path / "runs"
    code, output = invoke(*run_args(tiny_registry, tiny_data, out, "--lr", lr))
    line = error_line(output)
    assert code == 2 and "cannot be represented in the float32" in line and not out.exists()


def test_a_rate_float32_holds_but_training_cannot_is_a_divergence(tiny_registry, tiny_data, tmp_path):
    out = tmp_path / "runs"
    code, _ = invoke(*run_args(tiny_registry, tiny_data, out, "--lr", "3e38"))
    (run,) = (out / "tiny_resnet").iterdir()
    assert code == DIVERGED_EXIT and read(run / "summary.json")["status"] == "diverged"


# ------------------------------------------------------------------------------------------ divergence


def non_finite_evaluation(monkeypatch, call: int, metric: int) -> None:
    """The `call`-th evaluation (0: the first epoch's test split, then its holdout, if any) gives a NaN
    `metric` (0: loss, 1: accuracy)."""
    evaluate, calls = train.evaluate, []

    def patched(*args, **kwargs):
        result = list(evaluate(*args, **kwargs))
        calls.append(None)
        if len(calls) == call + 1:
            result[metric] = math.nan
        return tuple(result)

    monkeypatch.setattr(train, "evaluate", patched)


@pytest.mark.parametrize(("split", "metric"), [("test", 0), ("holdout", 1)], ids=["test-loss", "holdout-accuracy"])
def test_a_non_finite_evaluation_is_a_divergence(tiny_registry, tiny_data, tmp_path, monkeypatch, split, metric):
    holdout = split == "holdout"
    non_finite_evaluation(monkeypatch, call=3 if holdout else 1, metric=metric)  # in the second epoch
    out = tmp_path / "runs"
    extra = ["--epochs", 2, *(["--holdout-per-class", 4] if holdout else [])]
    code, _ = invoke(*run_args(tiny_registry, tiny_data, out, *extra))
    (run,) = (out / "tiny_resnet").iterdir()
    summary = read(run / "summary.json")
    with open(run / "metrics.csv", encoding="utf-8") as f:
        (first,) = list(csv.DictReader(f))  # the first epoch alone: the non-finite one is not a result
    steps = int(first["train_samples"]) // 16
    assert code == DIVERGED_EXIT and summary["status"] == "diverged"
    assert summary["diverged_at_step"] == 2 * steps - 1  # the second epoch's last step
    assert summary["epochs_completed"] == 1


def test_a_tuning_trial_whose_evaluation_goes_non_finite_is_a_diverged_rate(tiny_registry, tiny_data, tmp_path):
    request = tiny_tune_request(tiny_registry, tiny_data, tmp_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        non_finite_evaluation(monkeypatch, call=1, metric=0)  # the first trial's holdout loss
        content = tune(request, Console(quiet=True))
    (diverged,) = [t["lr"] for t in content["trials"] if t["status"] == "diverged"]
    grid = {g["lr"]: g for g in content["models"]["tiny_resnet"]["grid"]}
    assert grid[diverged]["diverged"] and grid[diverged]["val_acc"] is None
    assert content["models"]["tiny_resnet"]["lr"] == ({0.01, 0.1} - {diverged}).pop()


def test_tune_holds_finished_trials_to_their_records(tiny_registry, tiny_data, tmp_path):
    request = tiny_tune_request(tiny_registry, tiny_data, tmp_path / "runs", tuning=tmp_path / "tuning.json")
    tune(request, Console(quiet=True))
    trials = {read(run / "config.json")["recipe"]["lr"]: run for run in (tmp_path / "runs" / "tiny_resnet").iterdir()}
    set_metric(trials[0.1], "holdout_acc", "nan")  # its summary still says completed
    content = tune(request, Console(quiet=True))
    grid = {g["lr"]: g for g in content["models"]["tiny_resnet"]["grid"]}
    assert grid[0.1]["diverged"] and grid[0.1]["val_acc"] is None
    assert content["models"]["tiny_resnet"]["lr"] == 0.01
    trial, _ = read_trial(read(trials[0.1] / "summary.json"), tmp_path / "runs")  # as a cluster job's record is read
    assert trial.status == "diverged" and trial.val_acc is None
    summary = read(trials[0.01] / "summary.json")
    set_metric(trials[0.01], "holdout_acc", "0.99")  # no longer what its summary chose on
    written = (tmp_path / "tuning.json").read_text()
    for read_again in (lambda: tune(request, Console(quiet=True)), lambda: read_trial(summary, tmp_path / "runs")):
        with pytest.raises(ArchbenchError) as refused:
            read_again()
        assert trials[0.01].name in refused.value.message and "damaged" in refused.value.message
        assert "--fresh" in refused.value.message and len(refused.value.message.splitlines()) == 1
    assert (tmp_path / "tuning.json").read_text() == written


# ------------------------------------------------------------------------------------------ networks

FROZEN = """
from torch import nn


def make_net(num_classes):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    return net.requires_grad_(False)
"""

DETACHED = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        with torch.no_grad():
            return self.fc(x.mean((2, 3)))
"""

IN_PLACE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        y = torch.sigmoid(self.fc(x.mean((2, 3))))
        return y.mul_(2)  # overwrites what sigmoid's backward needs
"""


@pytest.mark.parametrize(
    ("source", "target", "problem"),
    [
        (FROZEN, "make_net", "cannot learn: it has no trainable parameters"),
        (DETACHED, "Net", "cannot learn: its output in training mode does not require grad"),
        (IN_PLACE, "Net", "cannot run on 32x32 input: its backward pass fails: RuntimeError"),
    ],
    ids=["frozen", "no_grad", "in-place"],
)
def test_a_network_that_cannot_learn_is_refused_before_any_run_folder(tiny_data, tmp_path, source, target, problem):
    folder = tmp_path / "registry"
    folder.mkdir()
    (folder / "mine.py").write_text(source)
    entry = f'description = "mine"\nbuilder = "python"\n[args]\ntarget = "mine.py:{target}"\n'
    (folder / "mine.toml").write_text(entry)
    out = tmp_path / "runs"
    code, output = invoke(*run_args(folder, tiny_data, out, model="mine"))
    line = error_line(output)
    assert code == 2 and "mine.toml" in line and problem in line
    assert not out.exists()


def test_an_image_size_whose_training_step_cannot_fit_is_refused_before_any_run_folder(
    tiny_registry, tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(registry, "available_memory", lambda device: 2**19)
    out = tmp_path / "runs"
    code, output = invoke(*run_args(tiny_registry, tiny_data, out))
    line = error_line(output)
    needed = registry.training_memory(registry.get_entry("tiny_resnet", tiny_registry), 32, 4, 16, torch.float32)
    assert code == 2 and line.startswith("error: --image-size 32 needs at least")
    assert f"{needed / 2**20:,.1f} MiB" in line and "the 0.5 MiB available on cpu" in line
    assert not out.exists()


def test_the_training_step_estimate_grows_with_the_batch_and_the_image(tiny_registry):
    entry = registry.get_entry("tiny_resnet", tiny_registry)
    weights = 12 * sum(p.numel() for p in entry.build_on_meta(num_classes=10).parameters())

    def activations(batch, size):
        return registry.training_memory(entry, size, 10, batch, torch.float32) - weights

    assert activations(32, 32) == 2 * activations(16, 32) > 0
    assert activations(16, 64) == pytest.approx(4 * activations(16, 32), rel=0.05)
    assert registry.training_memory(entry, 32, 10, 16, torch.bfloat16) - weights == activations(16, 32) // 2
