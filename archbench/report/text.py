"""Numbers to text: the cell formats and word lists every section and sentence uses."""

from __future__ import annotations

import math
import textwrap

import pandas as pd

from archbench.report.stats import (
    ALPHA,
    CONFIDENCE,
    PAIRED,
    PERMUTATION,
    RANK_SUM,
    SIGN_FLIP,
    SIGNED_RANK,
    WELCH,
    finite,
    t_interval,
)

DASH = "—"
NO_INTERVAL = "n=1, no interval"
INTERVAL_RULE = (
    f"a ± h (n=k) is the mean over k seeds and the half-width h of its {100 * CONFIDENCE:g}% confidence interval "
    f"(Student's t over the seeds: h = t_{{{(1 + CONFIDENCE) / 2:g}, k-1}} · s / √k, s the sample standard "
    f'deviation); one seed gives the value alone ("{NO_INTERVAL}"); "all k seeds equal" means every seed landed '
    "on the same value at the measurement's resolution, not that the value is certain"
)
TEST_RULES = (
    f"Each claim is one test, run once. Same seeds on both sides: the {PAIRED}-test on the per-seed "
    "differences (a seed fixes the initialisation and the data order, so seeds pair up). When every seed "
    f"shows the same difference d the t statistic is undefined: the {SIGN_FLIP} test decides (p = 2 / 2^n, "
    'exact; 0.25 with 3 seeds, so it resolves nothing below 6 seeds), and the claim says "every seed: +d". '
    "A seed only one side completed is dropped from a paired test and named in the claim's note (with "
    "completed/total per side); "
    f"fewer than two shared seeds: {WELCH} (unequal variances), or the {PERMUTATION} test when neither side "
    "varies. Times to a threshold, where a seed that never reached it is ∞ (a lower bound, not a value), are "
    f"compared by ranks, ∞ above every time: the {SIGNED_RANK} test (Wilcoxon) on shared seeds, else the "
    f"{RANK_SUM} test; a mean with an ∞ is printed ∞ (reached/total) and no difference is given.",
    "Claims come in families (accuracy, depth, time-to-threshold, gradient-step0, gradient-early); within "
    "each family the p-values are adjusted with Holm's step-down procedure (Holm 1979), which holds the "
    f"chance of any false claim in the family below {ALPHA:g}. A claim is resolved only when its adjusted "
    f"p < {ALPHA:g} (two-sided). REPORT-claims.csv holds every claim with its raw and adjusted p.",
    "No claim says an outcome changes between arms (the difference between resolved and not resolved is "
    "not itself tested), and no number of seeds needed is given: power computed from the observed effect "
    "adds nothing to its p-value (Hoenig & Heisey 2001).",
)


def never_cell(reached: int, total: int) -> str:
    """A mean over seeds of which some never arrived: infinite, with how many of how many arrived."""
    return f"∞ ({reached}/{total})"


def md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def ci(values, fmt: str, scale: float = 1.0, seeds: int | None = None, resolution: str = "") -> str:
    """'mean ± half-width (n=k)' over seeds, 'value (n=1, no interval)' for one seed, — for none, and
    'value (all k seeds equal, resolution r)' when every seed gave the same value. In a table that states the
    seeds once per row, `seeds` is that n: a cell over exactly that many leaves its n out."""
    interval = t_interval(values)
    if interval.n == 0:
        return DASH
    mean = format(scale * interval.mean, fmt)
    if interval.n == 1:
        return mean if seeds == 1 else f"{mean} ({NO_INTERVAL})"
    if interval.half_width == 0:
        return f"{mean} (all {interval.n} seeds equal{', resolution ' + resolution if resolution else ''})"
    half = format(scale * interval.half_width, fmt)
    return f"{mean} ± {half}" if seeds == interval.n else f"{mean} ± {half} (n={interval.n})"


def geometric_ci(values, fmt: str) -> str:
    """For ratios: the geometric mean over seeds (10 to the mean log10, as the claims test it) ×/÷ the factor
    of its 95% t interval on the log scale, e.g. '0.342 ×/÷ 1.9 (n=3)'; positive finite values only."""
    logs = [math.log10(v) for v in finite(values) if v > 0]
    interval = t_interval(logs)
    if interval.n == 0:
        return DASH
    mean = format(10**interval.mean, fmt)
    if interval.n == 1:
        return f"{mean} ({NO_INTERVAL})"
    if interval.half_width == 0:
        return f"{mean} (all {interval.n} seeds equal)"
    return f"{mean} ×/÷ {format(10**interval.half_width, '.3g')} (n={interval.n})"


def accuracy_resolution(runs: pd.DataFrame) -> str:
    """One test image's worth of accuracy, in points, when every run has the same test set size (else "")."""
    sizes = {int(s) for s in runs["test_size"].dropna()}
    return f"{100 / sizes.pop():.2g} points" if len(sizes) == 1 else ""


def pct(values, resolution: str = "") -> str:
    return ci(values, ".2f", 100.0, resolution=resolution)


def epochs_cell(values) -> str:
    return ci(values, ".1f", resolution="1 epoch")


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


def listing(series) -> str:
    """The distinct values of `series` (None and NaN left out), sorted as text and joined with commas."""
    return ", ".join(unique(series))


def per_label(frame: pd.DataFrame, row) -> pd.DataFrame:
    """A table with one row per label of `frame`, in order: its `model`, then the cells `row(label, group)` gives."""
    return pd.DataFrame([{"model": label, **row(label, group)} for label, group in frame.groupby("label", sort=True)])


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


def wrap_prose(markdown: str, width: int = 160) -> str:
    """Every prose line longer than `width` hard-wrapped (markdown renders it the same): bullets continue
    indented, quotes continue quoted; tables, headings and images are left as they are."""
    out = []
    for line in markdown.split("\n"):
        if len(line) <= width or line.startswith(("|", "#", "![")):
            out.append(line)
            continue
        first, rest = ("- ", "  ") if line.startswith("- ") else ("> ", "> ") if line.startswith("> ") else ("", "")
        body = line[len(first) :]
        out += textwrap.wrap(
            body,
            width,
            initial_indent=first,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(out)
