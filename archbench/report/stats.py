"""Statistics over seeds: confidence intervals, tests of a difference, and the seeds a difference would need.

Every mean the report prints comes with a 95% confidence interval from Student's t over the seeds
(`t_interval`). Every difference the discussion draws is tested (`compare`): a paired t-test when both
sides ran the same seeds (a seed fixes the initialisation and the data order, so seeds pair up), Welch's
t-test otherwise. A difference that the test does not resolve comes with the number of seeds per model
that the observed spread would need to resolve it (`seeds_needed`: the power of the t-test, from the
noncentral t distribution).
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
MAX_SEEDS = 1000  # `seeds_needed` searches no further
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


def power(
    n: int | np.ndarray, difference: float, sd: float, paired: bool, sd_b: float | None = None, alpha: float = ALPHA
):
    """Power of a two-sided t-test at `alpha` against a true `difference`, with n seeds per model.

    `paired`: a one-sample test of the per-seed differences, whose standard deviation is `sd` (df n - 1,
    noncentrality difference·√n / sd). Otherwise two samples of n each with standard deviations `sd` and
    `sd_b` (`sd` for both when None): Welch's df (n - 1)(sa² + sb²)² / (sa⁴ + sb⁴) and noncentrality
    difference / √((sa² + sb²) / n), which with equal spreads are Student's df 2n - 2 and difference·√(n/2) / sd.
    """
    n = np.asarray(n, dtype=float)
    if paired:
        df, standard_error = n - 1, sd / np.sqrt(n)
    else:
        var_a, var_b = sd**2, (sd if sd_b is None else sd_b) ** 2
        df = (n - 1) * (var_a + var_b) ** 2 / (var_a**2 + var_b**2)
        standard_error = np.sqrt((var_a + var_b) / n)
    noncentrality = difference / standard_error  # the two-sided power is the same for either sign
    t = scipy_stats.t.ppf(1 - alpha / 2, df)
    return scipy_stats.nct.sf(t, df, noncentrality) + scipy_stats.nct.cdf(-t, df, noncentrality)


def seeds_needed(
    difference: float,
    sd: float,
    paired: bool,
    sd_b: float | None = None,
    alpha: float = ALPHA,
    target: float = POWER,
) -> int | None:
    """The fewest seeds per model, counting up from 2, at which the t-test described in `power` detects
    `difference` with power `target`; MAX_SEEDS + 1 when MAX_SEEDS do not reach it; None when there is no
    difference to detect (zero, or not a number) or a spread is not a number."""
    spreads = [sd] if paired or sd_b is None else [sd, sd_b]
    if difference == 0 or not all(math.isfinite(x) for x in [difference, *spreads]):
        return None
    if not any(spreads):  # no spread at all: any difference shows at the fewest seeds
        return 2
    n = np.arange(2, MAX_SEEDS + 1)
    enough = np.flatnonzero(power(n, difference, sd, paired, sd_b, alpha) >= target)
    return int(n[enough[0]]) if enough.size else MAX_SEEDS + 1


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
    sd_a: float  # each model's sample standard deviation over its seeds (NaN with fewer than two)
    sd_b: float
    sd_differences: float = math.nan  # of the per-seed differences a - b, when PAIRED

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def resolved(self) -> bool:
        return self.test is not None and self.p < ALPHA

    @property
    def seeds_needed(self) -> int | None:
        """Seeds per model the observed difference and spread would need (`seeds_needed`), planned for the
        test used: paired on the per-seed differences, else Welch's on the two spreads; None if untested."""
        if self.test is None:
            return None
        if self.test == PAIRED:
            return seeds_needed(self.difference, self.sd_differences, paired=True)
        return seeds_needed(self.difference, self.sd_a, paired=False, sd_b=self.sd_b)


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


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
    sides = (mean_a, mean_b, len(va), len(vb))
    spreads = (_sd(va), _sd(vb))
    if len(va) < 2 or len(vb) < 2:
        return Comparison(*sides, None, math.nan, *spreads)
    with warnings.catch_warnings():  # scipy warns of precision loss on nearly equal values; the guards decide
        warnings.simplefilter("ignore", RuntimeWarning)
        differences = [x - y for x, y in zip(va, vb)]
        if a.keys() == b.keys() and not _no_spread(differences):
            p = float(scipy_stats.ttest_rel(va, vb).pvalue)
            return Comparison(*sides, PAIRED, p, *spreads, _sd(differences))
        if _no_spread(va) and _no_spread(vb):
            return Comparison(*sides, None, math.nan, *spreads)
        p = float(scipy_stats.ttest_ind(va, vb, equal_var=False).pvalue)
    return Comparison(*sides, WELCH, p, *spreads)
