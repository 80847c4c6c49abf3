"""``service.settings``: defaults derived from the machine and the process layout."""

from __future__ import annotations

import os

import pytest

from service.settings import Settings


def test_search_slots_share_the_cores_between_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    default = Settings(search_concurrency=0)
    assert default.search_slots(1) == 8  # one process: every core
    assert default.search_slots(2) == 4  # --workers 2: half each
    assert default.search_slots(16) == 1  # more processes than cores: still one call each
    assert Settings(search_concurrency=0, threads=2).search_slots(1) == 4  # two intra-op threads per call
    assert Settings(search_concurrency=3).search_slots(4) == 3  # set by hand: taken as it is


def test_search_concurrency_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="search_concurrency"):
        Settings(search_concurrency=-1)
