"""`archbench status` on run folders written here with the run record's own writer."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from archbench import runs
from archbench.cli import app
from archbench.errors import ArchbenchError
from archbench.status import NEEDED, show_status

runner = CliRunner()
EPOCHS = 4


def filled(row_type, **known):
    """A schema row with the given values; every other field gets an empty value of its type, so these
    fixtures keep up with columns the status table does not read."""
    values = {}
    for f in dataclasses.fields(row_type):
        if f.name in known or f.default is not dataclasses.MISSING:
            continue
        kind = str(f.type)
        values[f.name] = (
            {}
            if kind.startswith("dict")
            else None
            if "None" in kind
            else False
            if kind == "bool"
            else 0
            if kind == "int"
            else 0.0
            if kind == "float"
            else ""
        )
    return row_type(**values, **known)


def write_run(
    root: Path,
    model: str,
    seed: int,
    test_acc: list[float],
    *,
    status: str | None = "completed",
    tuning: bool | None = None,
    epoch_seconds: float = 10.0,
    lr: float = 0.1,
    lr_source: str | None = "preset",
) -> Path:
    """A run folder as the loop writes it (a completed run ran every epoch of its recipe, an unfinished one
    stopped within `EPOCHS`); status None leaves out summary.json (killed before its first record was final)."""
    run_id = f"20250101-000000-s{seed}-abc123-{secrets.token_hex(2)}"
    run_dir = root / model / run_id
    run_dir.mkdir(parents=True)
    config = {
        "model": model,
        "seed": seed,
        "run_id": run_id,
        "schema_version": runs.SCHEMA_VERSION,
        "recipe": {
            "epochs": len(test_acc) if status == "completed" else EPOCHS,
            "batch_size": 32,
            "lr": lr,
            "lr_source": lr_source,
        },
    }
    if tuning is not None:
        config["tuning_trial"] = tuning
    config["config_hash"] = runs.config_hash(config)
    runs.write_json(run_dir / runs.CONFIG, config)
    metrics = [
        filled(
            runs.EpochMetrics,
            epoch=e,
            train_loss=1.0,
            train_acc=acc,
            test_loss=1.0,
            test_acc=acc,
            lr=0.1,
            epoch_seconds=epoch_seconds + e,
            train_images_per_s=100.0 * e,
            train_samples=1000,
        )
        for e, acc in enumerate(test_acc, start=1)
    ]
    summary = filled(
        runs.Summary,
        run_id=run_id,
        model=model,
        seed=seed,
        status=status or "interrupted",
        gflops={},
        config_hash=config["config_hash"],
        **runs.outcome(metrics, (), on_holdout=False),  # what the loop sums up from the same epochs
    )
    runs.write_record(run_dir, metrics, [], summary)
    if status is None:
        (run_dir / runs.SUMMARY).unlink()
    return run_dir


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def show(folder: Path):
    console = Console(record=True, width=240)
    rows = show_status(folder, console)
    return {r.run_id: r for r in rows}, console.export_text()


def test_each_kind_of_run_gets_its_status_progress_and_time(tmp_path):
    completed = write_run(tmp_path, "resnet18", 0, [0.2, 0.3, 0.4, 0.35])
    diverged = write_run(tmp_path, "vgg16", 0, [0.1], status="diverged")
    crashed = write_run(tmp_path, "vgg16", 1, [0.1, 0.2], status="interrupted")
    (crashed / runs.CHECKPOINT).write_bytes(b"a checkpoint")  # resumable
    early = write_run(tmp_path, "vgg11", 0, [], status=None)  # killed in its first epoch
    running = write_run(tmp_path, "resnet18", 1, [0.25, 0.3], status="interrupted", epoch_seconds=20.0)
    trial = write_run(tmp_path, "resnet18", 2, [0.3, 0.5, 0.45, 0.5], tuning=True)
    lock = runs._try_lock(running)  # held as the training process holds it
    assert lock is not None
    try:
        before = snapshot(tmp_path)
        rows, text = show(tmp_path)
        assert snapshot(tmp_path) == before  # nothing written, nothing created (no .lock where there was none)
        assert runs._try_lock(running) is None  # and the trainer still holds its lock
    finally:
        os.close(lock)

    assert {run_id: row.status for run_id, row in rows.items()} == {
        completed.name: "completed",
        diverged.name: "diverged",
        crashed.name: "interrupted",
        early.name: "interrupted",
        running.name: "running",
        trial.name: "completed",
    }
    assert rows[trial.name].tuning and not rows[completed.name].tuning

    done = rows[completed.name]
    assert (done.epochs_done, done.epochs_total) == (4, EPOCHS)
    assert done.last_test_acc == pytest.approx(0.35) and done.best_test_acc == pytest.approx(0.4)
    assert done.images_per_s == pytest.approx(400.0)  # the last epoch's
    assert done.seconds == pytest.approx(11 + 12 + 13 + 14) and done.seconds_left is None
    live = rows[running.name]
    assert (live.epochs_done, live.epochs_total) == (2, EPOCHS)
    assert live.seconds_left == pytest.approx((21 + 22) / 2 * 2)  # mean epoch time x the two epochs left
    assert rows[early.name].epochs_done == 0 and rows[early.name].last_test_acc is None

    lines = text.splitlines()
    for run_dir, shown in (
        (running, "running"),
        (crashed, "interrupted"),
        (diverged, "diverged"),
        (trial, "completed trial"),
    ):
        (line,) = [line for line in lines if run_dir.name.split("-")[-1] in line]
        assert re.search(r"\s+".join(shown.split()), line), line
    (total,) = [line for line in lines if "total" in line and "6 runs" in line]
    assert "13/24" in total and total.rstrip().endswith("43s")  # epochs and time left, summed
    assert "1 running, 2 interrupted, 2 completed, 1 diverged, 1 tuning trial" in text

    rows, _ = show(tmp_path)  # the process ended: its lock is free, its record unfinished
    assert rows[running.name].status == "interrupted"


def test_damaged_records_are_marked_and_the_others_still_shown(tmp_path):
    good = write_run(tmp_path, "resnet18", 0, [0.2, 0.3])
    bad_summary = write_run(tmp_path, "resnet18", 1, [0.2])
    (bad_summary / runs.SUMMARY).write_text('{"status": "compl')
    bad_metrics = write_run(tmp_path, "vgg11", 0, [0.2])
    (bad_metrics / runs.METRICS).write_text("epoch,train_loss\n1,2.3\n")  # no test_acc column
    bad_config = write_run(tmp_path, "vgg16", 0, [0.2])
    (bad_config / runs.CONFIG).write_text("[1, 2]\n")
    no_epochs = write_run(tmp_path, "vgg16", 1, [0.2])
    runs.write_json(no_epochs / runs.CONFIG, {"model": "vgg16", "seed": 1})

    rows, text = show(tmp_path)
    assert rows[good.name].status == "completed" and rows[good.name].best_test_acc == pytest.approx(0.3)
    assert rows[bad_summary.name].status == "damaged: summary.json"
    assert rows[bad_metrics.name].status == "damaged: metrics.csv"
    assert rows[bad_config.name].status == "damaged: config.json"
    assert rows[no_epochs.name].status == "damaged: config.json"
    assert rows[bad_summary.name].reason == "summary.json is not valid JSON"
    assert rows[bad_metrics.name].reason.startswith("metrics.csv lacks the column(s) train_acc")
    assert "summary.json is not valid JSON" in text  # the reason under the table
    assert "damaged: metrics.csv" in text and "1 completed, 4 damaged" in text and "Traceback" not in text


def test_the_table_reads_columns_the_schema_has():
    assert set(NEEDED) <= set(runs.METRICS_COLUMNS)


def test_a_folder_without_runs_is_one_line(tmp_path):
    (tmp_path / "empty" / ".submitit").mkdir(parents=True)  # job logs are not runs
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ArchbenchError, match="no runs under"):
            show_status(folder, Console(quiet=True))
        result = runner.invoke(app, ["status", "--runs", str(folder)])
        assert result.exit_code == 2, result.output
        assert "no runs under" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) <= 2  # one sentence (Rich may wrap it once)


def test_the_command_prints_the_table(tmp_path):
    write_run(tmp_path, "resnet18", 0, [0.2, 0.3])
    result = runner.invoke(app, ["status", "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.output and "completed" in result.output and "2/2" in result.output


def test_runs_of_one_model_and_seed_are_told_apart_by_rate_arm_and_run_id(tmp_path):
    """The shipped study's two `resnet18 s0 completed` rows (the preset's rate and the tuned one), and a
    tuning trial, each show their rate, their arm and the end of their run id, even at 80 columns."""
    preset = write_run(tmp_path, "resnet18", 0, [0.3], lr=0.1, lr_source="preset")
    tuned = write_run(tmp_path, "resnet18", 0, [0.4], lr=0.0316, lr_source="tuned (chosen on holdout)")
    given = write_run(tmp_path, "resnet18", 0, [0.2], lr=0.5, lr_source="--lr")
    trial = write_run(tmp_path, "resnet18", 0, [0.1], lr=1.0, tuning=True)
    console = Console(record=True, width=80)
    show_status(tmp_path, console)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not any("…" in line for line in lines)  # nothing cut
    for run_dir, arm, lr in (
        (preset, "default", "0.1"),
        (tuned, "tuned", "0.0316"),
        (given, "--lr", "0.5"),
        (trial, "trial", "1"),
    ):
        (line,) = [line for line in lines if run_dir.name.split("-", 3)[-1] in line]  # hash and random part
        assert re.search(rf"(?<!\S){re.escape(arm)}\s+{re.escape(lr)}\s", line), line


def test_json_lists_every_run_with_its_fields(tmp_path):
    write_run(tmp_path, "resnet18", 0, [0.2, 0.3], lr=0.0316, lr_source="tuned (x)")
    result = runner.invoke(app, ["status", "--runs", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["model"], row["seed"], row["arm"], row["lr"], row["epochs_done"]) == ("resnet18", 0, "tuned", 0.0316, 2)
    assert row["last_test_acc"] == pytest.approx(0.3)


def test_watch_redraws_until_stopped(tmp_path, monkeypatch):
    """--watch reads the folder again on every redraw: a run that appears between two is shown."""
    from archbench import status

    write_run(tmp_path, "resnet18", 0, [0.2])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 1:
            write_run(tmp_path, "vgg11", 0, [0.1])
        else:
            raise KeyboardInterrupt  # Ctrl-C ends the watch quietly

    monkeypatch.setattr(status.time, "sleep", sleep)
    console = Console(record=True, width=120, force_terminal=False)
    rows = status.watch_status(tmp_path, 0.5, console=console)
    assert sleeps == [0.5, 0.5]
    assert {r.model for r in rows} == {"resnet18", "vgg11"}
    assert "vgg11" in console.export_text()
