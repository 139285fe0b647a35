"""The report's first screen: per model accuracy ± interval, time to the main threshold, run status and
clipping, then the Holm-adjusted verdicts of the questions the study asks (ResNet against plain at each
depth, BN against no BN, ResNet against VGG), each a row of REPORT-claims.csv. At most ~30 lines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from archbench.report.claims import ACCURACY, BN, FAMILIES, QUESTION, RESIDUAL, RESNET_VGG, RESOLVED
from archbench.report.discussion import constant_text, named_direction, outcome
from archbench.report.stats import t_interval
from archbench.report.study import SHARED, Study
from archbench.report.text import DASH, accuracy_resolution, join, md, never_cell, p_text, pct, threshold_label
from archbench.report.thresholds import epochs_to

MOST = 0.5  # clipping that bound on more than this fraction of a model's steps is warned about


def chance(study: Study) -> float | None:
    """1 / classes of the counted runs' data (None when they disagree or do not say)."""
    classes = {int(c) for c in study.counted["num_classes"].dropna()}
    return 1.0 / classes.pop() if len(classes) == 1 else None


NEAR_CHANCE = 2.0  # an accuracy interval wholly below this many times chance is marked "did not learn"
CHANCE_RULE = (
    f"A model whose final test accuracy interval lies wholly below {NEAR_CHANCE:g} × chance (1 / classes) is "
    'marked "did not learn"; one whose interval includes chance (and reaches higher) "not distinguishable from '
    'chance". A single seed (no interval) is marked "did not learn" when below that bound.'
)


def chance_flag(values, chance_level: float | None) -> str:
    """`CHANCE_RULE` on the final test accuracies (fractions) of one model: "did not learn", "not
    distinguishable from chance (c%)" or ""."""
    interval = t_interval(values)
    if chance_level is None or interval.n == 0:
        return ""
    if interval.n == 1 or not math.isfinite(interval.half_width):
        return "did not learn" if interval.mean < NEAR_CHANCE * chance_level else ""
    low, high = interval.mean - interval.half_width, interval.mean + interval.half_width
    if high < NEAR_CHANCE * chance_level:
        return "did not learn"
    if low <= chance_level:
        return f"not distinguishable from chance ({100 * chance_level:.3g}%)"
    return ""


def clip_fractions(study: Study) -> dict[str, float]:
    """Per group, the mean over its chosen runs (diverged ones too: their steps were taken) of the fraction
    of steps whose gradient clipping bound."""
    return dict(study.chosen.groupby("label", sort=True)["clip_fraction"].mean())


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
    """Mean time to `t` over the seeds; ∞ (reached/total) when a seed never reached it."""
    if t is None:
        return DASH
    values = list(epochs_to(rows, t, f"{key}_to_threshold").values())
    reached = [v for v in values if math.isfinite(v)]
    if len(reached) == len(values) and values:
        return f"{np.mean(values):.1f}"
    return never_cell(len(reached), len(values))


def _of_runs(values: pd.Series) -> str:
    """ " (k/n)" when only k of the n runs recorded the value (empty when all did)."""
    k = int(values.notna().sum())
    return "" if k == len(values) else f" ({k}/{len(values)})"


def model_rows(study: Study) -> pd.DataFrame:
    counted, t = study.counted, study.main_threshold
    level, res = chance(study), accuracy_resolution(counted)

    def row(label: str, mine: pd.DataFrame) -> dict:
        done = counted[counted["label"] == label]
        completed = int((mine["status"] == "completed").sum())
        acc = pct(done["final_test_acc"], res) if completed else DASH
        flag = chance_flag(done["final_test_acc"], level) if completed else ""
        f = mine["clip_fraction"].mean()  # as `clip_fractions` gives it
        return {
            "lr": "/".join(f"{x:g}" for x in sorted(set(mine["lr"]))),
            "completed": f"{completed}/{len(mine)}",
            "final test acc (%)": f"{acc} {flag}" if flag else acc,
            f"epochs to {DASH if t is None else threshold_label(t)}": _time_cell(mine, t, "epochs"),
            "train s to it": _time_cell(mine, t, "seconds"),
            "clipped steps": DASH if not math.isfinite(f) else f"{100 * f:.0f}%{_of_runs(mine['clip_fraction'])}",
        }

    return pd.DataFrame([{"model": label, **row(label, mine)} for label, mine in study.chosen.groupby("label")])


def _pair_text(row) -> str:
    if not row.test:
        why = "; ".join(x for x in (f"n = {row.n_a} vs {row.n_b}" if row.n_a or row.n_b else "", row.note) if x)
        return f"{row.model_a} vs {row.model_b}: not tested ({why or 'too few seeds'})"
    said = outcome(row).removeprefix(f"{RESOLVED}: ")  # "<model> higher", or "not resolved"
    flag = " [rates differ]" if "rates differ" in str(row.note) else ""
    constant = f", {constant_text(row)}" if constant_text(row) else ""
    return (
        f"{row.model_a} vs {row.model_b} {row.difference:+.2f} pts{constant}, {said} "
        f"(Holm {p_text(row.p_adjusted)}){flag}"
    )


def accuracy_lines(claims: pd.DataFrame) -> list[str]:
    """The accuracy family's verdicts, one line per question and arm."""
    accuracy = claims[claims["family"] == ACCURACY]
    lines = []
    for arm in sorted(accuracy["arm"].unique(), key=lambda a: (a != SHARED, a)):
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


def _resolved_text(row, arms: bool) -> str:
    arm = f" [{row.arm}]" if arms else ""
    said = outcome(row).removeprefix(f"{RESOLVED}: ")
    if row.model_b:
        return f"{row.model_a} vs {row.model_b}{arm}: {said} (Holm {p_text(row.p_adjusted)})"
    return f"{row.model_a}{arm}: {said}, {named_direction(row.claim)} by its interval (Holm {p_text(row.p_adjusted)})"


def family_line(family: str, rows: pd.DataFrame) -> str:
    """One family: how many of its rows resolved, and each resolved verdict."""
    resolved = rows[rows["verdict"] == RESOLVED]
    arms = rows["arm"].nunique() > 1
    head = f"- **{family}**: {len(resolved)} of {len(rows)} rows resolved"
    texts = [] if family == ACCURACY else [_resolved_text(r, arms) for r in resolved.itertuples()]  # lines below
    return head + (": " + "; ".join(texts) + "." if texts else ".")


def verdict_lines(study: Study) -> list[str]:
    claims = study.claims
    if claims.empty:
        return ["- No claim could be tested (too few groups or seeds)."]
    lines = []
    for family in FAMILIES:
        rows = claims[claims["family"] == family]
        if rows.empty:
            continue
        lines.append(family_line(family, rows))
        if family == ACCURACY:
            lines += [f"  - {line[2:]}" for line in accuracy_lines(claims)]
    return lines


def summary_section(study: Study) -> str:
    t, level = study.main_threshold, chance(study)
    datasets = ", ".join(sorted({str(d) for d in study.counted["dataset"]}))
    classes = "?" if level is None else f"{round(1 / level)}"
    head = (
        f"Data: {datasets} ({classes} classes, chance {DASH if level is None else f'{100 * level:.1f}%'}); "
        f"{len(study.kinds)} groups, {len(study.chosen)} runs (one per group and seed). Main threshold: "
        f"{DASH if t is None else threshold_label(t)} test accuracy (the highest that most groups reach)."
    )
    parts = [
        head,
        md(model_rows(study)),
        "Verdicts, family by family (Holm-adjusted within each family of REPORT-claims.csv; details in the "
        "discussion):",
        "\n".join(verdict_lines(study)).strip(),
        *clipping_warning(study),
    ]
    return "\n\n".join(parts)
