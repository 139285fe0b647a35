"""Statistics over seeds: confidence intervals, tests of a difference, and the seeds a difference would need.

Every mean the report prints comes with a 95% confidence interval from Student's t over the seeds
(`t_interval`). Every difference the discussion draws is tested (`compare`): a paired t-test when both
sides ran the same seeds (a seed fixes the initialisation and the data order, so seeds pair up), Welch's
t-test otherwise. A difference that the test does not resolve comes with the number of seeds per model
that the observed spread would need to resolve it (`seeds_needed`, a normal approximation).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # of every interval
ALPHA = 0.05  # a difference is resolved when p < ALPHA (two-sided)
POWER = 0.8  # the power `seeds_needed` plans for
PAIRED, WELCH = "paired", "Welch"


def finite(values) -> list[float]:
    """The values that are numbers (None and NaN dropped), as floats."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _no_spread(values: list[float]) -> bool:
    """All equal, to rounding: a t statistic would divide by (nearly) zero."""
    return float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.max(np.abs(values))))


@dataclass(frozen=True)
class Interval:
    """A mean over n seeds and the half-width of its t interval (NaN with fewer than two seeds)."""

    mean: float
    half_width: float
    n: int


def t_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student's t half-width t_{(1+c)/2, n-1} * s / sqrt(n) of the finite values."""
    v = finite(values)
    if not v:
        return Interval(math.nan, math.nan, 0)
    if len(v) == 1:
        return Interval(v[0], math.nan, 1)
    sd = float(np.std(v, ddof=1))
    t = float(scipy_stats.t.ppf((1 + confidence) / 2, len(v) - 1))
    return Interval(float(np.mean(v)), t * sd / math.sqrt(len(v)), len(v))


def pooled_sd(a: list[float], b: list[float]) -> float:
    """The pooled sample standard deviation of two groups of at least two values each."""
    var_a, var_b = np.var(a, ddof=1), np.var(b, ddof=1)
    return float(math.sqrt(((len(a) - 1) * var_a + (len(b) - 1) * var_b) / (len(a) + len(b) - 2)))


def seeds_needed(difference: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per model for a two-sided test at `alpha` to detect `difference` with `power`, given a
    seed-to-seed standard deviation `sd`: n = 2 (z_{1-alpha/2} + z_power)^2 sd^2 / difference^2, rounded up
    (the normal approximation for two independent groups). None when the difference is zero."""
    if difference == 0 or not math.isfinite(difference) or not math.isfinite(sd):
        return None
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    return max(2, math.ceil(2 * z**2 * sd**2 / difference**2))


@dataclass(frozen=True)
class Comparison:
    """A test of mean(a) - mean(b) over seeds. `test` is PAIRED, WELCH, or None when it cannot be tested
    (fewer than two seeds on a side, or no spread on either side); `p` is then NaN."""

    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    test: str | None
    p: float
    sd: float  # pooled seed-to-seed standard deviation (NaN with fewer than two seeds on a side)

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def resolved(self) -> bool:
        return self.test is not None and self.p < ALPHA

    @property
    def seeds_needed(self) -> int | None:
        return seeds_needed(self.difference, self.sd)


def compare(a: dict[int, float], b: dict[int, float]) -> Comparison:
    """Test a difference of means between two models, each given as {seed: value}.

    Paired t-test when both ran the same seeds (and the per-seed differences vary), Welch's t-test
    otherwise. Non-finite values are dropped with their seed first.
    """
    a = {s: float(v) for s, v in a.items() if finite([v])}
    b = {s: float(v) for s, v in b.items() if finite([v])}
    va, vb = [a[s] for s in sorted(a)], [b[s] for s in sorted(b)]
    mean_a = float(np.mean(va)) if va else math.nan
    mean_b = float(np.mean(vb)) if vb else math.nan
    if len(va) < 2 or len(vb) < 2:
        return Comparison(mean_a, mean_b, len(va), len(vb), None, math.nan, math.nan)
    sd = pooled_sd(va, vb)
    with warnings.catch_warnings():  # scipy warns of precision loss on nearly equal values; the guards decide
        warnings.simplefilter("ignore", RuntimeWarning)
        if a.keys() == b.keys() and not _no_spread([x - y for x, y in zip(va, vb)]):
            p = float(scipy_stats.ttest_rel(va, vb).pvalue)
            return Comparison(mean_a, mean_b, len(va), len(vb), PAIRED, p, sd)
        if _no_spread(va) and _no_spread(vb):
            return Comparison(mean_a, mean_b, len(va), len(vb), None, math.nan, sd)
        p = float(scipy_stats.ttest_ind(va, vb, equal_var=False).pvalue)
    return Comparison(mean_a, mean_b, len(va), len(vb), WELCH, p, sd)
