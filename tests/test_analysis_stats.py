"""iakd.analysis.stats: means with 95 % Student-t intervals and differences paired by seed, on numbers
whose answers are worked out by hand here."""

from __future__ import annotations

import math

import pytest

from iakd.analysis.stats import Interval, mean_interval, paired_difference

# Student t, 97.5 % quantiles. With 2 degrees of freedom the closed form below gives 4.30265272974946385...
# (the often-quoted 4.302652729911275 is off in the tenth digit).
T_975_2 = 4.302652729749464
T_975_3 = 3.182446305284263  # 3 degrees of freedom
REL = 1e-9  # quantiles computed numerically agree to about 1e-12 relative; a looser bound keeps the test portable


def test_the_two_degree_quantile_has_a_closed_form():
    # with 2 degrees of freedom F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t_p = a sqrt(2 / (1 - a^2)), a = 2p - 1
    a = 2 * 0.975 - 1
    assert a * math.sqrt(2 / (1 - a * a)) == pytest.approx(T_975_2, rel=1e-15)


def test_mean_and_interval_of_three_values():
    # mean 2, sample sd 1 (deviations -1, 0, 1; sum of squares 2 over n - 1 = 2), so half-width t * 1 / sqrt(3)
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.n == 3
    assert interval.mean == pytest.approx(2.0)
    assert interval.half_width == pytest.approx(T_975_2 / math.sqrt(3), rel=REL)
    assert (interval.low, interval.high) == pytest.approx((2.0 - 2.484137712, 2.0 + 2.484137712), rel=1e-9)


def test_mean_and_interval_of_four_accuracies():
    # 90, 92, 91, 95: mean 92, deviations -2, 0, -1, 3, sum of squares 14, sd sqrt(14 / 3)
    interval = mean_interval([90.0, 92.0, 91.0, 95.0])
    assert interval.mean == pytest.approx(92.0)
    assert interval.half_width == pytest.approx(T_975_3 * math.sqrt(14 / 3) / 2, rel=REL)


def test_another_confidence_level_uses_its_own_quantile():
    # t_{0.95, 2} = 2.919985580355516
    assert mean_interval([1.0, 2.0, 3.0], confidence=0.90).half_width == pytest.approx(
        2.919985580355516 / math.sqrt(3), rel=REL)


def test_one_value_has_no_interval_and_says_n_a():
    interval = mean_interval([97.5])
    assert interval.mean == 97.5 and interval.n == 1 and math.isnan(interval.half_width)
    assert interval.format() == "97.50 ± n/a"


def test_no_values_give_nan_and_format_as_n_a():
    interval = mean_interval([])
    assert interval.n == 0 and math.isnan(interval.mean)
    assert interval.format() == "n/a"


def test_identical_values_have_a_zero_width_interval():
    assert mean_interval([90.0, 90.0, 90.0]).half_width == 0.0


def test_a_confidence_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=95)


def test_paired_difference_pairs_by_seed_not_by_position():
    candidate = {0: 93.0, 1: 94.0, 2: 92.0}
    kd = {2: 91.0, 0: 90.0, 1: 92.5}  # another order: pairing is by seed
    # differences 3.0, 1.5, 1.0: mean 11/6; deviations 7/6, -1/3, -5/6; sum of squares (49 + 4 + 25) / 36 = 13/6
    diff = paired_difference(candidate, kd)
    assert diff.n == 3
    assert diff.mean == pytest.approx(11 / 6)
    assert diff.half_width == pytest.approx(T_975_2 * math.sqrt(13 / 12) / math.sqrt(3), rel=REL)


def test_paired_difference_is_narrower_than_the_unpaired_spread_when_seeds_move_together():
    # both move with the seed; the configuration is always exactly 1 point better
    candidate, baseline = {0: 91.0, 1: 96.0, 2: 86.0}, {0: 90.0, 1: 95.0, 2: 85.0}
    diff = paired_difference(candidate, baseline)
    assert diff.mean == pytest.approx(1.0) and diff.half_width == pytest.approx(0.0)
    assert mean_interval(candidate.values()).half_width > 10


def test_paired_difference_uses_only_the_seeds_both_sides_have():
    diff = paired_difference({0: 2.0, 1: 4.0, 7: 100.0}, {0: 1.0, 1: 1.0, 9: -100.0})
    assert diff.n == 2 and diff.mean == pytest.approx(2.0)  # (1 + 3) / 2


def test_paired_difference_with_one_common_seed_has_no_interval():
    diff = paired_difference({0: 92.0}, {0: 90.0})
    assert diff.mean == 2.0 and math.isnan(diff.half_width)
    assert diff.format(signed=True) == "+2.00 ± n/a"


def test_format_shows_mean_and_half_width():
    assert Interval(92.0, 1.23456, 3).format() == "92.00 ± 1.23"
    assert Interval(-0.5, 0.25, 3).format(digits=1, signed=True) == "-0.5 ± 0.2"
