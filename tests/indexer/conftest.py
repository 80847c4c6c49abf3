from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.collection import Collection
from indexer.index_policy import IndexOptions
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig, Metric

OpenCollection = Callable[..., Collection]


@pytest.fixture
def open_collection(tmp_path: Path) -> Iterator[OpenCollection]:
    """Open (or re-open, as after a crash) a collection over one SQLite store and directory."""
    opened: list[Collection] = []
    stores: list[SqliteStore] = []

    def _open(
        dim: int = 8, metric: Metric = "cosine", index: str = "auto", options: IndexOptions | None = None
    ) -> Collection:
        store = SqliteStore(tmp_path / "meta.sqlite3")
        stores.append(store)
        cfg = CollectionConfig(name="c", dim=dim, metric=metric, index=index)
        if store.get_collection("c") is None:
            store.create_collection(cfg)
        collection = Collection(cfg, tmp_path / "c", store, options or IndexOptions(background=False))
        opened.append(collection)
        return collection

    yield _open
    for store in stores:
        store.close()


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20, centers_seed: int = 0) -> np.ndarray:
    """Gaussian blobs; the same ``centers_seed`` gives the same distribution for another ``seed``."""
    centers = np.random.default_rng(centers_seed).standard_normal((clusters, dim)).astype(np.float32) * 3
    rng = np.random.default_rng(seed + 1000)
    return (centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(np.float32)
