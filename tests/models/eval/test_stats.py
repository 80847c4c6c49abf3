"""Intervals over seeds and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.eval.stats import bootstrap, interval, paired, separated, t_quantile


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


def test_bootstrap_covers_seeds_and_queries_and_pairs_by_query() -> None:
    rng = np.random.default_rng(0)
    # 5 seeds x 400 queries: per-query difficulty shared by every seed, plus a per-seed shift
    difficulty = rng.random(400)
    shift = np.array([-0.04, -0.02, 0.0, 0.02, 0.04])
    trained = (rng.random((5, 400)) < np.clip(difficulty + 0.1 + shift[:, None], 0, 1)).astype(float)
    baseline = (rng.random((5, 400)) < difficulty).astype(float)
    mean, low, high = bootstrap(trained)
    assert mean == trained.mean() and low < mean < high
    # the seed level counts: the same queries with the seed-to-seed variation averaged away are tighter
    _, q_low, q_high = bootstrap(np.repeat(trained.mean(0, keepdims=True), 5, axis=0))
    assert high - low > 1.4 * (q_high - q_low)  # measured: 0.106 vs 0.063
    # paired by query: the shared difficulty cancels, so the difference is tighter than two independent
    # rows' widths combined (measured: 0.090 vs sqrt(0.106² + 0.083²) = 0.134)
    d_mean, d_low, d_high = bootstrap(trained, baseline)
    assert abs(d_mean - (trained.mean() - baseline.mean())) < 1e-12 and d_low > 0
    _, b_low, b_high = bootstrap(baseline)
    assert d_high - d_low < 0.8 * math.hypot(high - low, b_high - b_low)
    assert bootstrap(trained, resamples=500, seed=3) == bootstrap(trained, resamples=500, seed=3)  # seeded
    with pytest.raises(ValueError, match="same seeds and queries"):
        bootstrap(trained, baseline[:, :10])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        bootstrap(trained[:1])
