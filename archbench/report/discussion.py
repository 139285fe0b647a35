"""The report's discussion: one sentence per row of REPORT-claims.csv (`claims.build_claims`), family by
family, set beside what the literature expects; no test is run here."""

from __future__ import annotations

import math

import pandas as pd

from archbench import references
from archbench.config import RUNS_DIR, TUNING_FILE
from archbench.report.claims import (
    ACCURACY,
    BALANCED,
    DEPTH,
    EXPLODING,
    FAMILIES,
    GRADIENT,
    RESOLVED,
    TIME,
    UNDETERMINED,
    VANISHING,
)
from archbench.report.gradient_measures import EARLY, STEP0
from archbench.report.sensitivity import Sensitivity, tuneability
from archbench.report.study import TUNED, Study
from archbench.report.text import join, p_text, unique
from archbench.tuning import CHOSEN

FAMILY_TITLES = {
    ACCURACY: "Accuracy (final-epoch test accuracy, points)",
    DEPTH: "Depth (final-epoch test accuracy, points)",
    TIME: "Time to the main threshold (epochs; a seed that never reached it is ∞, ranked above every time)",
    GRADIENT[STEP0]: "Gradients at step 0 (before any update: independent of the learning rate)",
    GRADIENT[EARLY]: "Gradients over the early window (depends on the learning rate)",
}


def _number(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}"


def mean_text(mean: float, of: str) -> str:
    """A claim's mean with how many seeds of how many entered it; ∞ when a seed never arrived."""
    share = f" ({of})" if isinstance(of, str) and of else ""
    return f"∞{share}" if mean == math.inf else f"{_number(mean)}{share}"


def constant_text(row) -> str:
    """ "every seed: +d" when every paired difference was the same d (empty otherwise)."""
    d = row.constant_difference
    return f"every seed: {d:+.2f}" if isinstance(d, float) and math.isfinite(d) else ""


def _tested(row) -> str:
    if not row.test:
        return row.note or "not tested"
    constant = f"{constant_text(row)}; " if constant_text(row) else ""
    adjusted = f"{p_text(row.p)}, Holm-adjusted {p_text(row.p_adjusted)}"
    if row.model_b:
        return f"{constant}{row.test}, n = {row.n_a} vs {row.n_b}, {adjusted}"
    return f"{constant}{row.test} against 0, n = {row.n_a}, {adjusted}"


def outcome(row) -> str:
    """The verdict in words: which side is ahead when resolved (for times, fewer epochs is ahead)."""
    if row.verdict != RESOLVED:
        return row.verdict
    if not row.model_b:
        return f"{RESOLVED}: below 0" if row.difference < 0 else f"{RESOLVED}: above 0"
    higher = row.model_a if row.difference > 0 else row.model_b
    lower = row.model_b if row.difference > 0 else row.model_a
    if row.family == TIME:  # by ranks: a negative rank statistic puts model_a's times lower
        return f"{RESOLVED}: {row.model_a if row.statistic < 0 else row.model_b} reaches it sooner"
    if row.family in (GRADIENT[STEP0], GRADIENT[EARLY]):
        return f"{RESOLVED}: {lower} is closer to balance"
    return f"{RESOLVED}: {higher} higher"


def named_direction(claim: str) -> str:
    """The direction a gradient claim names (`claims.direction`)."""
    return next((d for d in (VANISHING, EXPLODING, BALANCED, UNDETERMINED) if f"gradients {d} " in claim), "")


EXPECTED = {  # what each named direction at step 0 says of He et al. 2016 and of Yang et al. 2019
    BALANCED: ("in line with", "not shown here"),
    EXPLODING: ("against", "in line with"),
    VANISHING: ("against", "against"),
    UNDETERMINED: ("neither confirmed nor contradicted by", "neither confirmed nor contradicted by"),
}


def expectation(kinds: pd.DataFrame, row) -> str:
    """What the literature expects of a plain net with BN at step 0, and whether this row's direction (named
    by its 95% interval) agrees: balanced is in line with He et al.; exploding is against He et al. and in
    line with Yang et al.; vanishing is against both."""
    if row.family != GRADIENT[STEP0] or row.model_b:
        return ""
    mine = kinds[kinds["name_label"] == row.model_a]
    if mine.empty or bool(mine["residual"].iloc[0]) or not bool(mine["batch_norm"].iloc[0]):
        return ""
    named = named_direction(row.claim)
    if named not in EXPECTED:
        return ""
    he, yang = EXPECTED[named]
    return (
        f" Expected for a plain net with BN: {references.HE_2016_GRADIENTS} ({he} this row); "
        f"{references.YANG_2019_GRADIENTS} ({yang} this row)."
    )


def claim_sentence(row, kinds: pd.DataFrame) -> str:
    """One claims row as a sentence."""
    if row.model_b:
        numbers = f"{row.model_a} {mean_text(row.mean_a, row.of_a)} vs {row.model_b} {mean_text(row.mean_b, row.of_b)}"
        diff = f", difference {row.difference:+.2f}" if math.isfinite(row.difference) else ""
    else:
        numbers = f"mean {row.metric} {_number(row.mean_a)}"
        diff = ""
    note = f" ({row.note})" if row.note and row.test else ""
    return f"{row.claim} [{row.arm}]: {numbers}{diff}; {_tested(row)} → {outcome(row)}{note}.{expectation(kinds, row)}"


def _caveats(study: Study) -> list[str]:
    out = []
    listed, counted = study.listed, study.counted
    if listed["synthetic"].all():
        out.append(
            "All runs used synthetic data (SYNTHETIC): nothing below is evidence about real images; the "
            "sentences describe these runs only."
        )
    elif listed["synthetic"].any():
        out.append("Some runs used synthetic data and some did not; comparisons across them are not meaningful.")
    single = sorted(m for m, g in counted.groupby("label") if len(g) == 1)
    if single:
        out.append(
            f"{join(single)}: one seed only, so no claim involving {'it' if len(single) == 1 else 'them'} is tested."
        )
    if study.identical:
        same = "; ".join(f"{a} = {b}" for a, b in sorted(study.identical.items()))
        out.append(f"Identical runs shown once (same recipe and seed, same numbers epoch by epoch): {same}.")
    return out


def _stability_sentences(study: Study) -> list[str]:
    bad = study.chosen[study.chosen["status"] == "diverged"]
    if bad.empty:
        return []
    runs = "; ".join(f"{r.label} seed {r.seed} ({_where_diverged(r)})" for r in bad.itertuples())
    return [f"Diverged (non-finite loss or accuracy), counted as never reaching any threshold: {runs}."]


def _where_diverged(run) -> str:
    """The training step whose loss went non-finite, else the first epoch metrics.csv records a non-finite value."""
    for where, value in (("step", run.diverged_at_step), ("epoch", run.diverged_at_epoch)):
        if value is not None and not pd.isna(value):
            return f"{where} {value:.0f}"
    return "where not recorded"


def _tuneability_sentences(sensitivity: Sensitivity | None) -> list[str]:
    if sensitivity is None:
        return []
    parts = [f"{m.model} {tuneability(m)}" for m in sensitivity.models]
    return [
        "Tuneability (holdout accuracy at the best rate minus at the default rate, points, one tuning run "
        f"per rate, untested; see Learning-rate sensitivity): {'; '.join(parts)}."
    ]


def _no_tuned_runs_sentences(study: Study) -> list[str]:
    """When a tuning file chose rates but no study run used them: say so, and give the command that runs them."""
    s, counted = study.sensitivity, study.counted
    if s is None or not s.files or TUNED in set(study.runs["arm"]):
        return []
    runs_dir = study.inputs.runs_label
    commands = []
    for file in s.files:
        models = [m.model for m in s.models if m.chosen_by == file and m.status == CHOSEN]
        if not models:
            continue
        options = ["--lr tuned"]
        if file != f"{runs_dir}/{TUNING_FILE}":
            options.append(f"--tuning {file}")
        if runs_dir != RUNS_DIR.as_posix():
            options.append(f"--out {runs_dir}")
        presets = unique(counted["preset"])
        if len(presets) == 1 and presets[0] != "paper":
            options.append(f"--preset {presets[0]}")
        options += [f"--seed {seed}" for seed in sorted({int(x) for x in counted["seed"]})]
        commands.append(f"`archbench run {' '.join(models)} {' '.join(options)}`")
    files = join(f"`{f}`" for f in s.files)
    head = "Registry default rates against tuned rates: no runs with tuned rates are recorded yet"
    if not commands:
        return [f"{head}; the tuning file(s) {files} chose no rate to run (see Learning-rate sensitivity)."]
    return [
        f"{head}. To record them with the rates the tuning file(s) {files} chose: {join(commands)}, with the "
        "other options of the default-rate runs (e.g. `--data`, `--epochs`) if they set any."
    ]


def discussion_section(study: Study) -> str:
    parts = ["\n".join(f"- {s}" for s in _caveats(study))] if _caveats(study) else []
    for family in FAMILIES:
        rows = study.claims[study.claims["family"] == family]  # `build_claims` gives every column, rows or not
        if rows.empty:
            continue
        tested = int((rows["test"] != "").sum())
        resolved = int((rows["verdict"] == RESOLVED).sum())
        head = (
            f"**{FAMILY_TITLES[family]}**: {len(rows)} rows of REPORT-claims.csv (family `{family}`), "
            f"{tested} tested, Holm over those {tested}; {resolved} resolved."
        )
        parts.append(head + "\n\n" + "\n".join(f"- {claim_sentence(r, study.kinds)}" for r in rows.itertuples()))
    other = _stability_sentences(study) + _no_tuned_runs_sentences(study) + _tuneability_sentences(study.sensitivity)
    if other:
        parts.append("\n".join(f"- {s}" for s in other))
    return "\n\n".join(parts)
