"""Numbers to text: the cell formats and word lists every section and sentence uses."""

from __future__ import annotations

import math

import pandas as pd

from archbench.report.stats import ALPHA, CONFIDENCE, MAX_SEEDS, PAIRED, POWER, Comparison, finite, t_interval

DASH = "—"
NO_INTERVAL = "n=1, no interval"
INTERVAL_RULE = (
    f"a ± h (n=k) is the mean over k seeds and the half-width h of its {100 * CONFIDENCE:g}% confidence interval "
    f"(Student's t over the seeds: h = t_{{{(1 + CONFIDENCE) / 2:g}, k-1}} · s / √k, s the sample standard deviation); "
    f'one seed gives the value alone ("{NO_INTERVAL}")'
)
TEST_RULE = (
    "A difference is tested with a paired t-test when both models ran the same seeds (a seed fixes the "
    "initialisation and the data order, so seeds pair up) and with Welch's t-test otherwise; it is called "
    f"resolved when p < {ALPHA:g} (two-sided). For a difference not resolved, the report gives the seeds per "
    "model that the observed spread would need to resolve it: the fewest n at which the same test, two-sided "
    f"at {ALPHA:g}, has {100 * POWER:g}% power against the observed difference d, from the noncentral t "
    "distribution (paired: one sample of n per-seed differences with their standard deviation s, df n - 1, "
    "noncentrality d √n / s; Welch: n seeds of each model with their standard deviations s_a and s_b, "
    "Welch's df, noncentrality d / √((s_a² + s_b²) / n), which is Student's two-sample test, df 2n - 2, when "
    f"the spreads are equal; searched up to {MAX_SEEDS}). It takes the observed d and spread for the truth: "
    "a plan, not a promise."
)


def md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def ci(values, fmt: str, scale: float = 1.0, seeds: int | None = None) -> str:
    """'mean ± half-width (n=k)' over seeds, 'value (n=1, no interval)' for one seed, — for none. In a table
    that states the seeds once per row, `seeds` is that n: a cell over exactly that many leaves its n out."""
    interval = t_interval(values)
    if interval.n == 0:
        return DASH
    mean = format(scale * interval.mean, fmt)
    if interval.n == 1:
        return mean if seeds == 1 else f"{mean} ({NO_INTERVAL})"
    half = format(scale * interval.half_width, fmt)
    return f"{mean} ± {half}" if seeds == interval.n else f"{mean} ± {half} (n={interval.n})"


def pct(values) -> str:
    return ci(values, ".2f", 100.0)


def epochs_cell(values) -> str:
    return ci(values, ".1f")


def counts(values) -> str:
    """Distinct whole numbers, e.g. epochs run by each seed: '30' or '12, 30'."""
    return ", ".join(str(v) for v in sorted({int(v) for v in finite(values)})) or DASH


def threshold_label(t: float) -> str:
    return f"{100 * t:g}%"


def join(items) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def unique(series) -> list:
    return sorted({str(v) for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))})


def seeds_text(group: pd.DataFrame) -> str:
    return ", ".join(str(s) for s in sorted(group["seed"]))


def status_note(model_runs: pd.DataFrame, counted: pd.DataFrame) -> str:
    """'completed', or the status of each chosen seed that is not completed."""
    others = model_runs[model_runs["status"] != "completed"].sort_values("seed")
    if others.empty:
        return "completed"
    notes = "; ".join(f"seed {r.seed} {r.status}" for r in others.itertuples())
    return notes if (counted["status"] != "completed").all() else f"completed; {notes}"


def p_text(p: float) -> str:
    """'p = 0.012' (two significant digits, more where rounding would reach or cross ALPHA: 0.0503, never a
    bare '0.05' that reads like the threshold), or 'p < 0.001'."""
    if p < 0.001:
        return "p < 0.001"
    for digits in range(2, 7):
        text = f"{p:.{digits}g}"
        if (float(text) < ALPHA) == (p < ALPHA) and float(text) != ALPHA:
            return f"p = {text}"
    return f"p = {p!r}"


def seeds_count(c: Comparison) -> str:
    return f"{c.n_a}" if c.n_a == c.n_b else f"{c.n_a} and {c.n_b}"


def verdict(c: Comparison) -> str:
    """The test of a difference in words: 'resolved (p = 0.012, Welch, n = 3 vs 3)', or why not."""
    if c.n_a < 2 or c.n_b < 2:
        return "not testable: one seed on at least one side"
    if c.test is None:
        return f"not testable: no seed-to-seed spread on either side (n = {c.n_a} vs {c.n_b})"
    detail = f"{p_text(c.p)}, {'paired' if c.test == PAIRED else c.test}, n = {c.n_a} vs {c.n_b}"
    if c.resolved:
        return f"resolved ({detail})"
    text = f"not resolved with {seeds_count(c)} seeds ({detail})"
    needed = c.seeds_needed
    if needed is None:
        return text + "; no number of seeds resolves a zero difference"
    power = f"{100 * POWER:g}% power"
    if needed > MAX_SEEDS:
        return text + f"; at the observed spread more than {MAX_SEEDS} seeds per model would be needed for {power}"
    return text + f"; at the observed spread {needed} seeds per model would resolve a difference this size with {power}"
