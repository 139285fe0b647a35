"""What the report reads, loaded once (`Study`): the runs, how they group (`label_runs`), which of them count,
and the tables derived from them (`results_table`). The grouping rules are in docs/report.md."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from archbench.config import lr_origin
from archbench.errors import ArchbenchError
from archbench.report.gradient_measures import GradientTables, gradient_tables
from archbench.report.load import (
    TO_THRESHOLD,
    RunFolders,
    counted_runs,
    load_bench_results,
    load_csvs,
    load_gpu_results,
    load_latency,
    load_runs,
    load_tuning_files,
    select_runs,
)
from archbench.report.sensitivity import Sensitivity, load_sensitivity
from archbench.report.thresholds import main_threshold, thresholds_of
from archbench.runs import GRADNORMS

SHARED, TUNED, FIXED = "registry default rates", "tuned", "rate set by --lr"
TUNED_TAG = " (tuned lr)"


def arm_of(lr_source) -> str:
    """SHARED for the preset's rate (times the entry's lr_scale), TUNED for a rate from a tuning file, FIXED
    for a rate given with --lr."""
    return {"tuned": TUNED, "--lr": FIXED}.get(lr_origin(lr_source), SHARED)


def _tag(arm: str, lr: float) -> str:
    return TUNED_TAG if arm == TUNED else f" (--lr {lr:g})" if arm == FIXED else ""


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
    accuracy_cost: str
    profile: str


@dataclass(frozen=True)
class Study:
    """Everything the sections read."""

    runs: pd.DataFrame  # every study run (no tuning trials), its group `label`, `selected` the runs that count
    counted: pd.DataFrame  # the runs the tables average over
    listed: pd.DataFrame  # the chosen runs and every run that did not complete
    trials: pd.DataFrame  # the tuning trials
    ignored: list[str]  # run folders with no recorded epoch, as model/run_id
    damaged: list[str]  # run folders whose records disagree, as "model/run_id: why" (`archbench.runs.DamagedRecord`)
    clashes: list[ArchitectureClash]
    curves: pd.DataFrame  # per label, arm, seed and epoch: test_acc and train_loss of the counted runs
    gradients: GradientTables
    sensitivity: Sensitivity | None
    latency: pd.DataFrame | None
    bench: pd.DataFrame | None
    gpu: dict | None
    inputs: Inputs
    figures: FigureFiles
    identical: dict[str, str]  # a group folded into another because its runs are the same (see above)
    kinds: pd.DataFrame  # `traits` of the counted groups
    main_threshold: float | None  # `claims.main_threshold`
    claims: pd.DataFrame | None = None  # `claims.build_claims`, set once the study is loaded

    @property
    def labels(self) -> list[str]:
        return sorted(self.counted["label"].unique())

    @property
    def chosen(self) -> pd.DataFrame:
        """Per group and seed the run that counts (completed or not), identical groups folded."""
        return self.runs[self.runs["selected"] & self.runs["label"].isin(self.kinds.index)]


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
    runs["identity"] = [
        f"{a}:{p:.0f}" if np.isfinite(p) else a for a, p in zip(runs["architecture"], runs["parameters"])
    ]
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
    runs["label"] = [n + _tag(a, lr) for n, a, lr in zip(runs["name_label"], runs["arm"], runs["lr"])]
    runs["label"] = split_setups(runs)
    clashes = []
    for model, rows in runs[runs["model"].map(by_name) > 1].groupby("model", sort=True):
        variants = sorted({f"{r.name_label} ({_architecture_text(r)})" for r in rows.itertuples()})
        clashes.append(ArchitectureClash(model, variants))
    return runs, clashes


# A label names at most this many differing recipe fields; more, and it names a hash of the setup instead.
NAMED_FIELDS = 3


def _setup_tags(setups: pd.DataFrame) -> list[str]:
    """Per row of `setups` (distinct `setup` and `setup_key`), a short text of how it differs from the
    others: the data's fingerprint when the data differ, and the recipe fields that differ (by their last
    name) or, past `NAMED_FIELDS` of them, a hash of the setup."""
    flat = pd.json_normalize(list(setups["setup"]), sep=".").map(lambda v: json.dumps(v, sort_keys=True, default=str))
    differ = [c for c in flat.columns if flat[c].nunique() > 1]
    data = [c for c in differ if c.startswith("data.")]
    recipe = [c for c in differ if c not in data]
    tags = []
    for (_, row), (key, config) in zip(flat.iterrows(), zip(setups["setup_key"], setups["setup"])):
        parts = [f"data {config['data']['fingerprint'][:6]}"] if data else []
        if len(recipe) > NAMED_FIELDS:
            parts.append(f"recipe {key[:6]}")
        else:
            parts += [f"{c.rsplit('.', 1)[-1]} {_value_text(row[c])}" for c in recipe]
        tags.append(", ".join(parts))
    if len(set(tags)) < len(tags):  # what differs is where the names above do not show it
        tags = [f"{t}, setup {k[:6]}" if t else f"setup {k[:6]}" for t, k in zip(tags, setups["setup_key"])]
    return tags


def _value_text(text: str) -> str:
    """A recipe value as a label shows it: numbers short, no value (null, or absent) as "none"."""
    value = json.loads(text)
    if isinstance(value, float):
        return "none" if math.isnan(value) else f"{value:g}"
    return "none" if value is None else str(value)


def split_setups(runs: pd.DataFrame) -> pd.Series:
    """Each run's label, tagged with what differs (`_setup_tags`) where the runs of one label (tuning trials
    left out) differ in data or recipe: runs of different setups are never averaged together."""
    labels = runs["label"].copy()
    study = runs[~runs["tuning_trial"].astype(bool)]
    for label, rows in study.groupby("label", sort=True):
        setups = rows.drop_duplicates("setup_key").sort_values("setup_key")
        if len(setups) > 1:
            tags = dict(zip(setups["setup_key"], _setup_tags(setups)))
            labels[rows.index] = [f"{label} ({tags[k]})" for k in rows["setup_key"]]
    return labels


def traits(counted: pd.DataFrame) -> pd.DataFrame:
    """Per label: model, builder, depth, residual, batch_norm, arm, name_label and the data's fingerprint (from
    its first counted run)."""
    return counted.groupby("label", sort=True)[
        ["model", "builder", "depth", "residual", "batch_norm", "arm", "name_label", "fingerprint"]
    ].first()


def identical_groups(runs: pd.DataFrame) -> dict[str, str]:
    """{group: the group it repeats} for each group whose every chosen run has a run in an earlier group
    (registry default rates first) with the same seed, recipe and per-epoch numbers."""
    chosen = runs[runs["selected"]]
    arms = chosen.groupby("label")["arm"].first()
    order = sorted(arms.index, key=lambda label: (arms[label] != SHARED, label))
    seen: dict[tuple, str] = {}
    out = {}
    for label in order:
        rows = chosen[chosen["label"] == label]
        keys = [(r.seed, r.recipe_key, r.numbers_key) for r in rows.itertuples()]
        twins = {seen.get(k) for k in keys}
        if len(twins) == 1 and None not in twins:
            out[label] = twins.pop()
            continue
        for k in keys:
            seen.setdefault(k, label)
    return out


def study_runs(runs_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, RunFolders, list[ArchitectureClash]]:
    """The study runs under `runs_dir` labelled (`label_runs`), `selected` marking per group and seed the run
    that counts; the tuning trials; the run folders as read; and every name with several architectures."""
    folders = load_runs(runs_dir)
    all_runs, clashes = label_runs(folders.runs)
    is_trial = all_runs["tuning_trial"].astype(bool)
    trials, study = all_runs[is_trial], all_runs[~is_trial]
    if study.empty:
        raise ArchbenchError(
            f"{runs_dir}/ holds only tuning trials ({len(trials)}); record the study itself with `archbench run ...`"
        )
    return select_runs(study), trials.reset_index(drop=True), folders, clashes


def load_study(inputs: Inputs, figures: FigureFiles) -> Study:
    runs, trials, folders, clashes = study_runs(inputs.runs_dir)
    identical = identical_groups(runs)
    counted = counted_runs(runs[~runs["label"].isin(identical)])
    curves = load_csvs(counted)[["label", "seed", "epoch", "test_acc", "train_loss"]]
    curves = curves.merge(counted[["label", "arm", "model"]].drop_duplicates("label"), on="label")
    selected = runs[runs["selected"] & ~runs["label"].isin(identical)]
    return Study(
        runs=runs,
        counted=counted,
        listed=runs[runs["selected"] | (runs["status"] != "completed")],
        trials=trials,
        ignored=folders.ignored,
        damaged=folders.damaged,
        clashes=clashes,
        curves=curves.sort_values(["label", "seed", "epoch"], ignore_index=True),
        gradients=gradient_tables(load_csvs(counted, GRADNORMS)),
        sensitivity=load_sensitivity(trials, load_tuning_files(inputs.runs_dir, inputs.relative), runs),
        latency=load_latency(inputs.latency),
        bench=load_bench_results(inputs.bench_results),
        gpu=load_gpu_results(inputs.gpu_results),
        inputs=inputs,
        figures=figures,
        identical=identical,
        kinds=traits(counted),
        main_threshold=main_threshold(selected, thresholds_of(selected)),
    )


BASE_COLUMNS = tuple(
    "model label arm seed run_id dataset lr lr_source status epochs_completed final_train_acc "
    "final_test_acc best_test_acc selected_on test_acc_at_best_epoch clip_fraction parameters gflops_224 "
    "train_seconds config_hash identical_to".split()
)


def results_table(runs: pd.DataFrame, identical: dict[str, str]) -> pd.DataFrame:
    """REPORT-results.csv, as `archbench.load_runs` gives it too: one row per chosen run (`runs["selected"]`),
    sorted by label and seed; `identical_to` names the group a run repeats exactly (`identical_groups`), empty
    otherwise; a threshold never reached takes infinite time."""
    chosen = runs[runs["selected"]].sort_values(["label", "seed"], ignore_index=True)
    table = pd.DataFrame({c: chosen[c] for c in BASE_COLUMNS if c in chosen.columns})
    table["identical_to"] = [identical.get(label, "") for label in chosen["label"]]
    table["parameters"] = table["parameters"].round().astype("Int64")  # a count: printed whole
    for t in thresholds_of(chosen):
        for source in TO_THRESHOLD:  # columns epochs_to_<t>, seconds_to_<t>, images_to_<t>
            column = f"{source.removesuffix('threshold')}{t:g}"
            table[column] = [math.inf if r.get(t) is None else float(r.get(t)) for r in chosen[source]]
    return table[[*BASE_COLUMNS, *(c for c in table.columns if c not in BASE_COLUMNS)]]


def load_results(runs_dir: Path) -> pd.DataFrame:
    """The results table of the runs under `runs_dir` (what REPORT-results.csv holds)."""
    runs = study_runs(Path(runs_dir))[0]
    return results_table(runs, identical_groups(runs))
