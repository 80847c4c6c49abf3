"""Rewritten views: a transform bridge's queries search an old segment through its stored vectors mapped
into the new space; the view follows the segment's writes and deletes, and the stored data never change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexer.collection import Collection
from indexer.index_policy import IndexOptions
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig
from tests.indexer.test_segments import ChainCompat, unit

BRIDGE = "new@1.transform-0123456789"  # a transform bridge over "enc@1" (4-d) into a 5-d space
MAP = np.random.default_rng(42).standard_normal((4, 5)).astype(np.float32)


def rewrite(vectors: np.ndarray) -> np.ndarray:
    return unit(vectors @ MAP)  # (n, 4) -> (n, 5) unit rows, like a fitted transform


class TransformCompat(ChainCompat):
    def dim_of(self, version: str | None) -> int | None:
        return 5 if version == BRIDGE else super().dim_of(version)

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        return segment_dim if query == segment else None if query == BRIDGE else super().prefix(
            query, query_dim, segment, segment_dim)  # fmt: skip

    def rewriter(self, query: str | None, segment: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
        if query == BRIDGE and segment == "enc@1":
            return rewrite
        return None


def open_collection(tmp_path: Path) -> tuple[Collection, SqliteStore]:
    store = SqliteStore(tmp_path / "meta.sqlite3")
    cfg = CollectionConfig(name="t", dim=4, metric="cosine", encoder="enc@1")
    if store.get_collection("t") is None:
        store.create_collection(cfg)
    return Collection(cfg, tmp_path / "t", store, IndexOptions(background=False), compat=TransformCompat()), store


def test_transform_queries_search_the_old_segment_through_its_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    old = rng.standard_normal((40, 4)).astype(np.float32)
    c, store = open_collection(tmp_path)
    try:
        c.upsert([f"o{i}" for i in range(40)], old)
        before = [{h.id: h.score for h in hits} for hits in c.search(old[:5], k=40)]
        c.set_active_encoder(BRIDGE, 5, {"to": BRIDGE})
        query = rewrite(old[7:8]) + 0.01 * rng.standard_normal((1, 5)).astype(np.float32)
        hits = c.search(query, k=40)[0]
        assert hits[0].id == "o7" and hits[0].encoder_version == "enc@1" and len(hits) == 40
        # scores are the cosine of the query and the rewritten stored vector
        expected = unit(query)[0] @ rewrite(old).T
        for h in hits:
            assert h.score == pytest.approx(float(expected[int(h.id[1:])]), abs=1e-5)
        assert c.views.describe() == [{"query_version": BRIDGE, "segment": "enc@1", "vectors": 40}]
        # the view follows its segment: an item written with the old version is found, a deleted one is not
        extra = rng.standard_normal((1, 4)).astype(np.float32)
        c.upsert(["late"], extra, versions=["enc@1"])
        c.delete(["o7"])
        hits = c.search(rewrite(extra), k=3)[0]
        assert hits[0].id == "late" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(h.id != "o7" for h in c.search(query, k=41)[0])
        # items written as the bridge's own version go to its segment, searched directly
        c.upsert(["n0"], rewrite(old[3:4]))
        assert {h.id for h in c.search(rewrite(old[3:4]), k=2)[0]} == {"n0", "o3"}
        # switching back: old queries see exactly what they saw before (minus the client's own writes)
        c.set_active_encoder("enc@1", 4, {"to": "enc@1"})
        after = [{h.id: h.score for h in hits} for hits in c.search(old[:5], k=50)]
        for was, now in zip(before, after, strict=True):
            assert set(now) == set(was) - {"o7"} | {"late"}  # the bridge's own item is not comparable
            assert all(now[i] == pytest.approx(was[i], abs=1e-6) for i in was if i != "o7")
    finally:
        store.close()


def test_a_view_is_rebuilt_after_a_restart_and_never_logged(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    old = rng.standard_normal((25, 4)).astype(np.float32)
    c, store = open_collection(tmp_path)
    c.upsert([f"o{i}" for i in range(25)], old)
    c.set_active_encoder(BRIDGE, 5, {"to": BRIDGE})
    log_size = c.wal.end_offset
    first = [(h.id, h.score) for h in c.search(rewrite(old[2:3]), k=5)[0]]
    assert c.wal.end_offset == log_size  # building and searching a view wrote nothing to the log
    c.close()
    store.close()
    reopened, store = open_collection(tmp_path)
    try:
        assert reopened.views.describe() == []  # derived data: nothing persisted
        again = [(h.id, h.score) for h in reopened.search(rewrite(old[2:3]), k=5)[0]]
        assert [i for i, _ in again] == [i for i, _ in first]
        assert np.allclose([s for _, s in again], [s for _, s in first], atol=1e-6)
        assert reopened.views.describe()[0]["vectors"] == 25
    finally:
        store.close()
