"""Claims as data: every test the report runs, once, as one row of REPORT-claims.csv.

A claim compares two groups of runs (or one group against a reference value) on one metric. Claims come
in families, and the p-values of a family are adjusted together with Holm's step-down procedure
(`stats.holm`); a claim is "resolved" only when its adjusted p < ALPHA. The families:

- accuracy: final-epoch test accuracy of every residual twin (ResNet against plain at each depth), BN twin
  and ResNet-VGG pair, within one learning-rate arm;
- depth: the deeper net of a depth group against the shallower one (plain and residual apart);
- time-to-threshold: epochs to the main threshold for the same pairs, a seed that never reached it
  (diverged or too slow) infinite, ranked above every finite time by an exact rank test
  (`stats.compare_times`), never replaced by a number;
- gradient-step0 and gradient-early: per model, the sign of log10(first/last ‖g‖/‖w‖) tested against 0
  (below 0: the early layers get smaller relative updates than the last, towards vanishing; above: towards
  exploding), named by its 95% interval (`direction`), and per residual or BN twin the difference of
  |log10 ratio| (which of the two is further from balance). Step 0 precedes any update and a seed fixes the
  initialisation, so it does not depend on the learning rate or the arm: it is tested once per
  architecture. The early window does depend on the rate, so there only pairs trained at the same rate
  are compared, and a pair at different rates is listed as not compared.

Nothing is tested twice: pairs are formed over every group, a group whose runs are identical to another's
(`study.identical`) standing in with its twin's runs, and a pair is skipped only when both its sides stand
for a pair already tested.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from archbench.report.comparisons import BN, RESIDUAL, RESNET_VGG, by_seed, pairs
from archbench.report.depth import depth_groups
from archbench.report.gradient_measures import EARLY, STEP0
from archbench.report.stats import ALPHA, Comparison, compare, compare_times, holm, one_sample, t_interval
from archbench.report.study import SHARED, Study, traits
from archbench.report.thresholds import epochs_to

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
    "of_a",
    "of_b",
)
RESOLVED, NOT_RESOLVED = "resolved", "not resolved"
VANISHING, EXPLODING, BALANCED = "vanishing", "exploding", "balanced"
UNDETERMINED = "undetermined"
FAR = 1.0  # |log10 ratio| at or beyond which the imbalance is named vanishing or exploding (a factor of 10)
QUESTION = {RESIDUAL: "ResNet vs plain", BN: "BN vs no BN", RESNET_VGG: "ResNet vs VGG"}
ALL_ARMS = "all arms (step 0)"


def direction(log_ratios) -> str:
    """The name of the 95% interval of the mean log10(first/last ‖g‖/‖w‖) over seeds: vanishing when the
    whole interval is at or below -FAR, exploding when at or above FAR, balanced when inside (-FAR, FAR),
    else undetermined (one seed has no interval: undetermined)."""
    interval = t_interval(log_ratios)
    if interval.n == 0:
        return "not measured"
    if not math.isfinite(interval.half_width):
        return UNDETERMINED
    low, high = interval.mean - interval.half_width, interval.mean + interval.half_width
    if high <= -FAR:
        return VANISHING
    if low >= FAR:
        return EXPLODING
    return BALANCED if -FAR < low and high < FAR else UNDETERMINED


def _row(family, claim, arm, a, b, metric, c: Comparison, note: str = "", of=("", "")) -> dict:
    """One claims row; `of` says per side how many seeds of how many entered ("k/n": completed, reached)."""
    dropped = [f"{m} seed(s) {', '.join(map(str, d))}" for m, d in zip((a, b), c.dropped) if d]
    if dropped:
        note = "; ".join(x for x in (note, f"paired on the shared seeds, dropped: {', '.join(dropped)}") if x)
    finite_means = math.isfinite(c.mean_a) and math.isfinite(c.mean_b)
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
        "difference": c.difference if finite_means or not b else math.nan,  # no number beside an ∞
        "constant_difference": math.nan if c.constant is None else c.constant,
        "note": note,
        "of_a": of[0],
        "of_b": of[1] if b else "",
    }


def _untested(family, claim, arm, a, b, metric, note: str) -> dict:
    c = Comparison(math.nan, math.nan, 0, 0, None, math.nan)
    return _row(family, claim, arm, a, b, metric, c, note)


def _rates(table: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    return {label: tuple(sorted(set(rows["lr"]))) for label, rows in table.groupby("label", sort=True)}


def _rate_text(rates: tuple[float, ...]) -> str:
    return "/".join(f"{r:g}" for r in rates)


def _rate_note(rates: dict, a: str, b: str) -> str:
    if rates.get(a) == rates.get(b):
        return ""
    return f"rates differ: {a} at lr {_rate_text(rates.get(a, ()))}, {b} at lr {_rate_text(rates.get(b, ()))}"


def _selected(study: Study) -> pd.DataFrame:
    """The chosen run per group and seed of every group, identical ones included."""
    return study.runs[study.runs["selected"]]


def _all_kinds(study: Study) -> pd.DataFrame:
    return traits(_selected(study))


def _stand_in(study: Study, label: str) -> str:
    """The group whose runs stand for `label`: itself, or the group its runs are identical to."""
    return study.identical.get(label, label)


def _stand_in_note(study: Study, *labels: str) -> str:
    same = [f"{x} = {study.identical[x]} (identical runs)" for x in labels if x in study.identical]
    return "; ".join(same)


def _join(*notes: str) -> str:
    return "; ".join(x for x in notes if x)


def tested_pairs(study: Study, kinds: pd.DataFrame) -> list:
    """Every pair of `pairs(kinds)` over all groups, identical groups standing in with their twin's runs; a
    pair whose two sides both stand for a pair already listed is skipped (pairs of real groups first)."""
    ordered = sorted(pairs(kinds), key=lambda pr: (pr.a in study.identical) + (pr.b in study.identical))
    seen, out = set(), []
    for pair in ordered:
        key = (pair.kind, _stand_in(study, pair.a), _stand_in(study, pair.b))
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def _of(values: dict[int, float], total: int) -> str:
    return f"{sum(math.isfinite(v) for v in values.values())}/{total}"


def _pair_claims(study: Study, threshold: float | None) -> list[dict]:
    counted, selected = study.counted, _selected(study)
    rates = _rates(selected)
    rows = []
    for pair in tested_pairs(study, _all_kinds(study)):
        sa, sb = _stand_in(study, pair.a), _stand_in(study, pair.b)
        note = _join(_rate_note(rates, pair.a, pair.b), _stand_in_note(study, pair.a, pair.b))
        claim = f"{QUESTION[pair.kind]}: {pair.a} vs {pair.b}"
        a, b = selected[selected["label"] == sa], selected[selected["label"] == sb]
        acc_a, acc_b = _acc(counted, sa), _acc(counted, sb)
        of = (f"{len(acc_a)}/{len(a)}", f"{len(acc_b)}/{len(b)}")  # completed / chosen
        c = compare(acc_a, acc_b)
        rows.append(_row(ACCURACY, claim, pair.arm, pair.a, pair.b, "final test accuracy (%)", c, note, of))
        if threshold is not None:
            ea, eb = epochs_to(a, threshold), epochs_to(b, threshold)
            c = compare_times(ea, eb)
            metric = f"epochs to {100 * threshold:g}% test accuracy"
            of = (_of(ea, len(ea)), _of(eb, len(eb)))  # reached / chosen
            reach = f"reached in {pair.a} {of[0]}, {pair.b} {of[1]} seeds; never reached = ∞"
            rows.append(_row(TIME, claim, pair.arm, pair.a, pair.b, metric, c, _join(note, reach), of))
    return rows


def _acc(counted: pd.DataFrame, label: str) -> dict[int, float]:
    return by_seed(counted[counted["label"] == label], "final_test_acc", 100.0)


def _depth_claims(study: Study) -> list[dict]:
    counted, selected, rows, seen = study.counted, _selected(study), [], set()
    rates = _rates(selected)
    for group in sorted(depth_groups(_all_kinds(study)), key=lambda g: g.arm != SHARED):
        for shallow, deep in zip(group.depths, group.depths[1:]):
            for residual in (False, True):
                for a in group.cells.get((deep, residual), []):
                    for b in group.cells.get((shallow, residual), []):
                        sa, sb = _stand_in(study, a), _stand_in(study, b)
                        if (sa, sb) in seen:
                            continue
                        seen.add((sa, sb))
                        kind = "residual" if residual else "plain"
                        claim = f"depth, {kind} {shallow} to {deep} layers: {a} vs {b}"
                        acc_a, acc_b = _acc(counted, sa), _acc(counted, sb)
                        n_a, n_b = (int((selected["label"] == x).sum()) for x in (sa, sb))
                        of = (f"{len(acc_a)}/{n_a}", f"{len(acc_b)}/{n_b}")
                        note = _join(_rate_note(rates, a, b), _stand_in_note(study, a, b))
                        c = compare(acc_a, acc_b)
                        rows.append(_row(DEPTH, claim, group.arm, a, b, "final test accuracy (%)", c, note, of))
    return rows


def log_ratios(per_run: pd.DataFrame, label: str, window: str) -> dict[int, float]:
    """{seed: log10(first/last ‖g‖/‖w‖)} of one group at step 0 or over the early window (finite only)."""
    rows = per_run[per_run["label"] == label]
    out = {}
    for seed, ratio in zip(rows["seed"], rows[f"ratio_{window}"]):
        if ratio is not None and np.isfinite(ratio) and ratio > 0:
            out[int(seed)] = math.log10(ratio)
    return out


def _step0_label(kinds: pd.DataFrame) -> dict[str, str]:
    """Per architecture (`name_label`), the one group whose step 0 is tested: the registry-default arm's
    when there is one (step 0 precedes any update, so every arm's step 0 is the same per seed)."""
    out: dict[str, str] = {}
    for label in sorted(kinds.index, key=lambda x: (kinds.loc[x, "arm"] != SHARED, x)):
        out.setdefault(kinds.loc[label, "name_label"], label)
    return out


def _gradient_claims(study: Study) -> list[dict]:
    per_run, kinds = study.gradients.per_run, study.kinds
    rates = _rates(_selected(study))
    rows = []
    if per_run.empty:
        return rows
    metric, abs_metric = "log10(first/last ‖g‖/‖w‖)", "|log10(first/last ‖g‖/‖w‖)|"
    step0 = _step0_label(kinds)
    for window in (STEP0, EARLY):
        family = GRADIENT[window]
        labels = sorted(step0.values()) if window == STEP0 else sorted(kinds.index)
        for label in labels:
            values = log_ratios(per_run, label, window)
            c = one_sample(values)
            name = kinds.loc[label, "name_label"] if window == STEP0 else label
            at = "step 0" if window == STEP0 else f"early window, lr {_rate_text(rates.get(label, ()))}"
            sign = "below" if c.mean_a < 0 else "above"
            claim = (
                f"{name}: log10 ratio {sign} 0, gradients {direction(list(values.values()))} by its 95% interval ({at})"
            )
            arm = ALL_ARMS if window == STEP0 else kinds.loc[label, "arm"]
            of = (f"{len(values)}/{int((_selected(study)['label'] == label).sum())}", "")
            rows.append(_row(family, claim, arm, name if window == STEP0 else label, "", metric, c, "", of))
        seen = set()
        for pair in tested_pairs(study, _all_kinds(study)):
            if pair.kind == RESNET_VGG:
                continue
            sa, sb = _stand_in(study, pair.a), _stand_in(study, pair.b)
            if window == STEP0:  # one test per pair of architectures, whatever the arm
                names = (kinds.loc[sa, "name_label"], kinds.loc[sb, "name_label"])
                if names in seen:
                    continue
                seen.add(names)
                sa, sb = step0.get(names[0], sa), step0.get(names[1], sb)
                a_name, b_name, arm, note = *names, ALL_ARMS, ""
            else:
                a_name, b_name, arm = pair.a, pair.b, pair.arm
                note = _rate_note(rates, pair.a, pair.b)
                if note:
                    claim = f"{QUESTION[pair.kind]}, distance from balance: {a_name} vs {b_name}"
                    rows.append(_untested(family, claim, arm, a_name, b_name, abs_metric, f"not compared: {note}"))
                    continue
                note = _stand_in_note(study, pair.a, pair.b)
            claim = f"{QUESTION[pair.kind]}, distance from balance: {a_name} vs {b_name}"
            a = {s: abs(v) for s, v in log_ratios(per_run, sa, window).items()}
            b = {s: abs(v) for s, v in log_ratios(per_run, sb, window).items()}
            rows.append(_row(family, claim, arm, a_name, b_name, abs_metric, compare(a, b), note))
    return rows


def verdict_of(test: str, p_adjusted: float) -> str:
    if not test:
        return "not tested"
    return RESOLVED if p_adjusted < ALPHA else NOT_RESOLVED


def build_claims(study: Study) -> pd.DataFrame:
    """Every claim of the study, Holm-adjusted within its family, in a fixed order."""
    rows = _pair_claims(study, study.main_threshold) + _depth_claims(study) + _gradient_claims(study)
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
