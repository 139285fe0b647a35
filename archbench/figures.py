"""The report's figures: matplotlib on the Agg canvas, fixed size and style, byte-stable PNGs.

No pyplot state is touched: each figure is a `matplotlib.figure.Figure` drawn under matplotlib's default
style (whatever a user's matplotlibrc says) and saved without the "Software" metadata, so the same
numbers give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 100
PNG_METADATA = {"Software": None}


def _colours(models: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training_curves(curves: pd.DataFrame, models: list[str], path: Path) -> Path:
    """Test accuracy (%) and train loss against epoch, one line per model.

    `curves` has columns model, epoch, test_acc (fraction), train_loss: already averaged over seeds.
    """
    colours = _colours(models)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
        acc_ax, loss_ax = fig.subplots(1, 2)
        for model in models:
            rows = curves[curves["model"] == model].sort_values("epoch")
            if rows.empty:
                continue
            style = dict(color=colours[model], marker="o", markersize=3, linewidth=1.5, label=model)
            acc_ax.plot(rows["epoch"], 100 * rows["test_acc"], **style)
            loss_ax.plot(rows["epoch"], rows["train_loss"], **style)
        if curves.empty:
            _empty(acc_ax, "no epochs recorded")
            _empty(loss_ax, "no epochs recorded")
        else:
            acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean over seeds)")
            loss_ax.set(xlabel="epoch", ylabel="train loss", title="Train loss (mean over seeds)")
            for ax in (acc_ax, loss_ax):
                ax.grid(True, alpha=0.3)
                ax.xaxis.get_major_locator().set_params(integer=True)
            loss_ax.legend(fontsize=8, loc="best")
        return _save(fig, path)


def plot_gradnorm_by_depth(by_depth: pd.DataFrame, models: list[str], path: Path) -> Path:
    """Early gradient norm (log scale) against weight-layer index, one line per model.

    `by_depth` has columns model, depth (0-based index of conv/linear weights in forward order), layer
    (module name) and grad_norm (already averaged over the recorded steps and over seeds). ResNet's 1x1
    shortcut projections (layer names with "downsample") get open markers: they sit off the main path.
    """
    colours = _colours(models)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        drawn = False
        for model in models:
            rows = by_depth[by_depth["model"] == model].sort_values("depth")
            rows = rows[np.isfinite(rows["grad_norm"]) & (rows["grad_norm"] > 0)]
            if rows.empty:
                continue
            ax.plot(rows["depth"], rows["grad_norm"], color=colours[model], marker="o", markersize=3, label=model)
            shortcuts = rows[rows["layer"].astype(str).str.contains("downsample")]
            ax.plot(shortcuts["depth"], shortcuts["grad_norm"], linestyle="none", marker="o", markersize=8,
                    markerfacecolor="none", markeredgecolor=colours[model])
            drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.set(
                xlabel="weight layer (0 = first conv, forward order; open circles: 1x1 shortcut projections)",
                ylabel="gradient norm (log scale)",
                title="Early training: gradient norm by depth (mean over first steps and seeds)",
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8, loc="best")
        else:
            _empty(ax, "no gradient norms recorded")
        return _save(fig, path)
