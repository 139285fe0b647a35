"""Statistics over seeds: Student's t intervals, tests of a difference (`compare`, `compare_times`,
`one_sample`) and Holm's adjustment per family. Which test decides when is in docs/report.md."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # of every interval
ALPHA = 0.05  # a claim is resolved when its Holm-adjusted p < ALPHA (two-sided)
PAIRED, WELCH, ONE_SAMPLE = "paired t", "Welch t", "one-sample t"
SIGN_FLIP, PERMUTATION = "exact sign-flip", "exact permutation"
SIGNED_RANK, RANK_SUM = "exact signed-rank", "exact rank-sum"  # for times, where a run that never arrived is ∞


def finite(values) -> list[float]:
    """The values that are finite numbers (None, NaN and ±inf dropped), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


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


@dataclass(frozen=True)
class Comparison:
    """A test of mean(a) - mean(b) over seeds (or, for `one_sample`, of mean(a) against 0). `test` names the
    test or is None when nothing can be tested (fewer than two seeds on a side; `p` is then NaN). `constant`
    is the difference every seed showed, when the per-seed differences (or one-sample values) are all alike."""

    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    test: str | None
    p: float
    statistic: float = math.nan  # t for the t-tests; the (constant) mean difference for the exact tests
    constant: float | None = None
    dropped: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # seeds of a, of b left out of a paired test

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def resolved(self) -> bool:
        """Unadjusted: p < ALPHA. Verdicts use the Holm-adjusted p of their family (`holm`)."""
        return self.test is not None and self.p < ALPHA


def sign_flip_p(n: int, difference: float) -> float:
    """Exact two-sided sign-flip p of n paired differences that all equal `difference` (2 of 2^n patterns)."""
    return 1.0 if difference == 0 else min(1.0, 2.0 / 2**n)


def _paired(a: dict[int, float], b: dict[int, float], keep):
    """`a` and `b` (their values that `keep` accepts, None never) on their shared seeds (when at least two)
    and the seeds each side lost; else as they are."""
    a = {s: float(v) for s, v in a.items() if v is not None and keep(float(v))}
    b = {s: float(v) for s, v in b.items() if v is not None and keep(float(v))}
    shared = a.keys() & b.keys()
    if len(shared) < 2:
        return a, b, ((), ())
    dropped = (tuple(sorted(a.keys() - shared)), tuple(sorted(b.keys() - shared)))
    return {s: a[s] for s in sorted(shared)}, {s: b[s] for s in sorted(shared)}, dropped


def _sides(va: list[float], vb: list[float]) -> tuple[float, float, int, int]:
    """Each side's mean (NaN for none; ∞ when a value is ∞) and count."""
    return (float(np.mean(va)) if va else math.nan, float(np.mean(vb)) if vb else math.nan, len(va), len(vb))


def compare(a: dict[int, float], b: dict[int, float]) -> Comparison:
    """Test a difference of means between two models, each given as {seed: value}: paired t on the shared
    seeds (the exact sign-flip test when every difference is the same), else Welch (the exact permutation test
    when neither side varies). Non-finite values are dropped with their seed first."""
    a, b, dropped = _paired(a, b, math.isfinite)
    va, vb = [a[s] for s in sorted(a)], [b[s] for s in sorted(b)]
    sides = _sides(va, vb)
    if len(va) < 2 or len(vb) < 2:
        return Comparison(*sides, None, math.nan)
    with warnings.catch_warnings():  # scipy warns of precision loss on nearly equal values; the guards decide
        warnings.simplefilter("ignore", RuntimeWarning)
        if a.keys() == b.keys():
            differences = [x - y for x, y in zip(va, vb)]
            if _no_spread(differences):
                d = float(np.mean(differences))
                return Comparison(*sides, SIGN_FLIP, sign_flip_p(len(va), d), d, d, dropped)
            result = scipy_stats.ttest_rel(va, vb)
            return Comparison(*sides, PAIRED, float(result.pvalue), float(result.statistic), None, dropped)
        if _no_spread(va) and _no_spread(vb):
            d = sides[0] - sides[1]
            p = 1.0 if d == 0 else min(1.0, 2.0 / math.comb(len(va) + len(vb), len(va)))
            return Comparison(*sides, PERMUTATION, p, d, d)
        result = scipy_stats.ttest_ind(va, vb, equal_var=False)
    return Comparison(*sides, WELCH, float(result.pvalue), float(result.statistic))


def _exact_two_sided(observed: float, statistics: np.ndarray) -> float:
    return float(np.mean(np.abs(statistics) >= abs(observed) - 1e-9))


MOST_SEEDS = 16  # exact enumeration up to 2^16 sign patterns; beyond, the normal approximation of the same statistic


def compare_times(a: dict[int, float], b: dict[int, float]) -> Comparison:
    """Test times to a threshold (fewer is sooner), a run that never reached it ∞ (ranked above every finite
    time; a mean with an ∞ is ∞): the exact signed-rank test on the shared seeds, else the exact rank-sum
    test. The statistic is the signed-rank sum (or the rank sum of a minus its expectation)."""
    a, b, dropped = _paired(a, b, lambda v: not math.isnan(v))
    va, vb = [a[s] for s in sorted(a)], [b[s] for s in sorted(b)]
    sides = _sides(va, vb)
    if len(va) < 2 or len(vb) < 2:
        return Comparison(*sides, None, math.nan)
    if a.keys() == b.keys():
        diffs = [0.0 if x == y else x - y for x, y in zip(va, vb)]
        constant = diffs[0] if len(set(diffs)) == 1 and math.isfinite(diffs[0]) else None
        nonzero = np.array([d for d in diffs if d != 0])
        if not len(nonzero):
            return Comparison(*sides, SIGNED_RANK, 1.0, 0.0, constant, dropped)
        ranks = scipy_stats.rankdata(np.abs(nonzero))
        observed = float(np.sum(np.sign(nonzero) * ranks))
        if len(ranks) <= MOST_SEEDS:
            patterns = np.array(list(itertools.product((-1.0, 1.0), repeat=len(ranks))))
            p = _exact_two_sided(observed, patterns @ ranks)
        else:
            p = float(2 * scipy_stats.norm.sf(abs(observed) / math.sqrt(float(np.sum(ranks**2)))))
        return Comparison(*sides, SIGNED_RANK, p, observed, constant, dropped)
    ranks = scipy_stats.rankdata(va + vb)
    centre = len(va) * (len(ranks) + 1) / 2
    observed = float(np.sum(ranks[: len(va)]) - centre)
    splits = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(len(ranks)), len(va))]) - centre
    return Comparison(*sides, RANK_SUM, _exact_two_sided(observed, splits), observed)


def one_sample(values: dict[int, float]) -> Comparison:
    """Test mean(values) against 0 over seeds: Student's one-sample t, or the exact sign-flip test when every
    seed gave the same value (`sign_flip_p`). `mean_b` is 0."""
    v = finite(values.values())
    mean = float(np.mean(v)) if v else math.nan
    sides = (mean, 0.0, len(v), len(v))
    if len(v) < 2:
        return Comparison(*sides, None, math.nan)
    if _no_spread(v):
        return Comparison(*sides, SIGN_FLIP, sign_flip_p(len(v), mean), mean, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_1samp(v, 0.0)
    return Comparison(*sides, ONE_SAMPLE, float(result.pvalue), float(result.statistic))


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of one family's p-values; NaN (untested) stays NaN, not in m."""
    p = [float(x) for x in p_values]
    tested = sorted((x, i) for i, x in enumerate(p) if not math.isnan(x))
    m, adjusted, running = len(tested), [math.nan] * len(p), 0.0
    for k, (x, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * x))
        adjusted[i] = running
    return adjusted
