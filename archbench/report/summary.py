"""The report's first screen: per model accuracy ± interval, time to the main threshold, run status and
clipping, then the Holm-adjusted verdicts of the questions the study asks (ResNet against plain at each
depth, BN against no BN, ResNet against VGG), each a row of REPORT-claims.csv. At most ~30 lines."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from archbench.report.claims import ACCURACY, QUESTION, RESOLVED
from archbench.report.comparisons import BN, RESIDUAL, RESNET_VGG
from archbench.report.stats import t_interval
from archbench.report.text import DASH, join, md, p_text, pct, threshold_label
from archbench.report.thresholds import epochs_to

if TYPE_CHECKING:
    from archbench.report.study import Study

MOST = 0.5  # clipping that bound on more than this fraction of a model's steps is warned about


def chance(study: Study) -> float | None:
    """1 / classes of the counted runs' data (None when they disagree or do not say)."""
    classes = {int(c) for c in study.counted["num_classes"].dropna()}
    return 1.0 / classes.pop() if len(classes) == 1 else None


def resolution(study: Study) -> str:
    """One test image's worth of accuracy, in points: the resolution of every accuracy."""
    sizes = {int(s) for s in study.counted["test_size"].dropna()}
    return f"{100 / sizes.pop():.2g} points" if len(sizes) == 1 else ""


def did_not_learn(values, chance_level: float | None) -> bool:
    """The 95% interval of the final test accuracy reaches down to chance (one seed: at or below chance)."""
    interval = t_interval(values)
    if chance_level is None or interval.n == 0:
        return False
    if interval.n == 1 or not math.isfinite(interval.half_width):
        return interval.mean <= chance_level
    return interval.mean - interval.half_width <= chance_level


def clip_fractions(study: Study) -> dict[str, float]:
    """Per group, the mean over its counted runs of the fraction of steps whose gradient clipping bound."""
    out = {}
    for label, rows in study.counted.groupby("label", sort=True):
        values = rows["clip_fraction"].dropna()
        out[label] = float(values.mean()) if len(values) else math.nan
    return out


def clipping_warning(study: Study) -> list[str]:
    """A prominent warning when clipping bound on most steps of some model, or a note that it was not recorded."""
    fractions = clip_fractions(study)
    most = [f"{label} {100 * f:.0f}%" for label, f in fractions.items() if math.isfinite(f) and f > MOST]
    unknown = sorted(label for label, f in fractions.items() if not math.isfinite(f))
    clips = sorted({float(c) for c in study.counted["clip_grad_norm"].dropna() if c})
    out = []
    threshold = "/".join(f"{c:g}" for c in clips)
    if most:
        out.append(
            f"> **WARNING: gradient clipping bound on most optimiser steps** (threshold {threshold}): "
            f"{', '.join(most)} of steps. Those runs trained as normalised SGD, their step size set by the clip "
            "threshold rather than the learning rate, and that step size differs by architecture."
        )
    if unknown and clips:
        out.append(
            f"> **Clipping not recorded** for {join(unknown)} (records older than schema version 2), though the "
            f"recipe clips at {threshold}: whether it bound is unknown."
        )
    return out


def _time_cell(rows: pd.DataFrame, t: float | None, key: str) -> str:
    """Mean time to `t` over the seeds; ∞ when a seed never reached it (the reached ones' mean beside it)."""
    if t is None:
        return DASH
    if key == "epochs":
        values = list(epochs_to(rows, t).values())
    else:
        values = [math.inf if s is None else float(s) for s in (r.get(t) for r in rows["seconds_to_threshold"])]
    reached = [v for v in values if math.isfinite(v)]
    digits = ".1f"
    if len(reached) == len(values) and values:
        return format(float(np.mean(values)), digits)
    if not reached:
        return f"∞ (0/{len(values)})"
    return f"∞ ({len(reached)}/{len(values)}; those {format(float(np.mean(reached)), digits)})"


def model_rows(study: Study) -> pd.DataFrame:
    chosen, counted, t = study.chosen, study.counted, study.main_threshold
    level, res, fractions = chance(study), resolution(study), clip_fractions(study)
    rows = []
    for label in study.kinds.index:
        mine, done = chosen[chosen["label"] == label], counted[counted["label"] == label]
        completed = int((mine["status"] == "completed").sum())
        acc = pct(done["final_test_acc"], res) if completed else DASH
        if completed and did_not_learn(done["final_test_acc"], level):
            acc += " did not learn"
        lrs = "/".join(f"{x:g}" for x in sorted(set(mine["lr"])))
        f = fractions.get(label, math.nan)
        rows.append(
            {
                "model": label,
                "lr": lrs,
                "completed": f"{completed}/{len(mine)}",
                "final test acc (%)": acc,
                f"epochs to {DASH if t is None else threshold_label(t)}": _time_cell(mine, t, "epochs"),
                "train s to it": _time_cell(mine, t, "seconds"),
                "clipped steps": DASH if not math.isfinite(f) else f"{100 * f:.0f}%",
            }
        )
    return pd.DataFrame(rows)


def _pair_text(row) -> str:
    if not row.test:
        return f"{row.model_a} vs {row.model_b}: not tested ({row.note or 'too few seeds'})"
    if row.verdict == RESOLVED:
        outcome = f"{row.model_a if row.difference > 0 else row.model_b} higher"
    else:
        outcome = "not resolved"
    flag = " [rates differ]" if "rates differ" in str(row.note) else ""
    return f"{row.model_a} vs {row.model_b} {row.difference:+.2f} pts, {outcome} (Holm {p_text(row.p_adjusted)}){flag}"


def verdict_lines(study: Study) -> list[str]:
    claims = study.claims
    if claims is None or claims.empty:
        return ["- No claim could be tested (too few groups or seeds)."]
    accuracy = claims[claims["family"] == ACCURACY]
    lines = []
    for arm in sorted(accuracy["arm"].unique(), key=lambda a: (a != "registry default rates", a)):
        rows = accuracy[accuracy["arm"] == arm]
        for kind in (RESIDUAL, BN, RESNET_VGG):
            mine = rows[rows["claim"].str.startswith(QUESTION[kind] + ":")]
            if mine.empty:
                continue
            if kind == RESNET_VGG:
                for resnet, group in mine.groupby("model_a", sort=True):
                    texts = [_pair_text(r).replace(f"{resnet} vs ", "", 1) for r in group.itertuples()]
                    lines.append(f"- {QUESTION[kind]} [{arm}], {resnet} against: {'; '.join(texts)}.")
            else:
                lines.append(f"- {QUESTION[kind]} [{arm}]: {'; '.join(_pair_text(r) for r in mine.itertuples())}.")
    return lines


def summary_section(study: Study) -> str:
    t, level, claims = study.main_threshold, chance(study), study.claims
    datasets = ", ".join(sorted({str(d) for d in study.counted["dataset"]}))
    classes = "?" if level is None else f"{round(1 / level)}"
    head = (
        f"Data: {datasets} ({classes} classes, chance {DASH if level is None else f'{100 * level:.1f}%'}); "
        f"{len(study.kinds)} groups, {len(study.chosen)} runs (one per group and seed). Main threshold: "
        f"{DASH if t is None else threshold_label(t)} test accuracy (the highest that most groups reach)."
    )
    n_claims = 0 if claims is None else len(claims)
    resolved = 0 if claims is None else int((claims["verdict"] == RESOLVED).sum())
    parts = [
        head,
        *clipping_warning(study),
        md(model_rows(study)),
        f"Verdicts on final test accuracy (Holm-adjusted within the accuracy family; {resolved} of all "
        f"{n_claims} rows of REPORT-claims.csv resolved; details in the discussion):",
        "\n".join(verdict_lines(study)),
    ]
    return "\n\n".join(parts)
