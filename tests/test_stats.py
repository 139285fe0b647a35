"""The report's statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from archbench.report.stats import PAIRED, WELCH, compare, seeds_needed, t_interval
from archbench.report.text import ci, p_text, verdict

T975_DF2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom
Z = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.8


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
    # both samples have s = 0.1, so the pooled s is 0.1; d = 0.05
    assert c.sd == pytest.approx(0.1)
    expected = math.ceil(2 * Z**2 * 0.1**2 / 0.05**2)
    assert expected == 63 and c.seeds_needed == expected
    text = verdict(c)
    assert text.startswith("not resolved with 3 seeds (p = 0.57, Welch, n = 3 vs 3)")
    assert "about 63 seeds per model" in text and "normal approximation" in text


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


def test_seeds_needed_rounds_up_and_has_no_answer_for_no_difference():
    assert seeds_needed(0.05, 0.1) == 63
    assert seeds_needed(1.0, 0.1) == 2  # at least two seeds to have a spread at all
    assert seeds_needed(0.0, 0.1) is None


def test_too_few_seeds_for_the_normal_approximation_is_said_so():
    c = compare({0: 0.10, 1: 0.12}, {0: 0.20, 1: 0.17})  # a large difference, two seeds, not resolved
    assert not c.resolved and c.seeds_needed <= 2
    assert "no more than were run: at so few seeds it understates what the t-test needs" in verdict(c)
