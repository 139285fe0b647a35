"""Tuning trials, tuned against shared-recipe runs, and accuracy chosen on a validation split."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from test_report import generate, interval, provenance_items, row_for, section, table_rows, write_run

from archbench.tuning import Trial, write_tuning

SEEDS = (0, 1, 2)
SHARED_FINAL = {"resnet18": [0.50, 0.51, 0.52], "vgg11": [0.30, 0.33, 0.31]}
TUNED_FINAL = {"resnet18": [0.55, 0.56, 0.57], "vgg11": [0.58, 0.60, 0.59]}
TUNED_SOURCE = "tuned (tuning.json: best of 3 rates on 10 validation images per class, 1 epochs)"
# tuning trials: model -> lr -> validation accuracy per seed 0, 1 (None: diverged)
GRID = {
    "resnet18": {0.01: [0.40, 0.42], 0.1: [0.35, 0.37], 1.0: [None, 0.1]},
    "vgg11": {0.001: [0.20, 0.22], 0.00316: [0.30, 0.31], 0.0316: [0.25, 0.26]},  # default 0.01 not in the grid
    "vgg11_bn": {0.01: [0.30, 0.30], 0.1: [0.33, 0.35]},  # no study run: its default comes from the preset
    "resnet34": {0.01: [0.30, 0.32], 0.1: [0.32, 0.30]},  # the same scores at two rates: a tie
    "vgg16": {0.01: [None, None], 0.1: [None, None]},  # every rate diverged
}


def shared_resnet_curves(seed: int) -> tuple[list[float], list[float]]:
    """Test and validation accuracy per epoch: validation picks epoch 2, the test set would pick epoch 3."""
    test = [0.30 + 0.01 * seed, 0.45 + 0.01 * seed, 0.53 + 0.01 * seed, SHARED_FINAL["resnet18"][seed]]
    val = [0.30, 0.50 + 0.01 * seed, 0.45, 0.44]
    return test, val


def write_trials(runs: Path) -> list[Trial]:
    trials = []
    for model, grid in GRID.items():
        for i, (lr, accs) in enumerate(sorted(grid.items())):
            for seed, acc in enumerate(accs):
                diverged = acc is None
                status = "diverged" if diverged else "completed"
                test = None if diverged else acc - 0.05
                run = write_run(
                    runs,
                    model,
                    seed,
                    [] if diverged else [test],
                    holdout_acc=None if diverged else [acc],
                    lr=lr,
                    lr_source="--lr",
                    tuning_trial=True,
                    run_tag=f"t{i}",
                    status=status,
                    diverged_at_step=3 if diverged else None,
                    started_at="2024-12-01T00:00:00Z",
                )
                trials.append(
                    Trial(
                        model=model,
                        lr=lr,
                        seed=seed,
                        run_id=run.name,
                        status=status,
                        val_acc=acc,
                        val_loss=None if diverged else 2.0 - acc,
                        test_acc=test,
                    )
                )
    return trials


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("tuning")
    runs = tmp / "runs"
    for seed in SEEDS:
        test, val = shared_resnet_curves(seed)
        write_run(runs, "resnet18", seed, test, holdout_acc=val)
        write_run(
            runs,
            "vgg11",
            seed,
            [0.1, 0.2, 0.25, SHARED_FINAL["vgg11"][seed]],
            lr_source="preset x registry lr_scale 0.1",
        )
        for model, finals in TUNED_FINAL.items():
            write_run(
                runs,
                model,
                seed,
                [0.3, 0.4, 0.5, finals[seed]],
                lr_source=TUNED_SOURCE,
                lr=0.0316,
                run_tag="tuned",
                started_at="2025-02-01T00:00:00Z",
            )
    trials = [t for t in write_trials(runs) if t.model == "resnet18"]
    write_tuning(
        runs / "tuning.json",
        trials=trials,
        configs=[json.loads((runs / t.model / t.run_id / "config.json").read_text()) for t in trials],
        data={"fingerprint": "a" * 64, "synthetic": False},
        validation={"per_class": 10, "seed": 0, "size": 100, "fingerprint": "b" * 64},
        provenance={"archbench_version": "0.1.0", "finished_at": "2025-01-01T00:00:00Z"},
    )
    return tmp, generate(tmp, runs)


def test_tuning_trials_stay_out_of_the_main_tables(report):
    _, text = report
    accuracy = section(text, "## 5. Accuracy")
    models = [r["model"] for r in table_rows(accuracy)]
    assert models == ["resnet18", "resnet18 (tuned lr)", "vgg11", "vgg11 (tuned lr)", "*reference: resnet18*"]
    assert all(row_for(accuracy, m)["n"] == "3" for m in models[:4])
    assert "vgg11_bn" not in section(text, "Early training")
    provenance = provenance_items(section(text, "## 3. Provenance"))
    trial_count = sum(len(accs) for grid in GRID.values() for accs in grid.values())
    assert provenance["tuning trials"].startswith(f"{trial_count} (shown under Learning-rate sensitivity only")


def test_sensitivity_table_choice_default_and_tuneability(report):
    tmp, text = report
    lr = section(text, "## 7. Learning-rate sensitivity")
    rows = {r["model"]: r for r in table_rows(lr)}
    resnet = rows["resnet18"]
    assert resnet["chosen lr"] == "0.01" and resnet["chosen by"] == "runs/tuning.json"
    assert resnet["default lr"] == "0.1"
    best, default = statistics.mean(GRID["resnet18"][0.01]), statistics.mean(GRID["resnet18"][0.1])
    assert resnet["best - default (points)"] == f"{100 * (best - default):+.2f}"
    vgg = rows["vgg11"]
    assert vgg["chosen lr"] == "0.00316" and vgg["chosen by"] == "the recorded trials"
    assert vgg["default lr"] == "0.01 (not in the grid)"
    assert vgg["best - default (points)"] == "default rate 0.01 not in the grid"
    assert rows["vgg11_bn"]["default lr"] == "0.1"
    assert "vgg11_bn: the smoke preset's rate at the trials' batch (preset)" in lr
    assert "resnet18: recorded by the study runs (preset)" in lr
    grid = {(r["model"], r["lr"]): r for r in table_rows(lr[lr.index("Every rate tried") :])}
    assert grid[("resnet18", "1")]["note"] == "scored nothing: diverged"
    assert grid[("resnet18", "1")]["val acc (%)"] == "—"
    assert grid[("resnet18", "0.01")]["note"] == "chosen"
    assert grid[("resnet18", "0.1")]["note"] == "default"
    assert grid[("resnet18", "0.01")]["val acc (%)"] == interval([100 * a for a in GRID["resnet18"][0.01]])
    assert "](REPORT-lr-sensitivity.png)" in lr
    assert (tmp / "REPORT-lr-sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "The test set plays no part in the choice" in lr


def test_sensitivity_reports_ties_and_models_whose_every_rate_diverged(report):
    _, text = report
    lr = section(text, "## 7. Learning-rate sensitivity")
    rows = {r["model"]: r for r in table_rows(lr)}
    assert rows["resnet34"]["chosen lr"] == "none: 0.01 and 0.1 tie"
    assert rows["vgg16"]["chosen lr"] == "none: every rate diverged"
    assert rows["vgg16"]["best lr"] == "—" and rows["vgg16"]["val acc at best (%)"] == "—"
    grid = {(r["model"], r["lr"]): r for r in table_rows(lr[lr.index("Every rate tried") :])}
    assert all("scored nothing: diverged, diverged" in grid[("vgg16", x)]["note"] for x in ("0.01", "0.1"))
    assert all("chosen" not in grid[("resnet34", x)]["note"] for x in ("0.01", "0.1"))


def test_validation_choice_is_the_unbiased_estimate(report):
    _, text = report
    accuracy = section(text, "## 5. Accuracy")
    choices = accuracy.split("\n\n")[2]  # the second table: how each seed's best epoch was chosen
    resnet = row_for(choices, "resnet18")
    assert resnet["best epoch chosen on"] == "holdout"
    at_val_choice = [100 * shared_resnet_curves(s)[0][1] for s in SEEDS]  # epoch 2
    assert resnet["test acc at holdout-chosen epoch (%)"] == interval(at_val_choice)
    best_any = [100 * max(shared_resnet_curves(s)[0]) for s in SEEDS]
    assert resnet["best test acc, test-selected (%)"] == interval(best_any)
    assert resnet["best epoch"] == "2.0 (all 3 seeds equal, resolution 1 epoch)"
    vgg = row_for(choices, "vgg11")
    assert vgg["best epoch chosen on"] == "test (no holdout split)"
    assert vgg["test acc at holdout-chosen epoch (%)"] == "— (no holdout split)"
    assert "optimistic and not an estimate of accuracy on new data" in accuracy


def test_each_arm_is_tested_on_its_own_and_no_change_between_arms_is_claimed(report):
    _, text = report
    discussion = section(text, "Discussion")
    # the same pair in each arm, each its own claim; whether the outcome "changes" is never claimed, since the
    # difference between the arms is not itself tested
    assert "ResNet vs VGG: resnet18 vs vgg11 [registry default rates]:" in discussion
    assert "ResNet vs VGG: resnet18 (tuned lr) vs vgg11 (tuned lr) [tuned]:" in discussion
    assert "changes" not in discussion
    summary = section(text, "## 1. Summary")
    assert "ResNet vs VGG [registry default rates]" in summary and "ResNet vs VGG [tuned]" in summary
    assert "Tuneability (holdout accuracy at the best rate minus at the default rate" in discussion


def test_sensitivity_report_is_byte_stable(report):
    tmp, text = report
    figure = (tmp / "REPORT-lr-sensitivity.png").read_bytes()
    assert generate(tmp, tmp / "runs") == text
    assert (tmp / "REPORT-lr-sensitivity.png").read_bytes() == figure
