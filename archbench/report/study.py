"""What the report reads, loaded once: the runs, how they group, which of them count, and the tables
derived from them.

A group is one architecture trained with one kind of learning rate. Runs group by model name and by
architecture (the registry entry's builder and arguments, and the parameter count): two architectures
recorded under one name are shown apart, tagged with a short hash of what builds them, and named in a
warning, never averaged together. Study runs whose rate came from a tuning file (`lr_source` "tuned ...")
form their own group beside those on the shared recipe (the preset's rate, or `--lr`). Tuning trials
(config `tuning_trial`) are never in a group: they appear in the learning-rate sensitivity section only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from archbench.errors import ArchbenchError
from archbench.report.gradient_measures import GradientTables, gradient_tables
from archbench.report.load import (
    counted_runs,
    load_bench_results,
    load_curves,
    load_gpu_results,
    load_gradnorms,
    load_latency,
    load_runs,
    load_tuning_files,
    select_runs,
)
from archbench.report.sensitivity import Sensitivity, load_sensitivity

SHARED, TUNED = "shared recipe", "tuned"
TUNED_TAG = " (tuned lr)"


def arm_of(lr_source) -> str:
    """SHARED for the preset's rate or --lr, TUNED for a rate from a tuning file."""
    return TUNED if str(lr_source).startswith("tuned") else SHARED


class ArchitectureClash(NamedTuple):
    """One model name recorded with several architectures."""

    model: str
    variants: list[str]  # each as its label and what it is


@dataclass(frozen=True)
class Inputs:
    """Where the report reads from, and how it names those places (relative to the report's folder)."""

    runs_dir: Path
    latency: Path
    bench_results: Path
    gpu_results: Path
    runs_label: str
    latency_label: str
    bench_label: str
    gpu_label: str
    command: str  # the command that regenerates the report
    relative: Callable[[Path], str]  # a path as the report names it


class FigureFiles(NamedTuple):
    curves: str
    gradients: str
    cosines: str
    lr_sensitivity: str


@dataclass(frozen=True)
class Study:
    """Everything the sections read. `runs` has every study run folder (no tuning trials, none without an
    epoch) with its group `label` and `selected` marking the runs that count per group and seed;
    `counted` the runs the tables average over; `listed` the chosen runs and every run that did not
    complete; `trials` the tuning trials."""

    runs: pd.DataFrame
    counted: pd.DataFrame
    listed: pd.DataFrame
    trials: pd.DataFrame
    ignored: list[str]  # run folders with no recorded epoch, as model/run_id
    clashes: list[ArchitectureClash]
    curves: pd.DataFrame  # per label and epoch: test_acc and train_loss averaged over seeds
    gradients: GradientTables
    sensitivity: Sensitivity | None
    latency: pd.DataFrame | None
    bench: pd.DataFrame | None
    gpu: dict | None
    inputs: Inputs
    figures: FigureFiles

    @property
    def labels(self) -> list[str]:
        return sorted(self.counted["label"].unique())


def _fill_parameters(runs: pd.DataFrame) -> pd.Series:
    """Each run's parameter count, taken from its architecture's other runs where its own summary lacks it
    (a run stopped before writing one), when they agree on one count."""
    known = runs.dropna(subset=["parameters"]).groupby("architecture")["parameters"].unique()
    return pd.Series(
        [
            p if np.isfinite(p) or a not in known or len(known[a]) != 1 else known[a][0]
            for a, p in zip(runs["architecture"], runs["parameters"])
        ],
        index=runs.index,
        dtype=float,
    )


def _architecture_text(row) -> str:
    params = f"{int(row.parameters):,} parameters" if np.isfinite(row.parameters) else "parameters not recorded"
    return f"builder {row.builder}, {params}"


def label_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[ArchitectureClash]]:
    """`runs` with `label` (the group a run averages in) and `arm`; and every name with several architectures."""
    runs = runs.copy()
    runs["parameters"] = _fill_parameters(runs)
    identity = [f"{a}:{p:.0f}" if np.isfinite(p) else a for a, p in zip(runs["architecture"], runs["parameters"])]
    runs["identity"] = identity
    by_name = runs.groupby("model")["identity"].nunique()
    tags = {}
    for (model, ident), rows in runs.groupby(["model", "identity"], sort=True):
        same_builder = runs[(runs["model"] == model) & (runs["architecture"] == rows["architecture"].iloc[0])]
        tag = rows["architecture"].iloc[0]
        if same_builder["identity"].nunique() > 1:  # one builder and arguments, several parameter counts
            tag += f", {rows['parameters'].iloc[0]:,.0f} parameters"
        tags[(model, ident)] = model if by_name[model] == 1 else f"{model} [{tag}]"
    runs["name_label"] = [tags[(m, i)] for m, i in zip(runs["model"], runs["identity"])]
    runs["arm"] = [arm_of(s) for s in runs["lr_source"]]
    runs["label"] = [n + (TUNED_TAG if a == TUNED else "") for n, a in zip(runs["name_label"], runs["arm"])]
    clashes = []
    for model, rows in runs[runs["model"].map(by_name) > 1].groupby("model", sort=True):
        variants = sorted({f"{r.name_label} ({_architecture_text(r)})" for r in rows.itertuples()})
        clashes.append(ArchitectureClash(model, variants))
    return runs, clashes


def thresholds_of(runs: pd.DataFrame) -> list[float]:
    return sorted({t for ts in runs["thresholds"] for t in ts})


def traits(counted: pd.DataFrame) -> pd.DataFrame:
    """Per label: model, builder, depth, residual, batch_norm, arm and name_label (from its first counted run)."""
    return counted.groupby("label", sort=True)[
        ["model", "builder", "depth", "residual", "batch_norm", "arm", "name_label"]
    ].first()


def load_study(inputs: Inputs, figures: FigureFiles) -> Study:
    folders = load_runs(inputs.runs_dir)
    all_runs, clashes = label_runs(folders.runs)
    is_trial = all_runs["tuning_trial"].astype(bool)
    trials, study_runs = all_runs[is_trial], all_runs[~is_trial]
    if study_runs.empty:
        raise ArchbenchError(
            f"{inputs.runs_dir}/ holds only tuning trials ({len(trials)}); record the study itself "
            "with `archbench run ...`"
        )
    runs = select_runs(study_runs, "label")
    counted = counted_runs(runs, "label")
    curves = load_curves(counted).groupby(["label", "epoch"], sort=True)[["test_acc", "train_loss"]].mean()
    return Study(
        runs=runs,
        counted=counted,
        listed=runs[runs["selected"] | (runs["status"] != "completed")],
        trials=trials.reset_index(drop=True),
        ignored=folders.ignored,
        clashes=clashes,
        curves=curves.reset_index(),
        gradients=gradient_tables(load_gradnorms(counted)),
        sensitivity=load_sensitivity(trials, load_tuning_files(inputs.runs_dir, inputs.relative), runs),
        latency=load_latency(inputs.latency),
        bench=load_bench_results(inputs.bench_results),
        gpu=load_gpu_results(inputs.gpu_results),
        inputs=inputs,
        figures=figures,
    )
