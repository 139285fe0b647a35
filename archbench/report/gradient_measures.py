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


def per_layer(grads: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: each size measure at step 0 and over the early window, and the mean cosine."""
    keys = [*RUN_KEYS, "layer_index"]
    if grads.empty:
        return pd.DataFrame(columns=[*keys, "layer", "steps", *LAYER_COLUMNS])
    grouped = grads.groupby(keys, sort=True)
    table = grouped.agg(layer=("layer", "first"), steps=("step", "nunique"))
    at_start = grads[grads["step"] == 0].groupby(keys, sort=True)[list(SIZES)].mean()
    last = min(EARLY_STEPS, int(grads.groupby(RUN_KEYS)["step"].max().min()))
    later = grads[(grads["step"] > 0) & (grads["step"] <= last)].groupby(keys, sort=True)[[*SIZES, COSINE]].mean()
    table = table.join(at_start.add_suffix(f"_{STEP0}")).join(later.add_suffix(f"_{EARLY}"))
    return table.reindex(columns=["layer", "steps", *LAYER_COLUMNS]).reset_index()


def per_run(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: the first and last weight layer (by layer index), each measure there, and the first/last
    ratio of ‖g‖/‖w‖ at step 0 and over the early window."""
    rows = []
    for key, g in layers.groupby(RUN_KEYS, sort=True):
        g = g.sort_values("layer_index")
        first, last = g.iloc[0], g.iloc[-1]
        row = dict(zip(RUN_KEYS, key))
        row.update(steps=int(g["steps"].max()), first_layer=first["layer"], last_layer=last["layer"])
        for name in LAYER_COLUMNS:
            row[f"first_{name}"], row[f"last_{name}"] = first[name], last[name]
        for window in (STEP0, EARLY):
            a, b = first[column("grad_to_weight", window)], last[column("grad_to_weight", window)]
            row[f"ratio_{window}"] = a / b if np.isfinite(a) and np.isfinite(b) and b != 0 else float("nan")
        rows.append(row)
    columns = [
        *RUN_KEYS,
        "steps",
        "first_layer",
        "last_layer",
        *(f"{end}_{name}" for name in LAYER_COLUMNS for end in ("first", "last")),
        f"ratio_{STEP0}",
        f"ratio_{EARLY}",
    ]
    return pd.DataFrame(rows, columns=columns)


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
    rows = []
    for key, g in layers.groupby(RUN_KEYS, sort=True):
        g = g.sort_values("layer_index")
        bins = (np.arange(len(g)) * DEPTH_BINS) // len(g)  # DEPTH_BINS groups of (nearly) equal count
        for b in range(DEPTH_BINS):
            row = {**dict(zip(RUN_KEYS, key)), "bin": b, "layers": len(g)}
            row.update(g.loc[bins == b, LAYER_COLUMNS].mean().to_dict())
            rows.append(row)
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "bin", "layers", *LAYER_COLUMNS])


def gradient_tables(grads: pd.DataFrame) -> GradientTables:
    layers = per_layer(grads)
    steps = min(EARLY_STEPS + 1, int(grads.groupby(RUN_KEYS)["step"].max().min()) + 1) if len(layers) else 0
    return GradientTables(per_run(layers), by_depth(layers), by_bin(layers), steps)


def early_window(steps: int) -> str:
    """The early window in words, e.g. 'steps 1-59'."""
    if steps <= 1:
        return "steps after 0 (none recorded)"
    return "step 1" if steps == 2 else f"steps 1-{steps - 1}"
