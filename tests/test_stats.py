"""The report's statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from archbench.report.claims import BALANCED, EXPLODING, UNDETERMINED, VANISHING, direction
from archbench.report.stats import (
    ONE_SAMPLE,
    PAIRED,
    PERMUTATION,
    RANK_SUM,
    SIGN_FLIP,
    SIGNED_RANK,
    WELCH,
    compare,
    compare_times,
    finite,
    holm,
    one_sample,
    t_interval,
)
from archbench.report.text import ci, geometric_ci, p_text

T975_DF2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom


def test_t_interval_by_hand():
    interval = t_interval([1, 2, 3])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(T975_DF2 * 1.0 / math.sqrt(3), abs=1e-9)
    assert round(interval.half_width, 4) == 2.4841
    assert ci([1, 2, 3], ".2f") == "2.00 ± 2.48 (n=3)"


def test_one_value_has_no_interval_and_none_is_a_dash():
    one = t_interval([0.5, float("nan"), None])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.half_width)
    assert ci([0.5], ".2f", 100.0) == "50.00 (n=1, no interval)"
    assert ci([], ".2f") == "—"


def test_a_clear_difference_resolves_with_welch():
    c = compare({0: 0.50, 1: 0.51, 2: 0.52}, {3: 0.30, 4: 0.31, 5: 0.32})
    assert c.test == WELCH
    result = scipy_stats.ttest_ind([0.50, 0.51, 0.52], [0.30, 0.31, 0.32], equal_var=False)
    assert c.p == pytest.approx(result.pvalue) and c.statistic == pytest.approx(result.statistic)
    assert c.resolved and c.p < 0.001
    assert c.difference == pytest.approx(0.2)


def test_the_same_seeds_pair_up():
    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.45, 1: 0.56, 2: 0.64}
    c = compare(a, b)
    assert c.test == PAIRED
    assert c.p == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert c.resolved  # the seed effect is shared, so the small per-seed differences are consistent
    assert compare(a, {3: 0.45, 4: 0.56, 5: 0.64}).test == WELCH


def test_constant_paired_differences_use_the_exact_sign_flip_test_never_welch():
    # a = 40, 50, 60 and b = 30, 40, 50: every seed 10 apart. The paired t statistic is undefined; Welch would
    # say p = 0.29. Of the 2^3 sign patterns of the differences, the two with every sign alike are as extreme
    # as this one: p = 2 / 8 exactly.
    c = compare({0: 40, 1: 50, 2: 60}, {0: 30, 1: 40, 2: 50})
    assert c.test == SIGN_FLIP and c.test != WELCH
    assert c.p == 0.25 and c.constant == 10 and c.statistic == 10
    assert not c.resolved  # 3 seeds cannot resolve it, whatever the difference
    six = compare({s: 0.5 for s in range(6)}, {s: 0.4 for s in range(6)})
    assert six.test == SIGN_FLIP and six.p == pytest.approx(2 / 64) and six.resolved
    same = compare({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same.test == SIGN_FLIP and same.p == 1.0 and same.constant == 0
    # neither side varies and the seeds differ: the exact permutation test (2 of C(4, 2) = 6 splits)
    flat = compare({0: 0.5, 1: 0.5}, {2: 0.4, 3: 0.4})
    assert flat.test == PERMUTATION and flat.p == pytest.approx(2 / 6)
    single = compare({0: 0.5}, {0: 0.4, 1: 0.3})
    assert single.test is None and math.isnan(single.p)


def test_one_sample_against_zero():
    values = {0: -0.5, 1: -0.7, 2: -0.6}
    c = one_sample(values)
    assert c.test == ONE_SAMPLE and c.p == pytest.approx(scipy_stats.ttest_1samp(list(values.values()), 0).pvalue)
    constant = one_sample({0: -1.0, 1: -1.0, 2: -1.0, 3: -1.0, 4: -1.0, 5: -1.0})
    assert constant.test == SIGN_FLIP and constant.p == pytest.approx(2 / 64) and constant.constant == -1.0


def test_holm_on_a_hand_computed_family():
    # Holm 1979: sort the m = 4 tested p-values, multiply the k-th smallest by m - k + 1, take the running
    # maximum, cap at 1: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08, raised to 0.09; 0.50 x 1 = 0.50.
    # NaN is untested and does not count in m.
    raw = [0.04, 0.50, 0.01, math.nan, 0.03]
    adjusted = holm(raw)
    assert adjusted[:3] == pytest.approx([0.09, 0.50, 0.04]) and adjusted[4] == pytest.approx(0.09)
    assert math.isnan(adjusted[3])
    assert holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # 2.1 and 1.6 capped at 1
    assert all(a >= r for a, r in zip(adjusted, raw) if not math.isnan(r))


def test_gradient_direction_is_named_by_the_95_percent_interval_of_the_log_ratio():
    log = math.log10
    assert direction([log(0.05), log(0.049), log(0.051)]) == VANISHING  # 20x below the last's, every seed
    assert direction([log(176), log(170), log(180)]) == EXPLODING  # 176x above: plain-34 at step 0
    assert direction([log(0.342), log(0.35), log(0.33)]) == BALANCED
    # a mean beyond a factor of 10 whose interval reaches inside it is not named vanishing or exploding
    assert direction([-1.3, -0.2, -2.5]) == UNDETERMINED and direction([1.5, 0.9, 1.2]) == UNDETERMINED
    assert direction([-1.3]) == UNDETERMINED  # one seed: no interval
    assert direction([float("nan")]) == "not measured"


def test_finite_drops_infinities_as_compare_promises():
    assert finite([1.0, math.inf, -math.inf, float("nan"), None, 2]) == [1.0, 2.0]
    assert t_interval([1.0, 2.0, math.inf]).n == 2


def test_a_seed_one_side_lacks_is_dropped_and_the_rest_still_pair():
    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.45, 1: 0.56}
    c = compare(a, b)
    assert c.test == PAIRED and c.n_a == c.n_b == 2 and c.dropped == ((2,), ())
    assert c.p == pytest.approx(scipy_stats.ttest_rel([0.50, 0.60], [0.45, 0.56]).pvalue)
    assert compare(a, {0: 0.45, 3: 0.56}).test == WELCH  # one shared seed: nothing to pair


def test_times_with_a_never_reached_seed_use_exact_rank_tests_with_infinity_ranked_last():
    a, b = {0: 2.0, 1: 2.0, 2: 3.0}, {0: 4.0, 1: 4.0, 2: math.inf}
    c = compare_times(a, b)
    assert c.test == SIGNED_RANK and math.isinf(c.mean_b) and c.mean_a == pytest.approx(7 / 3)
    # the oracle: scipy's exact signed-rank test with ∞ replaced by any time beyond every finite one
    assert c.p == pytest.approx(scipy_stats.wilcoxon([2, 2, 3], [4, 4, 99], method="exact").pvalue)
    unpaired = compare_times(a, {5: 4.0, 6: 4.0, 7: math.inf})
    expected = scipy_stats.mannwhitneyu([2, 2, 3], [4, 4, 99], method="exact").pvalue
    assert unpaired.test == RANK_SUM and unpaired.p == pytest.approx(expected)
    both = compare_times({0: math.inf, 1: 3.0}, {0: math.inf, 1: 3.0})  # ∞ against ∞ is a tie, not NaN
    assert both.p == 1.0


def test_p_values_never_round_across_the_threshold():
    assert p_text(0.012) == "p = 0.012"
    assert p_text(0.41) == "p = 0.41"
    assert p_text(0.0496) == "p = 0.0496"  # two digits would print 0.05 for a resolved difference
    assert p_text(0.0503) == "p = 0.0503"  # and 0.05, the threshold itself, for one that is not resolved
    assert p_text(0.0004) == "p < 0.001"


def test_every_seed_equal_is_said_never_a_zero_width_interval():
    assert (
        ci([0.52, 0.52, 0.52], ".2f", 100.0, resolution="0.5 points")
        == "52.00 (all 3 seeds equal, resolution 0.5 points)"
    )
    assert "± 0.00" not in ci([0.52, 0.52], ".2f", 100.0)


def test_a_ratio_over_seeds_is_the_geometric_mean_the_claims_test():
    # first/last ratios 0.1, 1 and 10: the mean log10 the claims test is 0, i.e. a ratio of 1 (the
    # arithmetic mean, 3.7, would read as towards exploding)
    half = T975_DF2 * 1.0 / math.sqrt(3)  # the t half-width of log10 values -1, 0, 1
    assert geometric_ci([0.1, 1.0, 10.0], ".3g") == f"1 ×/÷ {10**half:.3g} (n=3)"
    assert geometric_ci([0.5], ".3g") == "0.5 (n=1, no interval)"
