"""Claims as data: every test the report runs, once, as one row of REPORT-claims.csv, Holm-adjusted within
its family (`stats.holm`), and the pairs they compare (residual twins, BN twins, ResNet against VGG), found by
the models' traits, never by their names. The families and pairs are in docs/report.md."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from archbench.report.depth import depth_groups
from archbench.report.gradient_measures import EARLY, STEP0
from archbench.report.stats import ALPHA, Comparison, compare, compare_times, holm, one_sample, t_interval
from archbench.report.study import SHARED, Study, traits
from archbench.report.thresholds import epochs_to

RESIDUAL, BN, RESNET_VGG = "residual connections", "BN", "ResNet against VGG"


class Pair(NamedTuple):
    """Two labels compared: `a` has the feature (or is the ResNet), `b` lacks it (or is the VGG)."""

    kind: str  # RESIDUAL, BN or RESNET_VGG
    a: str
    b: str
    arm: str


def _twin(kinds: pd.DataFrame, x: str, y: str, differ: str, same: str) -> bool:
    kx, ky = kinds.loc[x], kinds.loc[y]
    alike = all(kx[key] == ky[key] for key in ("builder", "depth", "arm", "fingerprint", same))
    return alike and bool(kx[differ]) != bool(ky[differ])


def pairs(kinds: pd.DataFrame) -> list[Pair]:
    """Every tested pair among the labels of `kinds` (see `study.traits`), in a fixed order."""
    labels = sorted(kinds.index)
    out = []
    for kind, differ, same in ((RESIDUAL, "residual", "batch_norm"), (BN, "batch_norm", "residual")):
        for i, x in enumerate(labels):
            for y in labels[i + 1 :]:
                if _twin(kinds, x, y, differ, same):
                    with_, without = (x, y) if kinds.loc[x, differ] else (y, x)
                    out.append(Pair(kind, with_, without, kinds.loc[x, "arm"]))
    # the records carry no family trait: a ResNet or a VGG is read from the registry builder
    resnets = [m for m in labels if kinds.loc[m, "builder"] == "resnet" and bool(kinds.loc[m, "residual"])]
    vggs = [m for m in labels if kinds.loc[m, "builder"] == "vgg"]
    out += [
        Pair(RESNET_VGG, r, v, kinds.loc[r, "arm"])
        for r in resnets
        for v in vggs
        if kinds.loc[r, ["arm", "fingerprint"]].equals(kinds.loc[v, ["arm", "fingerprint"]])
    ]
    return out


ACCURACY, DEPTH, TIME = "accuracy", "depth", "time-to-threshold"
GRADIENT = {STEP0: "gradient-step0", EARLY: "gradient-early"}
FAMILIES = (ACCURACY, DEPTH, TIME, GRADIENT[STEP0], GRADIENT[EARLY])
COLUMNS = tuple(
    "family claim arm model_a model_b metric n_a n_b test statistic p p_adjusted verdict mean_a mean_b "
    "difference constant_difference note of_a of_b".split()
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


def _stand_in(study: Study, label: str) -> str:
    """The group whose runs stand for `label`: itself, or the group its runs are identical to."""
    return study.identical.get(label, label)


def _stand_in_note(study: Study, *labels: str) -> str:
    return "; ".join(f"{x} = {study.identical[x]} (identical runs)" for x in labels if x in study.identical)


def _join(*notes: str) -> str:
    return "; ".join(x for x in notes if x)


def tested_pairs(study: Study) -> list:
    """Every pair of `pairs` over all groups, identical groups standing in with their twin's runs; a pair
    whose two sides both stand for a pair already listed is skipped (pairs of real groups first)."""
    ordered = sorted(
        pairs(traits(_selected(study))), key=lambda pr: (pr.a in study.identical) + (pr.b in study.identical)
    )
    seen, out = set(), []
    for pair in ordered:
        key = (pair.kind, _stand_in(study, pair.a), _stand_in(study, pair.b))
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def _of(values: dict[int, float]) -> str:
    """How many of the seeds reached it: "k/n"."""
    return f"{sum(math.isfinite(v) for v in values.values())}/{len(values)}"


def _accuracy_row(study: Study, family: str, claim: str, arm: str, a: str, b: str, rates: dict) -> dict:
    """Groups `a` and `b` compared on final test accuracy, each by its stand-in's runs."""
    sa, sb = _stand_in(study, a), _stand_in(study, b)
    acc_a, acc_b = _acc(study.counted, sa), _acc(study.counted, sb)
    chosen = _selected(study)["label"]
    of = (f"{len(acc_a)}/{(chosen == sa).sum()}", f"{len(acc_b)}/{(chosen == sb).sum()}")  # completed / chosen
    note = _join(_rate_note(rates, a, b), _stand_in_note(study, a, b))
    return _row(family, claim, arm, a, b, "final test accuracy (%)", compare(acc_a, acc_b), note, of)


def _pair_claims(study: Study, threshold: float | None) -> list[dict]:
    selected = _selected(study)
    rates = _rates(selected)
    rows = []
    for pair in tested_pairs(study):
        claim = f"{QUESTION[pair.kind]}: {pair.a} vs {pair.b}"
        rows.append(_accuracy_row(study, ACCURACY, claim, pair.arm, pair.a, pair.b, rates))
        if threshold is not None:
            ea, eb = (
                epochs_to(selected[selected["label"] == _stand_in(study, x)], threshold) for x in (pair.a, pair.b)
            )
            of = (_of(ea), _of(eb))  # reached / chosen
            reach = f"reached in {pair.a} {of[0]}, {pair.b} {of[1]} seeds; never reached = ∞"
            note = _join(_rate_note(rates, pair.a, pair.b), _stand_in_note(study, pair.a, pair.b), reach)
            metric = f"epochs to {100 * threshold:g}% test accuracy"
            rows.append(_row(TIME, claim, pair.arm, pair.a, pair.b, metric, compare_times(ea, eb), note, of))
    return rows


def _acc(counted: pd.DataFrame, label: str) -> dict[int, float]:
    rows = counted[counted["label"] == label]
    return {int(seed): 100.0 * float(acc) for seed, acc in zip(rows["seed"], rows["final_test_acc"])}


def _depth_claims(study: Study) -> list[dict]:
    rates, rows, seen = _rates(_selected(study)), [], set()
    for group in sorted(depth_groups(traits(_selected(study))), key=lambda g: g.arm != SHARED):
        for (shallow, deep), residual in itertools.product(zip(group.depths, group.depths[1:]), (False, True)):
            deeper, shallower = (group.cells.get((depth, residual), []) for depth in (deep, shallow))
            for a, b in itertools.product(deeper, shallower):
                if (key := (_stand_in(study, a), _stand_in(study, b))) in seen:
                    continue
                seen.add(key)
                claim = f"depth, {'residual' if residual else 'plain'} {shallow} to {deep} layers: {a} vs {b}"
                rows.append(_accuracy_row(study, DEPTH, claim, group.arm, a, b, rates))
    return rows


def log_ratios(per_run: pd.DataFrame, label: str, window: str) -> dict[int, float]:
    """{seed: log10(first/last ‖g‖/‖w‖)} of one group at step 0 or over the early window (finite only)."""
    rows = per_run[per_run["label"] == label]
    ratios = zip(rows["seed"], rows[f"ratio_{window}"])
    return {int(seed): math.log10(r) for seed, r in ratios if r is not None and np.isfinite(r) and r > 0}


def _step0_label(kinds: pd.DataFrame) -> dict[str, str]:
    """Per architecture (`name_label`), the one group whose step 0 is tested: the registry-default arm's
    when there is one (step 0 precedes any update, so every arm's step 0 is the same per seed)."""
    out: dict[str, str] = {}
    for label in sorted(kinds.index, key=lambda x: (kinds.loc[x, "arm"] != SHARED, x)):
        out.setdefault(kinds.loc[label, "name_label"], label)
    return out


def _gradient_claims(study: Study) -> list[dict]:
    per_run, kinds = study.gradients.per_run, study.kinds
    if per_run.empty:
        return []
    chosen = _selected(study)["label"]
    rates, rows = _rates(_selected(study)), []
    metric, abs_metric = "log10(first/last ‖g‖/‖w‖)", "|log10(first/last ‖g‖/‖w‖)|"
    step0 = _step0_label(kinds)
    for window in (STEP0, EARLY):
        family = GRADIENT[window]
        for label in sorted(step0.values()) if window == STEP0 else sorted(kinds.index):
            values = log_ratios(per_run, label, window)
            c = one_sample(values)
            name = kinds.loc[label, "name_label"] if window == STEP0 else label
            at = "step 0" if window == STEP0 else f"early window, lr {_rate_text(rates.get(label, ()))}"
            sign, named = "below" if c.mean_a < 0 else "above", direction(list(values.values()))
            claim = f"{name}: log10 ratio {sign} 0, gradients {named} by its 95% interval ({at})"
            arm = ALL_ARMS if window == STEP0 else kinds.loc[label, "arm"]
            rows.append(
                _row(family, claim, arm, name, "", metric, c, "", (f"{len(values)}/{(chosen == label).sum()}", ""))
            )
        seen = set()
        for pair in tested_pairs(study):
            if pair.kind == RESNET_VGG:
                continue
            sa, sb = _stand_in(study, pair.a), _stand_in(study, pair.b)
            differ = ""
            if window == STEP0:  # one test per pair of architectures, whatever the arm
                names = (kinds.loc[sa, "name_label"], kinds.loc[sb, "name_label"])
                if names in seen:
                    continue
                seen.add(names)
                sa, sb = step0.get(names[0], sa), step0.get(names[1], sb)
                a_name, b_name, arm, note = *names, ALL_ARMS, ""
            else:
                a_name, b_name, arm = pair.a, pair.b, pair.arm
                differ = _rate_note(rates, pair.a, pair.b)
                note = f"not compared: {differ}" if differ else _stand_in_note(study, pair.a, pair.b)
            claim = f"{QUESTION[pair.kind]}, distance from balance: {a_name} vs {b_name}"
            a, b = ({s: abs(v) for s, v in log_ratios(per_run, x, window).items()} for x in (sa, sb))
            c = Comparison(math.nan, math.nan, 0, 0, None, math.nan) if differ else compare(a, b)
            rows.append(_row(family, claim, arm, a_name, b_name, abs_metric, c, note))
    return rows


def build_claims(study: Study) -> pd.DataFrame:
    """Every claim of the study, Holm-adjusted within its family, in a fixed order."""
    rows = _pair_claims(study, study.main_threshold) + _depth_claims(study) + _gradient_claims(study)
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted", "verdict")])
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["family"] = pd.Categorical(frame["family"], FAMILIES, ordered=True)
    frame = frame.sort_values(["family", "arm", "claim"], kind="stable", ignore_index=True)
    frame["family"] = frame["family"].astype(str)
    frame["p_adjusted"] = frame.groupby("family", sort=False)["p"].transform(holm)
    frame["verdict"] = [
        "not tested" if not test else RESOLVED if p < ALPHA else NOT_RESOLVED
        for test, p in zip(frame["test"], frame["p_adjusted"])
    ]
    return frame[list(COLUMNS)]
