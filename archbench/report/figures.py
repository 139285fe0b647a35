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

from archbench.report.gradient_measures import COSINE, EARLY, STEP0, column
from archbench.report.sensitivity import Sensitivity

DPI = 100
PNG_METADATA = {"Software": None}
SHORTCUT_NOTE = "open circles: 1x1 shortcut projections"


def _colours(labels: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(labels)}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training_curves(curves: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Test accuracy (%) and train loss against epoch, one line per model.

    `curves` has columns label, epoch, test_acc (fraction), train_loss: already averaged over seeds.
    """
    colours = _colours(labels)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
        acc_ax, loss_ax = fig.subplots(1, 2)
        for label in labels:
            rows = curves[curves["label"] == label].sort_values("epoch")
            if rows.empty:
                continue
            style = dict(color=colours[label], marker="o", markersize=3, linewidth=1.5, label=label)
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


def _depth_lines(ax, by_depth: pd.DataFrame, labels: list[str], measure: str, positive: bool) -> bool:
    """One line per label of `measure` against layer index; shortcut projections get open circles."""
    colours = _colours(labels)
    drawn = False
    for label in labels:
        rows = by_depth[by_depth["label"] == label].sort_values("layer_index")
        keep = np.isfinite(rows[measure].astype(float))
        if positive:
            keep &= rows[measure] > 0
        rows = rows[keep]
        if rows.empty:
            continue
        ax.plot(rows["layer_index"], rows[measure], color=colours[label], marker="o", markersize=3, label=label)
        shortcuts = rows[rows["layer"].astype(str).str.contains("downsample")]
        ax.plot(
            shortcuts["layer_index"],
            shortcuts[measure],
            linestyle="none",
            marker="o",
            markersize=8,
            markerfacecolor="none",
            markeredgecolor=colours[label],
        )
        drawn = True
    if drawn:
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return drawn


def plot_gradient_size_by_depth(by_depth: pd.DataFrame, labels: list[str], window: str, path: Path) -> Path:
    """‖g‖/‖w‖ (log scale) against weight-layer index, one line per model: at step 0, and over `window`.

    `by_depth` is `gradient_measures.by_depth`: per label and layer_index (0-based, forward order), the
    layer's name and each measure averaged over seeds.
    """
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(12, 4.5), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, window_key, title in ((axes[0], STEP0, "step 0 (initialisation)"), (axes[1], EARLY, window)):
            if _depth_lines(ax, by_depth, labels, column("grad_to_weight", window_key), positive=True):
                ax.set_yscale("log")
                ax.set(xlabel="weight layer", title=f"‖g‖/‖w‖ by depth, {title}, mean over seeds")
            else:
                _empty(ax, "no gradients recorded")
        fig.supxlabel(f"weight layer: 0 = first conv, forward order; {SHORTCUT_NOTE}", fontsize=10)
        axes[0].set_ylabel("‖g‖ / ‖w‖ (log scale)")
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend(fontsize=8, loc="best")
        return _save(fig, path)


def plot_cosine_by_depth(by_depth: pd.DataFrame, labels: list[str], window: str, path: Path) -> Path:
    """Mean cosine between consecutive steps' gradients over `window`, against weight-layer index."""
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        if _depth_lines(ax, by_depth, labels, column(COSINE, EARLY), positive=False):
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            ax.set(
                xlabel=f"weight layer (0 = first conv, forward order; {SHORTCUT_NOTE})",
                ylabel="cosine(g_t, g_t-1)",
                title=f"Step-to-step gradient cosine by depth, {window}, mean over seeds",
            )
            ax.legend(fontsize=8, loc="best")
        else:
            _empty(ax, "no step-to-step cosines recorded")
        return _save(fig, path)


def plot_lr_sensitivity(sensitivity: Sensitivity, path: Path) -> Path:
    """Validation accuracy (%) against learning rate (log x), one line per model; the chosen rate starred,
    the default rate in an open square, rates that scored nothing (a seed diverged) as x at 0."""
    labels = [m.model for m in sensitivity.models]
    colours = _colours(labels)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        drawn = False
        for m in sensitivity.models:
            colour = colours[m.model]
            scored = [p for p in m.points if p.scored]
            failed = [p for p in m.points if not p.scored]
            if scored:
                ax.plot(
                    [p.lr for p in scored],
                    [100 * p.mean for p in scored],
                    color=colour,
                    marker="o",
                    markersize=4,
                    label=m.model,
                )
                drawn = True
            if failed:
                ax.plot([p.lr for p in failed], [0.0] * len(failed), linestyle="none", marker="x", color=colour)
                drawn = True
            chosen, default = m.point_at(m.chosen), m.point_at(m.default.lr)
            if chosen is not None and chosen.scored:
                ax.plot([chosen.lr], [100 * chosen.mean], linestyle="none", marker="*", markersize=14, color=colour)
            if default is not None and default.scored:
                ax.plot(
                    [default.lr],
                    [100 * default.mean],
                    linestyle="none",
                    marker="s",
                    markersize=10,
                    markerfacecolor="none",
                    markeredgecolor=colour,
                )
        if drawn:
            ax.set_xscale("log")
            ax.set(
                xlabel="learning rate (log scale)",
                ylabel="validation accuracy (%)",
                title="Learning-rate sensitivity (mean over seeds; * chosen, □ default, x diverged)",
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        else:
            _empty(ax, "no tuning trials recorded")
        return _save(fig, path)
