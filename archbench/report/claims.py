"""Claims as data: every test the report runs, once, as one row of REPORT-claims.csv.

A claim compares two groups of runs (or one group against a reference value) on one metric. Claims come
in families, and the p-values of a family are adjusted together with Holm's step-down procedure
(`stats.holm`); a claim is "resolved" only when its adjusted p < ALPHA. The families:

- accuracy: final-epoch test accuracy of every residual twin (ResNet against plain at each depth), BN twin
  and ResNet-VGG pair, within one learning-rate arm;
- depth: the deeper net of a depth group against the shallower one (plain and residual apart);
- time-to-threshold: epochs to the main threshold for the same pairs, a seed that never reached it
  (diverged or too slow) entering at the epoch budget + 1, the least its infinite time could be;
- gradient-step0 and gradient-early: per model, the sign of log10(first/last ‖g‖/‖w‖) (below 0: the early
  layers get smaller relative updates than the last, towards vanishing; above: towards exploding), and
  per residual or BN twin the difference of |log10 ratio| (which of the two is further from balance).
  Step 0 does not depend on the learning rate; the early window does, so there only pairs trained at the
  same rate are compared, and a pair at different rates is listed as not compared.

Nothing is tested twice: groups whose runs are identical to another's are collapsed before claims are
formed (`study.identical`), and each pair appears once per family and arm.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from archbench.report.comparisons import BN, RESIDUAL, RESNET_VGG, by_seed, pairs
from archbench.report.depth import depth_groups
from archbench.report.gradient_measures import EARLY, STEP0
from archbench.report.stats import ALPHA, Comparison, compare, holm, one_sample
from archbench.report.thresholds import epochs_to

if TYPE_CHECKING:
    from archbench.report.study import Study

ACCURACY, DEPTH, TIME = "accuracy", "depth", "time-to-threshold"
GRADIENT = {STEP0: "gradient-step0", EARLY: "gradient-early"}
FAMILIES = (ACCURACY, DEPTH, TIME, GRADIENT[STEP0], GRADIENT[EARLY])
COLUMNS = (
    "family",
    "claim",
    "arm",
    "model_a",
    "model_b",
    "metric",
    "n_a",
    "n_b",
    "test",
    "statistic",
    "p",
    "p_adjusted",
    "verdict",
    "mean_a",
    "mean_b",
    "difference",
    "constant_difference",
    "note",
)
RESOLVED, NOT_RESOLVED = "resolved", "not resolved"
VANISHING, EXPLODING, BALANCED = "vanishing", "exploding", "balanced"
FAR = 1.0  # |log10 ratio| at or beyond which the imbalance is named vanishing or exploding (a factor of 10)
QUESTION = {RESIDUAL: "ResNet vs plain", BN: "BN vs no BN", RESNET_VGG: "ResNet vs VGG"}


def direction(log_ratio: float) -> str:
    """The name of a mean log10(first/last ‖g‖/‖w‖): vanishing (≤ -FAR), exploding (≥ FAR), else balanced."""
    if not math.isfinite(log_ratio):
        return "not measured"
    return VANISHING if log_ratio <= -FAR else EXPLODING if log_ratio >= FAR else BALANCED


def _row(family, claim, arm, a, b, metric, c: Comparison, note: str = "") -> dict:
    return {
        "family": family,
        "claim": claim,
        "arm": arm,
        "model_a": a,
        "model_b": b,
        "metric": metric,
        "n_a": c.n_a,
        "n_b": c.n_b,
        "test": c.test or "",
        "statistic": c.statistic,
        "p": c.p,
        "mean_a": c.mean_a,
        "mean_b": c.mean_b,
        "difference": c.difference,
        "constant_difference": math.nan if c.constant is None else c.constant,
        "note": note,
    }


def _untested(family, claim, arm, a, b, metric, note: str) -> dict:
    c = Comparison(math.nan, math.nan, 0, 0, None, math.nan, math.nan, math.nan)
    return _row(family, claim, arm, a, b, metric, c, note)


def _rates(table: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    return {label: tuple(sorted(set(rows["lr"]))) for label, rows in table.groupby("label", sort=True)}


def _rate_text(rates: tuple[float, ...]) -> str:
    return "/".join(f"{r:g}" for r in rates)


def _rate_note(rates: dict, a: str, b: str) -> str:
    if rates.get(a) == rates.get(b):
        return ""
    return f"rates differ: {a} at lr {_rate_text(rates.get(a, ()))}, {b} at lr {_rate_text(rates.get(b, ()))}"


def _censored(values: dict[int, float], budget: dict[int, float]) -> dict[int, float]:
    return {s: (budget[s] + 1 if math.isinf(v) else v) for s, v in values.items()}


def _pair_claims(study: Study, chosen: pd.DataFrame, threshold: float | None) -> list[dict]:
    counted = study.counted
    kinds = study.kinds
    rates = _rates(counted)
    rows = []
    for pair in pairs(kinds):
        note = _rate_note(rates, pair.a, pair.b)
        claim = f"{QUESTION[pair.kind]}: {pair.a} vs {pair.b}"
        c = compare(_acc(counted, pair.a), _acc(counted, pair.b))
        rows.append(_row(ACCURACY, claim, pair.arm, pair.a, pair.b, "final test accuracy (%)", c, note))
        if threshold is not None:
            a, b = chosen[chosen["label"] == pair.a], chosen[chosen["label"] == pair.b]
            ea, eb = epochs_to(a, threshold), epochs_to(b, threshold)
            budget = {int(r.seed): float(r.epochs_planned) for r in pd.concat([a, b]).itertuples()}
            c = compare(_censored(ea, budget), _censored(eb, budget))
            never = [f"{m} {sum(math.isinf(v) for v in e.values())}/{len(e)}" for m, e in ((pair.a, ea), (pair.b, eb))]
            reach = "never reached (as budget + 1): " + ", ".join(never)
            metric = f"epochs to {100 * threshold:g}% test accuracy"
            rows.append(
                _row(TIME, claim, pair.arm, pair.a, pair.b, metric, c, "; ".join(x for x in (note, reach) if x))
            )
    return rows


def _acc(counted: pd.DataFrame, label: str) -> dict[int, float]:
    return by_seed(counted[counted["label"] == label], "final_test_acc", 100.0)


def _depth_claims(study: Study) -> list[dict]:
    counted, rows = study.counted, []
    rates = _rates(counted)
    for group in depth_groups(study.kinds):
        for shallow, deep in zip(group.depths, group.depths[1:]):
            for residual in (False, True):
                for a in group.cells.get((deep, residual), []):
                    for b in group.cells.get((shallow, residual), []):
                        kind = "residual" if residual else "plain"
                        claim = f"depth, {kind} {shallow} to {deep} layers: {a} vs {b}"
                        c = compare(_acc(counted, a), _acc(counted, b))
                        rows.append(
                            _row(DEPTH, claim, group.arm, a, b, "final test accuracy (%)", c, _rate_note(rates, a, b))
                        )
    return rows


def log_ratios(per_run: pd.DataFrame, label: str, window: str) -> dict[int, float]:
    """{seed: log10(first/last ‖g‖/‖w‖)} of one group at step 0 or over the early window (finite only)."""
    rows = per_run[per_run["label"] == label]
    out = {}
    for seed, ratio in zip(rows["seed"], rows[f"ratio_{window}"]):
        if ratio is not None and np.isfinite(ratio) and ratio > 0:
            out[int(seed)] = math.log10(ratio)
    return out


def _gradient_claims(study: Study) -> list[dict]:
    per_run, kinds = study.gradients.per_run, study.kinds
    rates = _rates(study.counted)
    rows = []
    if per_run.empty:
        return rows
    for window in (STEP0, EARLY):
        family = GRADIENT[window]
        metric = "log10(first/last ‖g‖/‖w‖)"
        for label in sorted(kinds.index):
            values = log_ratios(per_run, label, window)
            c = one_sample(values)
            at = "" if window == STEP0 else f" at lr {_rate_text(rates.get(label, ()))}"
            claim = f"{label}: gradients {direction(c.mean_a)} ({'step 0' if window == STEP0 else 'early window'}{at})"
            rows.append(_row(family, claim, kinds.loc[label, "arm"], label, "", metric, c))
        for pair in pairs(kinds):
            if pair.kind == RESNET_VGG:
                continue
            claim = f"{QUESTION[pair.kind]}, distance from balance: {pair.a} vs {pair.b}"
            abs_metric = "|log10(first/last ‖g‖/‖w‖)|"
            note = _rate_note(rates, pair.a, pair.b) if window == EARLY else ""  # step 0 precedes any update
            if note:
                rows.append(_untested(family, claim, pair.arm, pair.a, pair.b, abs_metric, f"not compared: {note}"))
                continue
            a = {s: abs(v) for s, v in log_ratios(per_run, pair.a, window).items()}
            b = {s: abs(v) for s, v in log_ratios(per_run, pair.b, window).items()}
            rows.append(_row(family, claim, pair.arm, pair.a, pair.b, abs_metric, compare(a, b), note))
    return rows


def verdict_of(test: str, p_adjusted: float) -> str:
    if not test:
        return "not tested"
    return RESOLVED if p_adjusted < ALPHA else NOT_RESOLVED


def build_claims(study: Study) -> pd.DataFrame:
    """Every claim of the study, Holm-adjusted within its family, in a fixed order."""
    threshold = study.main_threshold
    chosen = study.runs[study.runs["selected"] & study.runs["label"].isin(study.kinds.index)]
    rows = _pair_claims(study, chosen, threshold) + _depth_claims(study) + _gradient_claims(study)
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted", "verdict")])
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["family"] = pd.Categorical(frame["family"], FAMILIES, ordered=True)
    frame = frame.sort_values(["family", "arm", "claim"], kind="stable", ignore_index=True)
    frame["family"] = frame["family"].astype(str)
    frame["p_adjusted"] = math.nan
    for _, rows_of in frame.groupby("family", sort=False):
        frame.loc[rows_of.index, "p_adjusted"] = holm(rows_of["p"])
    frame["verdict"] = [verdict_of(t, p) for t, p in zip(frame["test"], frame["p_adjusted"])]
    return frame[list(COLUMNS)]
