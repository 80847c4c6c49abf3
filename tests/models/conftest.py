"""Fixtures shared by the model tests. Keep them generic: one fixture per shared resource."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(models_dir, cache_dir)`` shared by the whole session, so each zoo model is fetched and
    converted at most once (pass both to ``models.zoo.pull``)."""
    root = tmp_path_factory.mktemp("zoo")
    models_dir, cache_dir = root / "models", root / "cache"
    models_dir.mkdir()
    cache_dir.mkdir()
    return models_dir, cache_dir
