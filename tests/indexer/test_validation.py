"""Vector validation: lists are converted, float32 matrices pass through without a copy."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.errors import InvalidInput
from indexer.validation import as_matrix


def test_float32_matrix_is_checked_not_copied() -> None:
    x = np.ones((3, 4), dtype=np.float32)
    assert as_matrix(x, 4) is x
    with pytest.raises(InvalidInput, match="dimension 4, collection expects 5"):
        as_matrix(x, 5)
    x[2, 1] = np.nan
    with pytest.raises(InvalidInput, match="vector 2 contains NaN or Inf"):
        as_matrix(x, 4)


def test_lists_are_converted_and_checked() -> None:
    out = as_matrix([[1, 2], [3, 4]], 2)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InvalidInput, match="float32 range"):
        as_matrix([[1e39, 0]], 2)
