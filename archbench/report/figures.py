"""The report's figures: `matplotlib.figure.Figure`s (no pyplot state) under matplotlib's default style,
saved without the "Software" metadata, so the same numbers give the same bytes."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import matplotlib
import matplotlib.style
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from archbench.report.gradient_measures import COSINE, EARLY, STEP0, column
from archbench.report.sensitivity import Sensitivity
from archbench.report.stats import t_interval
from archbench.report.study import SHARED, TUNED_TAG

DPI = 100
SHORTCUT_NOTE = "open circles: 1x1 shortcut projections"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
POINT = dict(markersize=6, capsize=3, linestyle="none")  # a model's mean ± interval (no line: over the style's)
OPEN_CIRCLE = dict(linestyle="none", marker="o", markersize=8, markerfacecolor="none")  # a shortcut projection
OPEN_SQUARE = dict(linestyle="none", marker="s", markersize=10, markerfacecolor="none")  # the default rate
ARM_LINES = {"": "-", TUNED_TAG: "--"}  # the registry-default arm solid, tuned dashed, a rate set by --lr dotted
# A label's arm tag (`study._tag`): what tells the arms of one model apart; the rest of the label (a setup's tag
# included, see `study.split_setups`) names the model and picks its colour.
ARM_TAG = re.compile(rf"{re.escape(TUNED_TAG)}| \(--lr [^)]*\)")


def _styles(labels: list[str], every: list[str] | None = None) -> dict[str, dict]:
    """Per label: a colour and a marker of its model (the label without its arm tag), the same in every
    figure and never two models alike (tab20's colours and twelve markers, paired so that consecutive models
    differ in both); the arm told apart by the line style (`ARM_LINES`) and, for markers alone, by an open
    marker off the registry-default arm. Colours are dealt over the models of `every` (all the report's
    labels; default `labels`), so a model keeps its colour in a figure that shows only some."""
    tab20 = matplotlib.colormaps["tab20"]
    palette = [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]  # tab10's, then lighter
    names = sorted({_model(label) for label in [*labels, *(every or [])]})
    style = {m: dict(color=palette[i % 20], marker=MARKERS[i % len(MARKERS)]) for i, m in enumerate(names)}
    return {
        label: {
            **style[_model(label)],
            "linestyle": ARM_LINES.get(_arm_tag(label), ":"),
            "fillstyle": "full" if not _arm_tag(label) else "none",
        }
        for label in labels
    }


def _line(style: dict) -> dict:
    return {k: style[k] for k in ("color", "marker", "linestyle")}


def _arm_tag(label: str) -> str:
    found = ARM_TAG.search(label)
    return found.group(0) if found else ""


def _model(label: str) -> str:
    return ARM_TAG.sub("", label, count=1)


def once_per_model(labels: list[str]) -> list[str]:
    """One label per model: its registry-default arm's when it has one (for what every arm shares, e.g. step 0)."""
    out: dict[str, str] = {}
    for label in sorted(labels, key=lambda x: (bool(_arm_tag(x)), x)):
        out.setdefault(_model(label), label)
    return sorted(out.values())


def _legend_outside(fig: Figure, axes) -> None:
    """One legend for the figure, to the right of every panel (never over the data)."""
    handles = {}
    for ax in np.ravel(axes):
        for h, n in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(n, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)


def _band(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t half-width over seeds (0 with one seed)."""
    interval = t_interval(values)
    return interval.mean, interval.half_width if np.isfinite(interval.half_width) else 0.0


@contextlib.contextmanager
def _figure(path: Path, figsize: tuple[float, float], *grid: int, **subplots):
    """A figure and its axes under matplotlib's default style, saved to `path` (without the "Software"
    metadata) when the block ends."""
    with matplotlib.style.context("default"):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        yield fig, fig.subplots(*grid, **subplots)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _log_grid(ax, **labels) -> None:
    ax.set_xscale("log")
    ax.set(**labels)
    ax.grid(True, which="both", alpha=0.3)


def plot_training_curves(curves: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Test accuracy (%) and train loss against epoch, one row of panels per learning-rate arm: per model the
    mean over seeds with a 95% band (`curves`: one row per run and epoch, test_acc a fraction)."""
    styles = _styles(labels)
    arms = sorted(curves["arm"].unique(), key=lambda a: (a != SHARED, a)) if len(curves) else []
    rows = max(1, len(arms))
    with _figure(path, (12, 3.6 * rows + 0.4), rows, 2, squeeze=False) as (fig, axes):
        if not arms:
            for ax in axes[0]:
                _empty(ax, "no epochs recorded")
            return path
        for (acc_ax, loss_ax), arm in zip(axes, arms):
            mine = curves[curves["arm"] == arm]
            for label in labels:
                for ax, key, scale in ((acc_ax, "test_acc", 100.0), (loss_ax, "train_loss", 1.0)):
                    by_epoch = mine[mine["label"] == label].groupby("epoch", sort=True)[key]
                    if not by_epoch.ngroups:
                        continue
                    stats = [(e, *_band(scale * g.to_numpy(float))) for e, g in by_epoch]
                    epochs, mean, half = (np.array(x) for x in zip(*stats))
                    ax.plot(epochs, mean, **_line(styles[label]), markersize=4, label=_model(label))
                    low, high = mean - half, mean + half
                    if key == "test_acc":  # an accuracy band stays within 0-100%
                        low, high = np.clip(low, 0.0, 100.0), np.clip(high, 0.0, 100.0)
                    ax.fill_between(epochs, low, high, color=styles[label]["color"], alpha=0.15, linewidth=0)
            acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy, {arm}")
            loss_ax.set(xlabel="epoch", ylabel="train loss", title=f"Train loss, {arm}")
            epochs = sorted({int(e) for e in mine["epoch"]})
            for ax in (acc_ax, loss_ax):
                ax.grid(True, alpha=0.3)
                if len(epochs) <= 12:
                    ax.set_xticks(epochs)
                else:
                    ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle("Mean over seeds, 95% band (Student's t over seeds)", fontsize=10)
        _legend_outside(fig, axes)
    return path


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point is both left of (cheaper) and above (more accurate)."""
    front, best = [], -np.inf
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_accuracy_vs_cost(results: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Final test accuracy (mean ± 95% interval over seeds) against parameters, GFLOPs at 224 and training
    seconds, log x; per panel the Pareto front (no model both cheaper and more accurate) joined by a line."""
    styles = _styles(labels)
    panels = (
        ("parameters", "parameters (log scale)", "parameters"),
        ("gflops_224", "GFLOPs at 224x224 (log scale)", "GFLOPs"),
        ("train_seconds", "training seconds (log scale)", "training seconds"),
    )
    with _figure(path, (15, 4.4), 1, 3, sharey=True) as (fig, axes):
        for ax, (key, xlabel, name) in zip(axes, panels):
            points = []
            for label in labels:
                every = results[results["label"] == label]
                rows = every[every["status"] == "completed"]
                x = rows[key].astype(float)
                x = x[np.isfinite(x) & (x > 0)]
                if rows.empty or x.empty:
                    continue
                mean, half = _band(100 * rows["final_test_acc"].to_numpy(float))
                completed = f"{label} ({len(rows)}/{len(every)} completed)"
                ax.errorbar([x.mean()], [mean], yerr=[half], **(styles[label] | POINT), label=completed)
                points.append((float(x.mean()), mean))
            if not points:
                _empty(ax, f"no {key} recorded")
                continue
            ax.plot(*zip(*_pareto_front(points)), color="0.4", linewidth=1, linestyle="--", label="Pareto front")
            _log_grid(ax, xlabel=xlabel, title=f"Accuracy against {name}")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].set_ylabel("final test accuracy (%)")
        _legend_outside(fig, axes)
    return path


def plot_performance_profile(results: pd.DataFrame, labels: list[str], threshold: float | None, path: Path) -> Path:
    """AlgoPerf's performance profile (Dolan & Moré 2002) of training seconds to the main threshold: per
    model, the fraction of its runs whose time is within τ times the best time any model took on the same
    seed and arm; a run that never reached the threshold counts as infinite time (never within any τ)."""
    styles = _styles(labels)
    with _figure(path, (9, 4.5)) as (fig, ax):
        seconds = None if threshold is None else f"seconds_to_{threshold:g}"
        if seconds is None or seconds not in results.columns or results.empty:
            _empty(ax, "no threshold recorded")
            return path
        table = results[results["label"].isin(labels)]
        ratio = table[seconds] / table.groupby(["arm", "seed"])[seconds].transform("min")
        finite = ratio[np.isfinite(ratio)]
        taus = np.geomspace(1.0, max(2.0, float(finite.max()) * 1.05) if len(finite) else 2.0, 200)
        for label in labels:
            r = ratio[table["label"] == label].to_numpy(float)
            if r.size == 0:
                continue
            fraction = [(r <= tau).mean() for tau in taus]
            style = styles[label]
            reached = f"{int(np.isfinite(r).sum())}/{r.size} reached"
            ax.step(
                taus,
                fraction,
                where="post",
                color=style["color"],
                linestyle=style["linestyle"],
                label=f"{label} ({reached})",
            )
            ax.plot(taus[::40], fraction[::40], linestyle="none", color=style["color"], marker=style["marker"])
        ax.set_ylim(-0.02, 1.02)
        _log_grid(
            ax,
            xlabel="τ: training seconds to the threshold / the best on the same seed and arm (log scale)",
            ylabel="fraction of runs within τ",
            title=f"Performance profile: time to {100 * threshold:g}% test accuracy (never reached = ∞)",
        )
        _legend_outside(fig, ax)
    return path


def _depth_lines(ax, by_depth: pd.DataFrame, labels: list[str], measure: str, positive: bool, every=None) -> bool:
    """One line per label of `measure` against layer index; shortcut projections get open circles."""
    styles = _styles(labels, every)
    drawn = False
    for label in labels:
        rows = by_depth[by_depth["label"] == label].sort_values("layer_index")
        keep = np.isfinite(rows[measure].astype(float))
        if positive:
            keep &= rows[measure] > 0
        rows = rows[keep]
        if rows.empty:
            continue
        colour = styles[label]["color"]
        ax.plot(rows["layer_index"], rows[measure], **_line(styles[label]), markersize=4, label=label)
        shortcuts = rows[rows["layer"].astype(str).str.contains("downsample")]
        ax.plot(shortcuts["layer_index"], shortcuts[measure], **OPEN_CIRCLE, markeredgecolor=colour)
        drawn = True
    if drawn:
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return drawn


def plot_gradient_size_by_depth(by_depth: pd.DataFrame, labels: list[str], window: str, path: Path) -> Path:
    """‖g‖/‖w‖ (log scale) against weight-layer index (`gradient_measures.by_depth`), one line per model: at
    step 0, and over `window`."""
    with _figure(path, (12, 4.5), 1, 2, sharey=True) as (fig, axes):
        panels = (  # step 0 precedes any update: drawn once per architecture, whatever the arm
            (axes[0], STEP0, "step 0 (initialisation, every arm)", once_per_model(labels)),
            (axes[1], EARLY, window, labels),
        )
        for ax, window_key, title, drawn in panels:
            if _depth_lines(ax, by_depth, drawn, column("grad_to_weight", window_key), positive=True, every=labels):
                ax.set_yscale("log")
                ax.set(xlabel="weight layer", title=f"‖g‖/‖w‖ by depth, {title}, mean over seeds")
            else:
                _empty(ax, "no gradients recorded")
        fig.supxlabel(f"weight layer: 0 = first conv, forward order; {SHORTCUT_NOTE}", fontsize=10)
        axes[0].set_ylabel("‖g‖ / ‖w‖ (log scale)")
        _legend_outside(fig, axes)
    return path


def plot_cosine_by_depth(by_depth: pd.DataFrame, labels: list[str], window: str, path: Path) -> Path:
    """Mean cosine between consecutive steps' gradients over `window`, against weight-layer index."""
    with _figure(path, (8, 4.5)) as (fig, ax):
        if not _depth_lines(ax, by_depth, labels, column(COSINE, EARLY), positive=False):
            _empty(ax, "no step-to-step cosines recorded")
            return path
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set(
            xlabel=f"weight layer (0 = first conv, forward order; {SHORTCUT_NOTE})",
            ylabel="cosine(g_t, g_t-1)",
            title=f"Step-to-step gradient cosine by depth, {window}, mean over seeds",
        )
        _legend_outside(fig, ax)
    return path


def plot_lr_sensitivity(sensitivity: Sensitivity, path: Path, every: list[str] | None = None) -> Path:
    """Validation accuracy (%) against learning rate (log x), one line per model; the chosen rate starred,
    the default rate in an open square, rates that scored nothing (a seed diverged) as x at 0. `every`: the
    report's labels, so each model keeps its colour (`_styles`)."""
    styles = _styles([m.model for m in sensitivity.models], every)
    with _figure(path, (8, 4.5)) as (fig, ax):
        if not any(m.points for m in sensitivity.models):
            _empty(ax, "no tuning trials recorded")
            return path
        for m in sensitivity.models:
            colour = styles[m.model]["color"]
            scored = [p for p in m.points if p.scored]
            failed = [p for p in m.points if not p.scored]
            if scored:
                lrs, accs = [p.lr for p in scored], [100 * p.mean for p in scored]
                ax.plot(lrs, accs, color=colour, marker=styles[m.model]["marker"], markersize=4, label=m.model)
            if failed:
                ax.plot([p.lr for p in failed], [0.0] * len(failed), linestyle="none", marker="x", color=colour)
            chosen, default = m.point_at(m.chosen), m.point_at(m.default.lr)
            if chosen is not None and chosen.scored:
                ax.plot([chosen.lr], [100 * chosen.mean], linestyle="none", marker="*", markersize=14, color=colour)
            if default is not None and default.scored:
                ax.plot([default.lr], [100 * default.mean], **OPEN_SQUARE, markeredgecolor=colour)
        _log_grid(
            ax,
            xlabel="learning rate (log scale)",
            ylabel="validation accuracy (%)",
            title="Learning-rate sensitivity (mean over seeds; * chosen, □ default, x diverged)",
        )
        _legend_outside(fig, ax)
    return path
