"""Input checks shared by every write and search path (the service adds HTTP limits on top)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.errors import InvalidInput
from indexer.types import FloatArray

MAX_ID_LENGTH = 256


def as_matrix(vectors: Any, dim: int, what: str = "vector") -> FloatArray:
    """Validate and convert to a C-contiguous float32 ``(n, dim)`` matrix.

    A float32 matrix (already validated upstream, e.g. stacked query vectors) is only checked for
    shape and finiteness, not copied through float64 again: this runs on every search.
    """
    if isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.ndim == 2:
        if vectors.shape[1] != dim:
            raise InvalidInput(f"{what} has dimension {vectors.shape[1]}, collection expects {dim}")
        if not np.isfinite(vectors).all():
            row = int(np.argwhere(~np.isfinite(vectors))[0][0])
            raise InvalidInput(f"{what} {row} contains NaN or Inf")
        return np.ascontiguousarray(vectors)
    try:
        arr = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be a list of numbers") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInput(f"{what} is empty; expected {dim} numbers")
    if arr.shape[1] != dim:
        raise InvalidInput(f"{what} has dimension {arr.shape[1]}, collection expects {dim}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InvalidInput(f"{what} {row} contains NaN or Inf")
    if (np.abs(arr) > np.finfo(np.float32).max).any():
        raise InvalidInput(f"{what} has values outside the float32 range")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_ids(ids: Sequence[str]) -> None:
    for item_id in ids:
        if not isinstance(item_id, str) or not item_id:
            raise InvalidInput("item ids must be non-empty strings")
        if len(item_id) > MAX_ID_LENGTH:
            raise InvalidInput(f"item id longer than {MAX_ID_LENGTH} characters")
