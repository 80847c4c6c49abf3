"""Intervals over seeds and paired differences."""

from __future__ import annotations

import math

import pytest

from models.eval.stats import interval, paired, separated, t_quantile


def test_interval_is_student_t_on_the_seed_values() -> None:
    mean, half = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert interval([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no values"):
        interval([])


def test_t_quantile_rounds_towards_the_wider_interval() -> None:
    assert t_quantile(4) == 2.776 and t_quantile(22) == 2.086 and t_quantile(500) == 1.96
    with pytest.raises(ValueError, match="two values"):
        t_quantile(0)


def test_paired_difference_removes_the_shared_seed_variance() -> None:
    a, b = [0.50, 0.60, 0.70, 0.55, 0.65], [0.48, 0.58, 0.68, 0.53, 0.63]  # b = a - 0.02 on every seed
    assert paired(a, b) == pytest.approx((0.02, 0.0))
    assert not separated(interval(a), interval(b))  # unpaired, the intervals overlap
    with pytest.raises(ValueError, match="same seeds"):
        paired(a, b[:3])
