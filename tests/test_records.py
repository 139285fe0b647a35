"""Run records that grow and agree: each file says its schema version and an older one reads with what it
lacks said once; a record that cannot be read, a schema version this archbench cannot read, a config.json
edited after the run or a summary.json that disagrees with its metrics.csv or config.json makes the run
damaged, named with the same one line by `archbench status` and the report; a non-finite number in metrics.csv
is divergence; and runs of one name that differ in data or recipe are never averaged together. Each on a small
run recorded here with the loop's own writer."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from test_report import generate, row_for, section, table_rows, unwrap, write_run
from typer.testing import CliRunner

from archbench import runs
from archbench.cli import app
from archbench.status import show_status, study_status

GOOD = [0.2, 0.3, 0.4, 0.45]


def part(text: str, title: str) -> str:
    """The report's section of that title, whatever its number."""
    heading = next(line for line in text.splitlines() if line.startswith("## ") and line.endswith(f". {title}"))
    return section(text, heading)


def edit_json(path: Path, **changes) -> None:
    record = runs.read_json(path)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        place = record
        for parent in parents:
            place = place[parent]
        place[key] = value
    runs.write_json(path, record)


def reconfigure(run_dir: Path, **changes) -> None:
    """config.json changed as `edit_json` changes it, with both hashes recorded anew: a run recorded with that
    config."""
    edit_json(run_dir / runs.CONFIG, **changes)
    digest = runs.config_hash(runs.read_json(run_dir / runs.CONFIG))
    edit_json(run_dir / runs.CONFIG, config_hash=digest)
    edit_json(run_dir / runs.SUMMARY, config_hash=digest)


def set_version(run_dir: Path, version, files=(runs.CONFIG, runs.SUMMARY, runs.METRICS)) -> None:
    """The schema_version recorded in the run's `files`."""
    for name in files:
        if name == runs.METRICS:
            metrics = pd.read_csv(run_dir / name)
            metrics["schema_version"] = version
            metrics.to_csv(run_dir / name, index=False)
        else:
            edit_json(run_dir / name, schema_version=version)


def edit_metrics(run_dir: Path, epoch: int, **values) -> None:
    metrics = pd.read_csv(run_dir / runs.METRICS)
    for column, value in values.items():
        metrics.loc[metrics["epoch"] == epoch, column] = value
    metrics.to_csv(run_dir / runs.METRICS, index=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two seeds of resnet18, resnet18_plain and vgg11, with beside them: a resnet18 seed whose summary counts
    an epoch more than metrics.csv holds, a resnet18_plain seed whose summary belongs to another config, a
    vgg11 seed whose summary says completed over a NaN test loss, resnet34 at two rates and resnet34_plain on
    two data sets (one name, two setups each)."""
    tmp = tmp_path_factory.mktemp("records")
    root = tmp / "runs"
    for seed in (0, 1):
        write_run(root, "resnet18", seed, GOOD)
        write_run(root, "resnet18_plain", seed, [0.1, 0.2, 0.3, 0.35])
        for lr, tag in ((0.1, "a10000"), (0.05, "a05000")):
            write_run(root, "resnet34", seed, [0.2, 0.3, 0.4, 0.5 - lr], lr=lr, run_tag=tag)
        for fingerprint, tag in (("a" * 64, "da0000"), ("c" * 64, "dc0000")):
            run = write_run(root, "resnet34_plain", seed, [0.1, 0.2, 0.3, 0.3], run_tag=tag)
            reconfigure(run, data__fingerprint=fingerprint)
    scaled = "preset x registry lr_scale"
    write_run(root, "vgg11", 0, GOOD, lr_source=scaled)
    diverged = write_run(root, "vgg11", 1, [0.2, 0.3, 0.9, 0.95], lr_source=scaled, run_tag="bad001")
    edit_metrics(diverged, 3, test_loss=float("nan"))
    extra_epoch = write_run(root, "resnet18", 2, [0.9, 0.95, 0.97, 0.99], run_tag="bad002")
    edit_json(extra_epoch / runs.SUMMARY, epochs_completed=5)
    other_config = write_run(root, "resnet18_plain", 2, [0.9, 0.95, 0.97, 0.99], run_tag="bad003")
    edit_json(other_config / runs.SUMMARY, config_hash="0123456789abcdef")
    text = generate(tmp, root)
    return tmp, root, text, {"diverged": diverged, "extra_epoch": extra_epoch, "other_config": other_config}


def test_files_written_today_say_their_schema_version_and_the_summary_its_config_hash(study):
    _, root, _, _ = study
    run_dir = next((root / "resnet18").iterdir())
    for name in (runs.METRICS, runs.GRADNORMS):
        assert set(pd.read_csv(run_dir / name)["schema_version"]) == {runs.SCHEMA_VERSION}
    summary = runs.read_json(run_dir / runs.SUMMARY)
    assert summary["schema_version"] == runs.SCHEMA_VERSION and "config_hash" in summary
    assert "config_hash" in runs.added_since(2) and not runs.added_since(runs.SCHEMA_VERSION)


def test_older_records_read_as_they_are_and_what_two_files_lack_is_said_in_one_line(tmp_path):
    """Schema version 1: `val_*` names, a summary selected on "val", no clipping record, no version."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        run_dir = write_run(root, "resnet18", seed, GOOD, holdout_acc=[0.3, 0.5, 0.4, 0.45])
        for name in (runs.METRICS, runs.GRADNORMS):
            old = pd.read_csv(run_dir / name).drop(
                columns=["schema_version", "clip_fraction", "test_top5"], errors="ignore"
            )
            old.rename(columns={"holdout_loss": "val_loss", "holdout_acc": "val_acc"}).to_csv(
                run_dir / name, index=False
            )
        summary = runs.read_json(run_dir / runs.SUMMARY)
        summary.update(best_val_acc=summary.pop("best_holdout_acc"), selected_on="val")
        runs.write_json(run_dir / runs.SUMMARY, {k: v for k, v in summary.items() if k not in runs.added_since(1)})
        config = runs.read_json(run_dir / runs.CONFIG)
        runs.write_json(run_dir / runs.CONFIG, {k: v for k, v in config.items() if k != "schema_version"})
        (run_dir / runs.CLIPPING).unlink()
    text = generate(tmp_path, root)
    notes = [line for line in text.splitlines() if "Older run records" in line]
    assert notes == [
        "> **Older run records:** gradnorms.csv: 1 column(s) absent from records older than schema version 2 "
        "(schema_version), read as missing; metrics.csv: 3 column(s) absent from records older than schema "
        "version 2 (clip_fraction, schema_version, test_top5), read as missing."
    ]
    assert row_for(part(text, "Summary"), "resnet18")["completed"] == "2/2" and "Damaged runs" not in text
    assert {r.status for r in show_status(root, Console(quiet=True))} == {"completed"}


def test_a_summary_that_disagrees_is_damaged_named_with_its_reason_and_never_counted(study):
    tmp, _, text, made = study
    records = part(text, "Run records")
    damaged = records[records.index("Damaged runs") :].splitlines()
    assert f"- resnet18/{made['extra_epoch'].name}: summary.json has epochs_completed 5, metrics.csv gives 4" in damaged
    recorded = runs.read_json(made["other_config"] / runs.CONFIG)["config_hash"]
    assert (
        f"- resnet18_plain/{made['other_config'].name}: summary.json belongs to config hash 0123456789abcdef, "
        f"config.json is {recorded}"
    ) in damaged
    summary = part(text, "Summary")
    assert row_for(summary, "resnet18")["completed"] == "2/2"  # seed 2 (0.99) is in no mean
    assert row_for(summary, "resnet18_plain")["completed"] == "2/2"
    results = pd.read_csv(tmp / "REPORT-results.csv")
    assert not {made["extra_epoch"].name, made["other_config"].name} & set(results["run_id"])


def test_a_summary_that_agrees_with_no_config_hash_recorded_is_read_when_older_than_version_3(tmp_path):
    run_dir = write_run(tmp_path / "runs", "resnet18", 0, GOOD, holdout_acc=[0.3, 0.5, 0.4, 0.45])
    summary = runs.current_summary(runs.read_json(run_dir / runs.SUMMARY))
    history = [runs.EpochMetrics(**row) for row in pd.read_csv(run_dir / runs.METRICS).to_dict("records")]
    assert runs.disagreement({**summary, "config_hash": None, "schema_version": 2}, history, "abc123") is None
    assert runs.disagreement({**summary, "config_hash": None}, history, "abc123") == (
        "summary.json (schema version 3) records no config_hash"
    )
    # chosen on the holdout: its best epoch is the 2nd, not the test split's 4th
    assert runs.disagreement({**summary, "best_epoch": 4}, history, summary["config_hash"]) == (
        "summary.json has best_epoch 4, metrics.csv gives 2"
    )


def test_status_marks_a_disagreeing_summary_damaged_and_says_why(study):
    _, root, _, made = study
    console = Console(record=True, width=200)
    rows = {r.run_id: r for r in show_status(root, console)}
    text = console.export_text()
    assert rows[made["extra_epoch"].name].status == "damaged: summary.json"
    assert rows[made["other_config"].name].status == "damaged: summary.json"
    assert "summary.json has epochs_completed 5, metrics.csv gives 4" in text
    assert "summary.json belongs to config hash 0123456789abcdef" in text


def test_a_non_finite_loss_in_metrics_is_divergence_whatever_the_summary_says(study):
    _, root, text, made = study
    run_id = made["diverged"].name
    records = part(text, "Run records")
    assert "Runs that did not complete: none." not in records
    bad = next(r for r in table_rows(records[records.index("Runs that did not complete") :]) if r["run id"] == run_id)
    assert (bad["status"], bad["non-finite in epoch"]) == ("diverged", "3")
    assert row_for(part(text, "Summary"), "vgg11")["completed"] == "1/2"
    assert "vgg11 seed 1 (epoch 3)" in part(text, "Discussion")
    console = Console(record=True, width=200)
    rows = {r.run_id: r for r in show_status(root, console)}
    assert (rows[run_id].status, rows[run_id].diverged_at_epoch) == ("diverged", 3)
    assert "diverged (epoch 3)" in console.export_text()


def test_a_non_finite_holdout_accuracy_is_divergence_and_an_absent_holdout_is_not(tmp_path):
    root = tmp_path / "runs"
    held = write_run(root, "resnet18", 0, GOOD, holdout_acc=[0.3, 0.5, 0.4, 0.45])
    edit_metrics(held, 2, holdout_acc=float("inf"))
    plain = write_run(root, "resnet18_plain", 0, GOOD, run_tag="abc124")  # no holdout: its holdout columns are empty
    rows = {r.run_id: r for r in show_status(root, Console(quiet=True))}
    assert (rows[held.name].status, rows[held.name].diverged_at_epoch) == ("diverged", 2)
    assert (rows[plain.name].status, rows[plain.name].diverged_at_epoch) == ("completed", None)


def test_runs_of_one_name_with_different_recipes_or_data_are_separate_rows(study):
    tmp, _, text, _ = study
    summary = part(text, "Summary")
    models = [r["model"] for r in table_rows(summary)]
    assert {"resnet34 (lr 0.1)", "resnet34 (lr 0.05)"} <= set(models) and "resnet34" not in models
    assert {"resnet34_plain (data aaaaaa)", "resnet34_plain (data cccccc)"} <= set(models)
    assert "resnet34_plain" not in models
    low = row_for(summary, "resnet34 (lr 0.1)")["final test acc (%)"]
    assert low.startswith("40.00") and "2 seeds equal" in low  # its own seeds only: 0.5 - 0.1 both
    assert not math.isnan(float(row_for(summary, "resnet34 (lr 0.05)")["final test acc (%)"].split()[0]))
    claims = pd.read_csv(tmp / "REPORT-claims.csv", keep_default_na=False)
    paired = set(zip(claims["model_a"], claims["model_b"]))
    assert ("resnet34 (lr 0.1)", "resnet34_plain (data aaaaaa)") in paired  # same data: compared
    assert not any("(data cccccc)" in a + b and "resnet34 (" in a + b for a, b in paired)  # other data: never


def test_two_setups_of_one_name_are_drawn_apart_and_keep_their_arm_styles():
    from archbench.report.figures import _styles

    styles = _styles(["resnet34 (lr 0.1)", "resnet34 (lr 0.05)", "resnet34 (tuned lr) (data aaaaaa)"])
    assert styles["resnet34 (lr 0.1)"]["color"] != styles["resnet34 (lr 0.05)"]["color"]
    assert [styles[x]["linestyle"] for x in styles] == ["-", "-", "--"]


def test_one_name_built_from_two_sources_is_two_architectures(tmp_path):
    """A `python` entry's source hash is part of what it is: the same builder and arguments from another
    source file are another network."""
    import archbench

    root = tmp_path / "runs"
    for seed in (0, 1):
        for source, tag in (("1" * 64, "aaa001"), ("2" * 64, "aaa002")):
            run = write_run(root, "resnet18", seed, GOOD, run_tag=tag)
            reconfigure(run, entry__source_sha256=source)
    labels = set(archbench.load_runs(root)["label"])
    assert len(labels) == 2 and all(label.startswith("resnet18 [") for label in labels)


def test_metrics_of_the_first_version_read_in_todays_names(tmp_path):
    """A metrics.csv from before the held-out split was renamed (val_loss, val_acc) and before later columns
    existed reads with its values under today's names and the newer columns None: what `status` and `tune`
    read a trial's scores from."""
    path = tmp_path / runs.METRICS
    path.write_text("epoch,train_acc,test_acc,val_loss,val_acc\n1,0.5,0.4,1.25,0.375\n", encoding="utf-8")
    (row,) = runs.read_metrics(path)
    assert (row.epoch, row.test_acc, row.holdout_loss, row.holdout_acc) == (1, 0.4, 1.25, 0.375)
    assert row.clip_fraction is None and row.test_top5 is None
    with pytest.raises(runs.DamagedRecord, match="metrics.csv lacks the column"):
        runs.read_metrics(path, needed=("epoch", "epoch_seconds"))


def truncate(path: Path) -> None:
    path.write_text(path.read_text()[:40])


def drop_column(run_dir: Path, column: str) -> None:
    pd.read_csv(run_dir / runs.METRICS).drop(columns=[column]).to_csv(run_dir / runs.METRICS, index=False)


def scribble(run_dir: Path, column: str) -> None:
    """Replace the first epoch's value in `column` of metrics.csv with text."""
    metrics = pd.read_csv(run_dir / runs.METRICS).astype({column: object})
    metrics.loc[0, column] = "n/a"
    metrics.to_csv(run_dir / runs.METRICS, index=False)


def stale_hash(reason: str) -> bool:
    return reason.startswith("config.json does not match its recorded hash ") and reason.endswith(
        "): edited after the run"
    )


# Damage done to a run recorded with the loop's own writer, and the one line status and the report name it with.
DAMAGE = {
    "lr edited": (lambda d: edit_json(d / runs.CONFIG, recipe__lr=0.5), stale_hash),
    "epochs edited": (lambda d: edit_json(d / runs.CONFIG, recipe__epochs=1), stale_hash),
    "data edited": (lambda d: edit_json(d / runs.CONFIG, data__fingerprint="ab" * 32), stale_hash),
    "completed early": (
        lambda d: reconfigure(d, recipe__epochs=6),
        "summary.json says completed after 4 epochs, config.json's recipe.epochs is 6",
    ),
    "more epochs than planned": (
        lambda d: (edit_json(d / runs.SUMMARY, status="interrupted"), reconfigure(d, recipe__epochs=3)),
        "metrics.csv holds 4 epochs, more than config.json's recipe.epochs 3",
    ),
    "no config_hash": (
        lambda d: runs.write_json(
            d / runs.SUMMARY, {k: v for k, v in runs.read_json(d / runs.SUMMARY).items() if k != "config_hash"}
        ),
        "summary.json (schema version 3) records no config_hash",
    ),
    "null config_hash": (
        lambda d: edit_json(d / runs.SUMMARY, config_hash=None),
        "summary.json (schema version 3) records no config_hash",
    ),
    "version text": (
        lambda d: set_version(d, "3", files=(runs.SUMMARY,)),
        "summary.json has schema_version '3', which is no schema version",
    ),
    "version 0": (lambda d: set_version(d, 0), "config.json has schema_version 0, which is no schema version"),
    "newer version": (
        lambda d: set_version(d, runs.SCHEMA_VERSION + 1),
        f"config.json is of schema version {runs.SCHEMA_VERSION + 1}, written by a newer archbench (this one reads "
        f"up to {runs.SCHEMA_VERSION}); upgrade archbench",
    ),
    "mixed versions": (
        lambda d: set_version(d, 2, files=(runs.METRICS,)),
        f"the run's files differ in schema version (config.json {runs.SCHEMA_VERSION}, metrics.csv 2)",
    ),
    "truncated summary": (lambda d: truncate(d / runs.SUMMARY), "summary.json is not valid JSON"),
    "missing config": (lambda d: (d / runs.CONFIG).unlink(), "config.json is missing"),
    "missing column": (lambda d: drop_column(d, "clip_fraction"), "metrics.csv lacks the column(s) clip_fraction"),
    "epochs to a threshold edited": (
        lambda d: edit_json(d / runs.SUMMARY, **{"epochs_to_threshold__0.3": None}),
        "summary.json has epochs_to_threshold[0.3] None, metrics.csv gives 2",
    ),
    "text in a number column": (
        lambda d: scribble(d, "test_acc"),
        "metrics.csv has a non-numeric value in column 'test_acc'",
    ),
    "not UTF-8": (lambda d: (d / runs.METRICS).write_bytes(b"epoch\n\xff\n"), "metrics.csv is not a readable CSV"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Two good seeds of resnet18, a version-2 seed whose summary records no config hash, and beside them one
    resnet18 seed per kind of `DAMAGE`; the report made by the command, and status."""
    tmp = tmp_path_factory.mktemp("damaged")
    root = tmp / "runs"
    for seed in (0, 1):
        write_run(root, "resnet18", seed, GOOD)
    older = write_run(root, "resnet18", 2, GOOD, run_tag="old002")
    edit_json(older / runs.SUMMARY, config_hash=None)
    set_version(older, 2)
    made = {}
    for seed, (what, (damage, _)) in enumerate(DAMAGE.items(), start=3):
        made[what] = write_run(root, "resnet18", seed, GOOD, run_tag=f"bad{seed:03d}")
        damage(made[what])
    result = CliRunner().invoke(app, ["report", "--runs", str(root), "--report", str(tmp / "REPORT.md")])
    statuses = {row.run_id: row for row in study_status(root)}
    return tmp, result, statuses, made


def reason_of(expected, reason: str) -> bool:
    return expected(reason) if callable(expected) else reason == expected


@pytest.mark.parametrize("what", DAMAGE)
def test_a_damaged_run_is_named_with_one_line_by_status_and_the_report_and_never_counted(damaged, what):
    tmp, result, statuses, made = damaged
    assert result.exit_code == 0, result.output
    run_id, expected = made[what].name, DAMAGE[what][1]
    row = statuses[run_id]
    assert row.damaged and reason_of(expected, row.reason), row.reason
    records = part(unwrap((tmp / "REPORT.md").read_text(encoding="utf-8")), "Run records")
    named = [line for line in records.splitlines() if line.startswith(f"- resnet18/{run_id}: ")]
    assert named == [f"- resnet18/{run_id}: {row.reason}"]
    assert run_id not in set(pd.read_csv(tmp / "REPORT-results.csv")["run_id"])


def test_an_older_summary_without_a_config_hash_is_counted_and_the_good_runs_with_it(damaged):
    tmp, _, statuses, _ = damaged
    assert sorted(r.seed for r in statuses.values() if r.status == "completed") == [0, 1, 2]
    results = pd.read_csv(tmp / "REPORT-results.csv")
    assert sorted(results["seed"]) == [0, 1, 2]
