"""What every recipe shares (``models.training.run``)."""

from __future__ import annotations

import os

import pytest

from models.training.run import training_threads


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("1", 1), ("0", None), ("", None), ("two", None)])
def test_training_threads_follow_omp_num_threads_when_it_is_a_positive_count(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int | None
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert training_threads() == (expected if expected is not None else max(1, os.cpu_count() or 1))


def test_training_threads_use_every_core_without_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert training_threads() == max(1, os.cpu_count() or 1)
