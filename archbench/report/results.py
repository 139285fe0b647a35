"""The study-wide results table: one row per study run that counts (per group and seed), as
REPORT-results.csv and `archbench.load_runs` give it. A time to a threshold that a run never reached
(it diverged, or the epochs ran out) is infinite, as AlgoPerf counts it."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from archbench.errors import ArchbenchError
from archbench.report.load import load_runs as load_run_folders
from archbench.report.load import select_runs

BASE_COLUMNS = (
    "model",
    "label",
    "arm",
    "seed",
    "run_id",
    "dataset",
    "lr",
    "lr_source",
    "status",
    "epochs_completed",
    "final_train_acc",
    "final_test_acc",
    "best_test_acc",
    "selected_on",
    "test_acc_at_best_epoch",
    "clip_fraction",
    "parameters",
    "gflops_224",
    "train_seconds",
    "config_hash",
    "identical_to",
)
TIMES = (
    ("epochs_to_threshold", "epochs_to"),
    ("seconds_to_threshold", "seconds_to"),
    ("images_to_threshold", "images_to"),
)


def study_runs(runs_dir: Path) -> pd.DataFrame:
    """Every study run folder under `runs_dir` (tuning trials left out) with its group `label` and `arm`, and
    `selected` marking per group and seed the run that counts."""
    from archbench.report.study import label_runs

    all_runs, _ = label_runs(load_run_folders(Path(runs_dir)).runs)
    study = all_runs[~all_runs["tuning_trial"].astype(bool)]
    if study.empty:
        raise ArchbenchError(f"{runs_dir}/ holds only tuning trials; record the study itself with `archbench run ...`")
    return select_runs(study, "label")


def results_table(runs: pd.DataFrame, identical: dict[str, str]) -> pd.DataFrame:
    """One row per chosen run (`runs["selected"]`), sorted by label and seed; `identical_to` names the group
    a run repeats exactly (see `study.identical_groups`), empty otherwise."""
    chosen = runs[runs["selected"]].sort_values(["label", "seed"], ignore_index=True)
    thresholds = sorted({t for ts in chosen["thresholds"] for t in ts})
    table = pd.DataFrame({c: chosen[c] for c in BASE_COLUMNS if c in chosen.columns})
    table["identical_to"] = [identical.get(label, "") for label in chosen["label"]]
    table["parameters"] = table["parameters"].round().astype("Int64")  # a count: printed whole
    for t in thresholds:
        for source, prefix in TIMES:
            table[f"{prefix}_{t:g}"] = [math.inf if r.get(t) is None else float(r.get(t)) for r in chosen[source]]
    return table[[*BASE_COLUMNS, *(c for c in table.columns if c not in BASE_COLUMNS)]]


def load_results(runs_dir: Path) -> pd.DataFrame:
    """The results table of the runs under `runs_dir` (what REPORT-results.csv holds)."""
    from archbench.report.study import identical_groups

    runs = study_runs(runs_dir)
    return results_table(runs, identical_groups(runs))
