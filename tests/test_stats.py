"""The report's statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from archbench.report.stats import MAX_SEEDS, PAIRED, WELCH, compare, seeds_needed, t_interval
from archbench.report.text import ci, p_text, verdict

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
    assert c.p == pytest.approx(scipy_stats.ttest_ind([0.50, 0.51, 0.52], [0.30, 0.31, 0.32], equal_var=False).pvalue)
    assert c.resolved and c.p < 0.001
    assert c.difference == pytest.approx(0.2)
    assert verdict(c) == "resolved (p < 0.001, Welch, n = 3 vs 3)"


def test_an_overlapping_difference_does_not_resolve_and_says_how_many_seeds_would():
    c = compare({0: 0.4, 1: 0.5, 2: 0.6}, {3: 0.45, 4: 0.55, 5: 0.35})
    assert c.test == WELCH and not c.resolved
    assert c.p == pytest.approx(0.5734, abs=1e-4)
    # both samples have s = 0.1 and d = 0.05: Cohen's d = 0.5, whose two-sample t-test needs 64 per group
    assert c.sd_a == pytest.approx(0.1) and c.sd_b == pytest.approx(0.1)
    assert c.seeds_needed == 64
    text = verdict(c)
    assert text.startswith("not resolved with 3 seeds (p = 0.57, Welch, n = 3 vs 3)")
    assert text.endswith(
        "; at the observed spread 64 seeds per model would resolve a difference this size with 80% power"
    )


def test_the_same_seeds_pair_up():
    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.45, 1: 0.56, 2: 0.64}
    c = compare(a, b)
    assert c.test == PAIRED
    assert c.p == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert c.resolved  # the seed effect is shared, so the small per-seed differences are consistent
    assert compare(a, {3: 0.45, 4: 0.56, 5: 0.64}).test == WELCH
    assert "paired, n = 3 vs 3" in verdict(c)


def test_constant_differences_fall_back_to_welch_and_no_spread_is_not_testable():
    c = compare({0: 0.50, 1: 0.51, 2: 0.52}, {0: 0.30, 1: 0.31, 2: 0.32})  # every seed 0.2 apart
    assert c.test == WELCH and c.resolved
    flat = compare({0: 0.5, 1: 0.5}, {0: 0.4, 1: 0.4})
    assert flat.test is None and not flat.resolved
    assert verdict(flat).startswith("not testable: no seed-to-seed spread")
    single = compare({0: 0.5}, {0: 0.4, 1: 0.3})
    assert single.test is None and verdict(single) == "not testable: one seed on at least one side"


def test_p_values_never_round_across_the_threshold():
    assert p_text(0.012) == "p = 0.012"
    assert p_text(0.41) == "p = 0.41"
    assert p_text(0.0496) == "p = 0.0496"  # two digits would print 0.05 for a resolved difference
    assert p_text(0.0503) == "p = 0.0503"  # and 0.05, the threshold itself, for one that is not resolved
    assert p_text(0.0004) == "p < 0.001"


# Seeds per group for a two-sided t-test at alpha 0.05 with 80% power, by the standardised effect d (Cohen 1988,
# Tables 2.4.1 and 2.3.5; G*Power gives the same): one sample (paired differences) and two samples of equal size.
ONE_SAMPLE = {0.5: 34, 1.0: 10, 0.2: 199}
TWO_SAMPLE = {0.5: 64, 0.8: 26, 1.0: 17, 0.2: 394}


def _power_by_hand(n: int, d: float, paired: bool) -> float:
    df = n - 1 if paired else 2 * n - 2
    delta = d * math.sqrt(n if paired else n / 2)
    t = scipy_stats.t.ppf(0.975, df)
    return scipy_stats.nct.sf(t, df, delta) + scipy_stats.nct.cdf(-t, df, delta)


@pytest.mark.parametrize(("paired", "table"), [(True, ONE_SAMPLE), (False, TWO_SAMPLE)], ids=["paired", "two-sample"])
def test_seeds_needed_matches_the_published_t_test_sample_sizes(paired, table):
    for d, n in table.items():
        assert seeds_needed(d * 0.1, 0.1, paired=paired) == n
        assert seeds_needed(-d * 0.1, 0.1, paired=paired) == n  # the sign of the difference does not matter
        # the fewest: 80% power at n, not at n - 1
        assert _power_by_hand(n - 1, d, paired) < 0.8 <= _power_by_hand(n, d, paired)


def test_seeds_needed_has_no_answer_for_no_difference_and_a_cap():
    assert seeds_needed(0.0, 0.1, paired=True) is None
    assert seeds_needed(float("nan"), 0.1, paired=False) is None
    # two seeds leave one degree of freedom (t_0.975 = 12.7): even d = 10 has about 73% power there, so three
    assert seeds_needed(1.0, 0.1, paired=True) == 3
    assert seeds_needed(1.0, 0.0, paired=True) == 2  # no spread at all: the fewest seeds that have one
    assert seeds_needed(0.001, 1.0, paired=False) == MAX_SEEDS + 1
    c = compare({0: 0.0, 1: 1.0, 2: 2.0}, {0: -0.01, 1: 1.01, 2: 1.9985})  # differences 0.01, -0.01, 0.0015
    assert c.test == PAIRED and c.seeds_needed == MAX_SEEDS + 1
    assert verdict(c).endswith(
        f"; at the observed spread more than {MAX_SEEDS} seeds per model would be needed for 80% power"
    )


def test_a_paired_difference_plans_with_the_spread_of_the_differences():
    # per-seed differences 0, 0.1, 0.2: mean 0.1, sd 0.1, so d = 1 for the paired test (10 seeds), while the two
    # models' own spreads (0.2 and 0.1) would plan an unpaired test of 0.1 at more than three times as many
    a, b = {0: 0.3, 1: 0.5, 2: 0.7}, {0: 0.3, 1: 0.4, 2: 0.5}
    c = compare(a, b)
    assert c.test == PAIRED and not c.resolved
    assert c.sd_differences == pytest.approx(0.1)
    assert c.seeds_needed == 10
    assert seeds_needed(c.difference, c.sd_a, paired=False, sd_b=c.sd_b) > 30
    assert "; at the observed spread 10 seeds per model would resolve" in verdict(c)


def test_welch_plans_with_each_models_spread():
    # s_a = 0.3, s_b = 0.1, d = 0.1: Welch's df (n - 1)(0.09 + 0.01)^2 / (0.0081 + 0.0001) and noncentrality
    # 0.1 / sqrt(0.1 / n), written out here
    def power(n: int) -> float:
        df = (n - 1) * 0.1**2 / (0.3**4 + 0.1**4)
        delta = 0.1 / math.sqrt(0.1 / n)
        t = scipy_stats.t.ppf(0.975, df)
        return scipy_stats.nct.sf(t, df, delta) + scipy_stats.nct.cdf(-t, df, delta)

    needed = seeds_needed(0.1, 0.3, paired=False, sd_b=0.1)
    assert needed == 81
    assert power(80) < 0.8 <= power(81)
    assert seeds_needed(0.05, 0.1, paired=False, sd_b=0.1) == TWO_SAMPLE[0.5]  # equal spreads: Student's df 2n - 2
    c = compare({0: 0.4, 1: 0.5, 2: 0.6}, {3: 0.3, 4: 0.31, 5: 0.29})
    assert c.test == WELCH and c.seeds_needed == seeds_needed(0.2, 0.1, paired=False, sd_b=0.01)


def test_every_unresolved_difference_gets_a_number_above_the_seeds_run():
    # a large difference on two seeds, one just short of p < 0.05 on three (paired, p = 0.054), and Welch's test
    # of unequal spreads (p = 0.073): the test at the seeds run missed each, so the plan must ask for more
    for a, b in [
        ({0: 0.10, 1: 0.12}, {0: 0.20, 1: 0.17}),
        ({0: 0.40, 1: 0.45, 2: 0.38}, {0: 0.20, 1: 0.37, 2: 0.23}),
        ({0: 0.4, 1: 0.5, 2: 0.6}, {3: 0.3, 4: 0.31, 5: 0.29}),
    ]:
        c = compare(a, b)
        assert not c.resolved
        assert c.seeds_needed > max(c.n_a, c.n_b)
        assert f"; at the observed spread {c.seeds_needed} seeds per model would resolve" in verdict(c)
