"""Early-training gradient measures per run and layer from gradnorms.csv: step 0 apart from the early window
(docs/report.md). Claims rest on ‖g‖/‖w‖ and the cosine; ‖g‖/√n and ‖g‖ are shown only."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

RUN_KEYS = ["label", "model", "seed", "run_id"]
SIZES = ("grad_to_weight", "grad_rms", "grad_norm")  # gradient size, scale-free first
COSINE = "cosine_to_previous"
SYMBOLS = {"grad_to_weight": "‖g‖/‖w‖", "grad_rms": "‖g‖/√n", "grad_norm": "‖g‖", COSINE: "cosine"}
STEP0, EARLY = "step0", "early"  # column suffixes: at step 0; mean over steps 1 to EARLY_STEPS
DEPTH_BINS = 5  # the by-depth tables group each model's weight layers into fifths, first to last
EARLY_STEPS = 10  # the early window: optimiser steps 1 to EARLY_STEPS


def column(measure: str, window: str) -> str:
    return f"{measure}_{window}"


LAYER_COLUMNS = [column(m, STEP0) for m in SIZES] + [column(m, EARLY) for m in (*SIZES, COSINE)]


class GradientTables(NamedTuple):
    per_run: pd.DataFrame  # per run: first and last layer of every measure, first/last ratios of ‖g‖/‖w‖
    by_depth: pd.DataFrame  # per label and layer index: every measure, averaged over seeds
    bins: pd.DataFrame  # per run and depth bin: every measure, averaged over the bin's layers
    steps: int  # steps 0 to steps - 1 make up step 0 and the early window (at most EARLY_STEPS + 1)


def per_layer(grads: pd.DataFrame, last: int) -> pd.DataFrame:
    """Per run and layer: each size measure at step 0 and over steps 1 to `last`, and the mean cosine."""
    keys = [*RUN_KEYS, "layer_index"]
    if grads.empty:
        return pd.DataFrame(columns=[*keys, "layer", "steps", *LAYER_COLUMNS])
    grouped = grads.groupby(keys, sort=True)
    table = grouped.agg(layer=("layer", "first"), steps=("step", "nunique"))
    at_start = grads[grads["step"] == 0].groupby(keys, sort=True)[list(SIZES)].mean()
    later = grads[(grads["step"] > 0) & (grads["step"] <= last)].groupby(keys, sort=True)[[*SIZES, COSINE]].mean()
    table = table.join(at_start.add_suffix(f"_{STEP0}")).join(later.add_suffix(f"_{EARLY}"))
    return table.reindex(columns=["layer", "steps", *LAYER_COLUMNS]).reset_index()


def per_run(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: the first and last weight layer (by layer index), each measure there, and the first/last
    ratio of ‖g‖/‖w‖ at step 0 and over the early window."""
    runs = layers.sort_values("layer_index").groupby(RUN_KEYS, sort=True)
    first, last = (runs.nth(i).set_index(RUN_KEYS) for i in (0, -1))
    table = runs["steps"].max().to_frame()
    for name in ("layer", *LAYER_COLUMNS):
        table[f"first_{name}"], table[f"last_{name}"] = first[name], last[name]
    for window in (STEP0, EARLY):
        a, b = (table[f"{end}_{column('grad_to_weight', window)}"].astype(float) for end in ("first", "last"))
        table[f"ratio_{window}"] = (a / b).where(np.isfinite(a) & np.isfinite(b) & (b != 0))
    return table.reset_index()


def by_depth(layers: pd.DataFrame) -> pd.DataFrame:
    """Per label and layer index: the layer's name and every measure averaged over seeds."""
    if layers.empty:
        return pd.DataFrame(columns=["label", "layer_index", "layer", *LAYER_COLUMNS])
    grouped = layers.groupby(["label", "layer_index"], sort=True)
    return grouped.agg(layer=("layer", "first"), **{c: (c, "mean") for c in LAYER_COLUMNS}).reset_index()


def by_bin(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run and depth bin (0 to DEPTH_BINS - 1): the number of weight layers the run has and every
    measure averaged over the bin's layers (NaNs left out), so a bin's mean and interval over seeds come
    from one value per seed."""
    ordered = layers.sort_values([*RUN_KEYS, "layer_index"])
    runs = ordered.groupby(RUN_KEYS, sort=True)
    count = runs["layer_index"].transform("size")
    binned = ordered.assign(bin=runs.cumcount() * DEPTH_BINS // count, layers=count)  # groups of (nearly) equal count
    return binned.groupby([*RUN_KEYS, "bin", "layers"], sort=True)[LAYER_COLUMNS].mean().reset_index()


def gradient_tables(grads: pd.DataFrame) -> GradientTables:
    last = min(EARLY_STEPS, int(grads.groupby(RUN_KEYS)["step"].max().min())) if len(grads) else 0
    layers = per_layer(grads, last)
    return GradientTables(per_run(layers), by_depth(layers), by_bin(layers), last + 1 if len(grads) else 0)


def early_window(steps: int) -> str:
    """The early window in words, e.g. 'steps 1-59'."""
    if steps <= 1:
        return "steps after 0 (none recorded)"
    return "step 1" if steps == 2 else f"steps 1-{steps - 1}"
