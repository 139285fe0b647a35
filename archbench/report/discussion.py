"""The report's discussion: sentences written from the numbers, each difference tested (`stats.compare`).

Accuracy comparisons use the final-epoch test accuracy: its epoch is fixed before training, so it is
selected on no split. Gradient claims use the scale-free ‖g‖/‖w‖ and the step-to-step cosine over the
early window (`gradient_measures`), never the raw ‖g‖.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from archbench import references
from archbench.config import RUNS_DIR
from archbench.report.comparisons import BN, RESIDUAL, RESNET_VGG, Pair, compare_labels, pairs, resnets_and_vggs
from archbench.report.depth import depth_sentences
from archbench.report.gradient_measures import COSINE, EARLY, column, early_window
from archbench.report.sensitivity import Sensitivity, tuneability
from archbench.report.stats import Comparison, compare
from archbench.report.study import SHARED, TUNED, Study, thresholds_of, traits
from archbench.report.text import join, threshold_label, unique, verdict
from archbench.tuning import CHOSEN

ARM_NAMES = {SHARED: "Shared recipe", TUNED: "Tuned rates"}
FEATURE_VERB = {RESIDUAL: "keep", BN: "keeps"}


def _caveats(counted: pd.DataFrame, listed: pd.DataFrame) -> list[str]:
    out = []
    if listed["synthetic"].all():
        out.append(
            "All runs used synthetic data, so nothing below is evidence about Tiny-ImageNet; the "
            "sentences describe these runs only."
        )
    elif listed["synthetic"].any():
        out.append("Some runs used synthetic data and some did not; comparisons across them are not meaningful.")
    single = sorted(m for m, g in counted.groupby("label") if len(g) == 1)
    if single:
        out.append(
            f"{join(single)} {'has' if len(single) == 1 else 'have'} one seed only: differences "
            f"involving {'it' if len(single) == 1 else 'them'} cannot be tested."
        )
    out.append(
        "Accuracy comparisons below use the final-epoch test accuracy (its epoch fixed before training, "
        "so selected on no split); each difference is tested as the header says."
    )
    return out


class LabelMean(NamedTuple):
    mean: float
    label: str


def _arms(counted: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(prefix, runs) per learning-rate arm; the prefix is empty when there is one arm."""
    arms = sorted(counted["arm"].unique(), key=lambda a: a != SHARED)
    if len(arms) == 1:
        return [("", counted)]
    return [(f"{ARM_NAMES[a]}: ", counted[counted["arm"] == a]) for a in arms]


def ranking(counted: pd.DataFrame) -> list[LabelMean]:
    """Completed labels by mean final test accuracy, highest first."""
    completed = counted[counted["status"] == "completed"]
    means = [
        LabelMean(float(np.nanmean(g["final_test_acc"])) if g["final_test_acc"].notna().any() else math.nan, m)
        for m, g in completed.groupby("label", sort=True)
    ]
    return sorted((x for x in means if np.isfinite(x.mean)), key=lambda x: (-x.mean, x.label))


def _accuracy_gap(c: Comparison, a: str, b: str) -> str:
    return (
        f"{a} {c.mean_a:.2f}% against {b} {c.mean_b:.2f}% final test accuracy, a difference of "
        f"{c.difference:+.2f} points: {verdict(c)}"
    )


def _accuracy_sentences(counted: pd.DataFrame, prefix: str) -> list[str]:
    means = ranking(counted)
    if not means:
        return [f"{prefix}No run completed, so there is no final accuracy to compare."]
    text = ", ".join(f"{x.label} {100 * x.mean:.2f}%" for x in means)
    out = [f"{prefix}Final test accuracy, highest first (mean over seeds): {text}."]
    tested = pairs(traits(counted))
    if len(means) > 1 and {means[0].label, means[1].label} not in [{p.a, p.b} for p in tested]:
        first, second = means[0].label, means[1].label
        c = compare_labels(counted, first, second, "final_test_acc", 100.0)
        out.append(f"{prefix}{first} leads {second}: {_accuracy_gap(c, first, second)}.")
    names = {RESIDUAL: "Residual connections", BN: "BN", RESNET_VGG: "ResNet against VGG"}
    for pair in tested:
        c = compare_labels(counted, pair.a, pair.b, "final_test_acc", 100.0)
        if c.n_a and c.n_b:
            out.append(f"{prefix}{names[pair.kind]}: {_accuracy_gap(c, pair.a, pair.b)}.")
    ref = references.REPRODUCTION
    own = counted[(counted["model"] == ref.model) & (counted["status"] == "completed")]
    if len(own) and own["label"].nunique() == 1:
        train, test = 100 * own["final_train_acc"].mean(), 100 * own["final_test_acc"].mean()
        why = (
            "synthetic data"
            if own["synthetic"].any()
            else "not the paper preset"
            if (own["preset"] != "paper").any()
            else ""
        )
        epochs = join(sorted({str(e) for e in own["epochs_completed"]}))
        out.append(
            f"{prefix}{own['label'].iloc[0]} ends at {train:.2f}% train / {test:.2f}% test against the reference "
            f"reproduction's {ref.train_acc:.2f}% / {ref.test_acc:.2f}%"
            + (f"; the comparison is not meaningful here ({why}, {epochs} epoch(s))." if why else ".")
        )
    return out


class ThresholdStat(NamedTuple):
    """How a label's seeds reached one accuracy threshold."""

    mean_epoch: float  # over the seeds that reached it
    label: str
    reached: int  # seeds that reached it
    seeds: int
    epochs: dict[int, int]  # seed -> the epoch it got there, for each reaching seed


def threshold_stats(counted: pd.DataFrame, t: float) -> list[ThresholdStat]:
    """Each label with at least one seed at threshold t, soonest first."""
    stats = []
    for label, g in counted.groupby("label", sort=True):
        epochs = {int(s): e.get(t) for s, e in zip(g["seed"], g["epochs_to_threshold"]) if e.get(t) is not None}
        if epochs:
            stats.append(ThresholdStat(float(np.mean(list(epochs.values()))), label, len(epochs), len(g), epochs))
    return sorted(stats, key=lambda s: (s.mean_epoch, -s.reached / s.seeds, s.label))


def _epoch_text(s: ThresholdStat) -> str:
    text = f"epoch {s.mean_epoch:g}" if s.mean_epoch == int(s.mean_epoch) else f"epoch {s.mean_epoch:.1f}"
    return text + (f" in {s.reached}/{s.seeds} seeds" if s.reached < s.seeds else "")


def _epochs_verdict(a: ThresholdStat, b: ThresholdStat) -> str:
    return "over the seeds that reached it, " + verdict(compare(a.epochs, b.epochs))


def _convergence_sentences(counted: pd.DataFrame, prefix: str) -> list[str]:
    out = []
    labels = sorted(counted["label"].unique())
    by_threshold = {t: threshold_stats(counted, t) for t in thresholds_of(counted)}
    unreached = [threshold_label(t) for t, stats in by_threshold.items() if not stats]
    if unreached:
        out.append(f"{prefix}No model reached {join(unreached).replace(' and ', ' or ')} test accuracy.")
    for t, stats in by_threshold.items():
        label = threshold_label(t)
        never = [m for m in labels if m not in {s.label for s in stats}]
        if not stats:
            continue
        first = stats[0]
        ties = [s for s in stats if s.mean_epoch == first.mean_epoch]
        if len(ties) > 1:
            text = f"{join(s.label for s in ties)} reached {label} test accuracy first, tied at {_epoch_text(first)}"
        else:
            text = f"{first.label} reached {label} test accuracy first ({_epoch_text(first)})"
            if len(stats) > 1:
                second = stats[1]
                text += (
                    f", {second.mean_epoch - first.mean_epoch:.1f} epochs before {second.label} "
                    f"({_epoch_text(second)}): {_epochs_verdict(first, second)}"
                )
        if never:
            text += f"; never reached by {join(never)}"
        out.append(prefix + text + ".")
    return out + _claim_sentences(counted, by_threshold, prefix)


def _claim_sentences(counted: pd.DataFrame, by_threshold: dict, prefix: str) -> list[str]:
    """Compare ResNet (residual) with VGG at the highest threshold every ResNet seed reached."""
    claim = references.CONVERGENCE
    resnets, vggs = resnets_and_vggs(traits(counted))
    if not resnets or not vggs:
        return []
    for t in reversed(list(by_threshold)):
        stats = {s.label: s for s in by_threshold[t]}
        if not all(m in stats and stats[m].reached == stats[m].seeds for m in resnets):
            continue
        res = ", ".join(f"{m} {stats[m].mean_epoch:.1f}" for m in resnets)
        vgg_text = ", ".join(f"{m} {stats[m].mean_epoch:.1f}" if m in stats else f"{m} never" for m in vggs)
        latest = max(stats[r].mean_epoch for r in resnets)
        earliest = min(stats[r].mean_epoch for r in resnets)
        slower = [m for m in vggs if m not in stats or stats[m].mean_epoch > latest]
        faster = [m for m in vggs if m in stats and stats[m].mean_epoch < earliest]
        if len(slower) == len(vggs):
            direction = "the same direction as"
        elif len(faster) == len(vggs):
            direction = "the opposite direction to"
        elif not slower and not faster:
            direction = "no difference in epochs, so neither for nor against"
        else:
            direction = "only partly in the direction of"
        hedge = " On synthetic data this says nothing about Tiny-ImageNet." if counted["synthetic"].any() else ""
        out = [
            f"{prefix}Epochs to {threshold_label(t)}: {res} against {vgg_text}; {direction} the reference's "
            f'"{claim.quote}" (whose threshold is not stated).{hedge}'
        ]
        for r in resnets:
            for v in vggs:
                if v in stats:
                    out.append(
                        f"{prefix}Epochs to {threshold_label(t)}, {r} against {v}: "
                        f"{_epochs_verdict(stats[r], stats[v])}."
                    )
        return out
    return [
        f"{prefix}No threshold was reached by every seed of {join(resnets)}, so the reference's convergence "
        "claim (about 30 vs 40 epochs) cannot be checked here."
    ]


def _stability_sentences(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["status"] != "completed"]
    if bad.empty:
        return ["Every run completed; none diverged."]
    out = []
    for status in ("diverged", "interrupted"):
        for label, g in bad[bad["status"] == status].groupby("label", sort=True):
            total = runs[(runs["label"] == label)].shape[0]
            details = []
            for r in g.sort_values(["seed", "run_id"]).itertuples():
                step = r.diverged_at_step
                where = "" if step is None or pd.isna(step) else f" at step {int(step)}"
                where += f" after {r.epochs_completed} epoch(s)"
                later = "; another run of this seed completed and is used" if not r.selected else ""
                details.append(f"seed {r.seed}{where}{later}")
            out.append(f"{label}: {len(g)} of {total} run(s) {status} ({'; '.join(details)}).")
    if bad[bad["status"] == "diverged"].empty:
        out.insert(0, "No run diverged.")
    return out


def _feature_pairs(study: Study, per_run: pd.DataFrame) -> list[Pair]:
    present = set(per_run["label"])
    return [p for p in pairs(traits(study.counted)) if p.kind in (RESIDUAL, BN) and {p.a, p.b} <= present]


def _reading(c: Comparison, larger_supports: bool, claim: str) -> str:
    """How a tested difference bears on a claim that predicts a larger (or smaller) value with the feature."""
    if c.test is None:
        return f"{verdict(c)}, so these runs cannot speak to {claim}"
    if math.isclose(c.mean_a, c.mean_b, rel_tol=1e-9, abs_tol=1e-15):
        return f"no difference, so these runs neither support nor contradict {claim}"
    supports = (c.difference > 0) == larger_supports
    if c.resolved:
        return f"{'in line with' if supports else 'against'} {claim}: {verdict(c)}"
    return (
        f"{'in the direction of' if supports else 'against the direction of'} {claim}, but {verdict(c)}, so "
        "these runs neither support nor contradict it"
    )


def _gradient_sentences(study: Study) -> list[str]:
    per_run, window = study.gradients.per_run, early_window(study.gradients.steps)
    if per_run.empty:
        return []
    measure = (
        f"measure: ‖g‖/‖w‖ of the first weight layer over that of the last, mean over {window}; "
        "step 0 and the raw ‖g‖ are in the Early training section, not used here"
    )
    ratio = f"ratio_{EARLY}"
    means = per_run.groupby("label", sort=True)[ratio].mean().dropna().sort_values(kind="stable")
    out = []
    if len(means) > 1:
        out.append(
            f"Early gradients by depth ({measure}): lowest for {means.index[0]} ({means.iloc[0]:.3g}), "
            f"highest for {means.index[-1]} ({means.iloc[-1]:.3g})."
        )
    for pair in _feature_pairs(study, per_run):
        c = compare_labels(per_run, pair.a, pair.b, ratio)
        if not (np.isfinite(c.mean_a) and np.isfinite(c.mean_b)):
            continue
        claim = f"the claim that {pair.kind} {FEATURE_VERB[pair.kind]} early gradients alive"
        out.append(
            f"With {pair.kind}, {pair.a}'s first layer gets {c.mean_a:.3g}x its last layer's ‖g‖/‖w‖, "
            f"against {c.mean_b:.3g}x for {pair.b}: {_reading(c, True, claim)}."
        )
    return out


def _noise_sentences(study: Study) -> list[str]:
    per_run, window = study.gradients.per_run, early_window(study.gradients.steps)
    first, last = f"first_{column(COSINE, EARLY)}", f"last_{column(COSINE, EARLY)}"
    out = []
    for pair in _feature_pairs(study, per_run):
        if pair.kind != RESIDUAL:
            continue
        c = compare_labels(per_run, pair.a, pair.b, first)
        if not (np.isfinite(c.mean_a) and np.isfinite(c.mean_b)):
            continue
        last_a = per_run.loc[per_run["label"] == pair.a, last].mean()
        last_b = per_run.loc[per_run["label"] == pair.b, last].mean()
        claim = f"the reference's claim that {references.NOISY_GRADIENTS_CLAIM}"
        out.append(
            f"Gradient noise (measure: cosine between consecutive steps' gradients, mean over {window}, of the "
            f"first weight layer, the one furthest from the loss; {references.BALDUZZI_2017}: plain nets' "
            f"gradients decorrelate towards white noise with depth): {pair.a} {c.mean_a:.3f} against {pair.b} "
            f"{c.mean_b:.3f} (last layer: {last_a:.3f} against {last_b:.3f}); {_reading(c, True, claim)}."
        )
    return out


def _tuneability_sentences(sensitivity: Sensitivity | None) -> list[str]:
    if sensitivity is None:
        return []
    parts = [f"{m.model} {tuneability(m)}" for m in sensitivity.models]
    return [
        f"Tuneability (validation accuracy at the best rate minus at the default rate, points; see "
        f"Learning-rate sensitivity): {'; '.join(parts)}."
    ]


def _outcome(c: Comparison, a: str, b: str) -> str:
    if not c.resolved:
        return "not resolved"
    return f"{a if c.difference > 0 else b} ahead, resolved"


def _no_tuned_runs_sentences(study: Study) -> list[str]:
    """When a tuning file chose rates but no study run used them: say so, and give the command that runs them."""
    s, counted = study.sensitivity, study.counted
    if s is None or not s.files or TUNED in set(counted["arm"]):
        return []
    runs_dir = study.inputs.runs_label
    commands = []
    for file in s.files:
        models = [m.model for m in s.models if m.chosen_by == file and m.status == CHOSEN]
        if not models:
            continue
        options = ["--lr tuned"]
        if file != f"{runs_dir}/tuning.json":
            options.append(f"--tuning {file}")
        if runs_dir != RUNS_DIR.as_posix():
            options.append(f"--out {runs_dir}")
        presets = unique(counted["preset"])
        if len(presets) == 1 and presets[0] != "paper":
            options.append(f"--preset {presets[0]}")
        options += [f"--seed {seed}" for seed in sorted({int(x) for x in counted["seed"]})]
        commands.append(f"`archbench run {' '.join(models)} {' '.join(options)}`")
    files = join(f"`{f}`" for f in s.files)
    head = (
        "Shared recipe against tuned rates: no runs with tuned rates are recorded yet, so this comparison is not made"
    )
    if not commands:
        return [f"{head}; the tuning file(s) {files} chose no rate to run (see Learning-rate sensitivity)."]
    return [
        f"{head}. To record them with the rates the tuning file(s) {files} chose (see Learning-rate "
        f"sensitivity): {join(commands)}, with the shared runs' other options (e.g. `--data`, `--epochs`) if "
        "they set any; the next report then sets them against the shared recipe."
    ]


def _arm_sentences(counted: pd.DataFrame) -> list[str]:
    """Which comparisons change between the shared recipe and per-model tuned rates (both arms needed)."""
    if set(counted["arm"]) != {SHARED, TUNED}:
        return []
    kinds = traits(counted)
    name = kinds["name_label"]
    both = set(name[kinds["arm"] == SHARED]) & set(name[kinds["arm"] == TUNED])
    orders = {}
    for arm in (SHARED, TUNED):
        ranked = ranking(counted[counted["arm"] == arm])
        orders[arm] = [name[x.label] for x in ranked if name[x.label] in both]
    same = orders[SHARED] == orders[TUNED]
    out = [
        f"Shared recipe against tuned rates, ranking by final test accuracy of the models run both ways: "
        f"{' > '.join(orders[SHARED])} (shared) and {' > '.join(orders[TUNED])} (tuned): the ranking "
        f"{'is the same' if same else 'changes'}."
    ]
    outcomes: dict[tuple[str, str, str], dict[str, str]] = {}
    for pair in pairs(kinds):
        a, b = name[pair.a], name[pair.b]
        if a in both and b in both:
            c = compare_labels(counted, pair.a, pair.b, "final_test_acc", 100.0)
            outcomes.setdefault((pair.kind, a, b), {})[pair.arm] = _outcome(c, a, b)
    changed = [
        f"{a} against {b} (shared: {o[SHARED]}; tuned: {o[TUNED]})"
        for (_, a, b), o in sorted(outcomes.items())
        if len(o) == 2 and o[SHARED] != o[TUNED]
    ]
    kept = [f"{a} against {b}" for (_, a, b), o in sorted(outcomes.items()) if len(o) == 2 and o[SHARED] == o[TUNED]]
    if changed:
        out.append(f"Tested pairs whose outcome changes with tuned rates: {'; '.join(changed)}.")
    if kept:
        out.append(f"Tested pairs with the same outcome both ways: {join(kept)}.")
    return out


def discussion_section(study: Study) -> str:
    runs, counted, listed = study.runs, study.counted, study.listed
    sentences = _caveats(counted, listed)
    for prefix, arm_runs in _arms(counted):
        sentences += _accuracy_sentences(arm_runs, prefix)
    for prefix, arm_runs in _arms(counted):
        sentences += _convergence_sentences(arm_runs, prefix)
    sentences += (
        depth_sentences(counted)
        + _arm_sentences(counted)
        + _no_tuned_runs_sentences(study)
        + _tuneability_sentences(study.sensitivity)
        + _stability_sentences(runs)
        + _gradient_sentences(study)
        + _noise_sentences(study)
    )
    return "\n".join(f"- {s}" for s in sentences)
