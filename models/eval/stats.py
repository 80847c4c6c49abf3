"""Mean ± 95% intervals over seeds and paired differences: the one place the benches and ``ers eval`` compute them.

Seeds are few (5 is the floor), so the interval is Student-t on the seed means, not a normal
approximation. Two rows measured on the same seeds (the same split and initialisation) are compared
by the interval of their per-seed differences, which removes the seed-to-seed variance they share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# two-sided 97.5% quantiles of Student's t by degrees of freedom (scipy is not a dependency)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip


def t_quantile(df: int) -> float:
    """t_{0.975, df}; between tabulated values the next smaller df's (slightly wider: conservative)."""
    if df < 1:
        raise ValueError("an interval needs at least two values")
    return T975[max(d for d in T975 if d <= df)] if df <= 120 else 1.96


def interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval); the half-width is 0 for a single value."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values")
    if a.size == 1:
        return float(a[0]), 0.0
    return float(a.mean()), float(t_quantile(a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean ± 95% half-width of a − b over the same seeds."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)}")
    return interval([x - y for x, y in zip(a, b, strict=True)])


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when interval a lies wholly above interval b."""
    return a[0] - a[1] > b[0] + b[1]


def bootstrap(
    scores: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]] | None = None,
    resamples: int = 4000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, 2.5th percentile, 97.5th percentile) of the mean score, resampling seeds and queries.

    ``scores[s][q]`` is query q's score under seed s (the same queries for every seed). With
    ``baseline`` (same shape, the same seeds and queries), the statistic is the paired difference
    scores − baseline: each resample draws seeds, then queries, and takes both rows at the same draw.
    """
    a = np.asarray(scores, dtype=np.float64)  # (S, Q)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"need scores of >= 2 seeds x >= 2 queries, got shape {a.shape}")
    if baseline is not None:
        b = np.asarray(baseline, dtype=np.float64)
        if b.shape != a.shape:
            raise ValueError(f"paired scores need the same seeds and queries: {a.shape} vs {b.shape}")
        a = a - b
    rng = np.random.default_rng(seed)
    n_seeds, n_queries = a.shape
    means = np.empty(resamples)
    for i in range(resamples):  # seeds first, then queries: the two levels of the design
        rows = a[rng.integers(0, n_seeds, n_seeds)]  # (S, Q)
        means[i] = rows[:, rng.integers(0, n_queries, n_queries)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(a.mean()), float(low), float(high)
