"""The study-wide results table: one row per study run that counts (per group and seed), as
REPORT-results.csv and `archbench.load_runs` give it; a threshold never reached takes infinite time."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from archbench.report.study import identical_groups, study_runs
from archbench.report.thresholds import thresholds_of

BASE_COLUMNS = tuple(
    "model label arm seed run_id dataset lr lr_source status epochs_completed final_train_acc "
    "final_test_acc best_test_acc selected_on test_acc_at_best_epoch clip_fraction parameters gflops_224 "
    "train_seconds config_hash identical_to".split()
)
TIMES = (
    ("epochs_to_threshold", "epochs_to"),
    ("seconds_to_threshold", "seconds_to"),
    ("images_to_threshold", "images_to"),
)


def results_table(runs: pd.DataFrame, identical: dict[str, str]) -> pd.DataFrame:
    """One row per chosen run (`runs["selected"]`), sorted by label and seed; `identical_to` names the group
    a run repeats exactly (see `study.identical_groups`), empty otherwise."""
    chosen = runs[runs["selected"]].sort_values(["label", "seed"], ignore_index=True)
    table = pd.DataFrame({c: chosen[c] for c in BASE_COLUMNS if c in chosen.columns})
    table["identical_to"] = [identical.get(label, "") for label in chosen["label"]]
    table["parameters"] = table["parameters"].round().astype("Int64")  # a count: printed whole
    for t in thresholds_of(chosen):
        for source, prefix in TIMES:
            table[f"{prefix}_{t:g}"] = [math.inf if r.get(t) is None else float(r.get(t)) for r in chosen[source]]
    return table[[*BASE_COLUMNS, *(c for c in table.columns if c not in BASE_COLUMNS)]]


def load_results(runs_dir: Path) -> pd.DataFrame:
    """The results table of the runs under `runs_dir` (what REPORT-results.csv holds)."""
    runs = study_runs(Path(runs_dir))[0]
    return results_table(runs, identical_groups(runs))
