"""Compatibility of a chain of models v1 → v2 → … → vT (Biondi et al., CoReS, TPAMI 2023).

The compatibility matrix holds ``M[i][j] = M(φ_i, φ_j)``: queries of model i against a gallery of
model j, for j ≤ i (the lower triangle; the diagonal is each model's self-test). Two summaries:

* AC, average compatibility: the share of pairs i > j that meet the empirical criterion
  ``M(φ_i, φ_j) > M(φ_j, φ_j)``: ``AC = 2 / (T (T-1)) · Σ_{i>j} 1[M_ij > M_jj]``; AC = 1 means every
  newer model improves on every older gallery without re-embedding it.
* AM, average multi-model accuracy: the mean of the lower triangle including the diagonal,
  ``AM = 2 / (T (T+1)) · Σ_{i≥j} M_ij``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.compat.report import cross_test


def chain_matrix(
    vectors: Sequence[np.ndarray],
    labels: Sequence[Any] | np.ndarray,
    compat_dims: Callable[[int, int], int | None],
    metric: str = "top1",
    leave_self_out: bool = True,
) -> np.ndarray:
    """(T, T) matrix of ``metric`` with NaN above the diagonal; ``vectors[i]`` is model i's embedding
    of the evaluation items and ``compat_dims(i, j)`` the prefix for i-queries on j-vectors."""
    t = len(vectors)
    y = np.asarray(labels)
    out = np.full((t, t), np.nan)
    for i in range(t):
        for j in range(i + 1):
            dims = None if i == j else compat_dims(i, j)
            if i != j and dims is None:
                raise ValueError(f"model {i} is not compatible with model {j}; the chain is broken")
            out[i, j] = cross_test(vectors[i], y, vectors[j], y, dims, leave_self_out)[metric]
    return out


def average_compatibility(matrix: np.ndarray) -> float:
    t = len(matrix)
    if t < 2:
        raise ValueError("AC needs a chain of at least two models")
    met = sum(matrix[i, j] > matrix[j, j] for i in range(t) for j in range(i))
    return float(met) * 2.0 / (t * (t - 1))


def average_multimodel_accuracy(matrix: np.ndarray) -> float:
    t = len(matrix)
    return float(sum(matrix[i, j] for i in range(t) for j in range(i + 1))) * 2.0 / (t * (t + 1))
