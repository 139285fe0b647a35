"""The report's statistics (archbench.report.stats) against the formulas written out by hand, on data chosen so
that the plausible wrong choices (Student's pooled test for Welch's, the normal quantile for Student's t,
population variances for sample ones) give other numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from archbench.report.stats import WELCH, compare, t_interval

# Different seeds, sizes and spreads: Welch's p is 0.139 here, Student's pooled test gives 0.217.
SPREAD = {0: 0.50, 1: 0.52, 2: 0.61, 3: 0.40, 4: 0.58}
TIGHT = {10: 0.45, 11: 0.46, 12: 0.455}


def _sample_variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_unequal_spreads_and_sizes_are_tested_with_welch_not_students_pooled_test():
    a, b = list(SPREAD.values()), list(TIGHT.values())
    se_a, se_b = _sample_variance(a) / len(a), _sample_variance(b) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(se_a + se_b)
    df = (se_a + se_b) ** 2 / (se_a**2 / (len(a) - 1) + se_b**2 / (len(b) - 1))  # Welch-Satterthwaite
    welch_p = 2 * scipy_stats.t.sf(abs(t), df)
    pooled = ((len(a) - 1) * _sample_variance(a) + (len(b) - 1) * _sample_variance(b)) / (len(a) + len(b) - 2)
    student_t = (np.mean(a) - np.mean(b)) / math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    student_p = 2 * scipy_stats.t.sf(abs(student_t), len(a) + len(b) - 2)
    assert abs(welch_p - student_p) > 0.05  # the data tell the two tests apart

    c = compare(SPREAD, TIGHT)
    assert c.test == WELCH and (c.n_a, c.n_b) == (5, 3)
    assert c.p == pytest.approx(welch_p, rel=1e-9)


def test_the_interval_uses_students_t_with_n_minus_1_degrees_of_freedom():
    values = list(SPREAD.values())
    t_975_df4 = 2.7764451051977987  # Student's t, 97.5% quantile, 4 degrees of freedom (tables)
    interval = t_interval(values)
    assert interval.n == 5 and interval.mean == pytest.approx(sum(values) / 5)
    assert interval.half_width == pytest.approx(t_975_df4 * math.sqrt(_sample_variance(values) / 5), rel=1e-9)
    assert interval.half_width > 1.959964 * math.sqrt(_sample_variance(values) / 5) * 1.3  # wider than normal's
