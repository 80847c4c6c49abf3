"""Mixed-version collections: one segment per encoder version, compat views of the query, restarts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.index_policy import IndexOptions
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig

# v2 extends v1 (BT²-like: 4 compatible dims + 2 extra), v3 extends v2, "other@1" is unrelated.
DIMS = {"enc@1": 4, "enc@2": 6, "enc@3": 8, "other@1": 6}
PARENT = {"enc@2": ("enc@1", 4), "enc@3": ("enc@2", 6)}


class ChainCompat:
    """A spec-like resolver: follows ``PARENT`` transitively, the smallest prefix along the way."""

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        if query == segment:
            return segment_dim
        dims, key = None, query
        while key in PARENT and key != segment:
            key, step = PARENT[key]
            dims = step if dims is None else min(dims, step)
        return dims if key == segment else None

    def dim_of(self, version: str | None) -> int | None:
        return DIMS.get(version or "")

    def rewriter(self, query: str | None, segment: str | None) -> None:
        return None  # no transform migrations in this chain (CompatResolver's third question)


OpenCollection = Callable[..., Collection]


@pytest.fixture
def open_mixed(tmp_path: Path) -> Iterator[OpenCollection]:
    stores: list[SqliteStore] = []

    def _open(options: IndexOptions | None = None) -> Collection:
        store = SqliteStore(tmp_path / "meta.sqlite3")
        stores.append(store)
        cfg = CollectionConfig(name="m", dim=4, metric="cosine", encoder="enc@1")
        if store.get_collection("m") is None:
            store.create_collection(cfg)
        opts = options or IndexOptions(background=False)
        return Collection(cfg, tmp_path / "m", store, opts, compat=ChainCompat())

    yield _open
    for store in stores:
        store.close()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gallery(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """v1 vectors and v2 vectors of the same items: v2's first 4 dims are v1's (compatible)."""
    v1 = rng.standard_normal((n, 4)).astype(np.float32)
    v2 = np.hstack([v1 * 2.0, rng.standard_normal((n, 2)).astype(np.float32)])
    return v1, v2


def test_new_queries_search_old_segment_through_the_compat_prefix(open_mixed: OpenCollection) -> None:
    rng = np.random.default_rng(0)
    v1, v2 = gallery(rng, 50)
    c = open_mixed()
    c.upsert([f"old-{i}" for i in range(50)], v1)
    c.set_active_encoder("enc@2", 6, {"to": "enc@2"})
    c.upsert([f"new-{i}" for i in range(50)], v2)  # default version: the active encoder
    c.upsert(["alien"], v2[:1] * 3, versions=["other@1"])  # 6-d, but never comparable with enc@2
    assert {s.key: s.dim for s in c.segments.values()} == {"enc@1": 4, "enc@2": 6, "other@1": 6}
    query = v2[7:8]
    hits = c.search(query, k=4)[0]
    assert {h.id for h in hits[:2]} == {"old-7", "new-7"}
    assert all(h.id != "alien" for h in c.search(query, k=101)[0])
    by_id = {h.id: h for h in c.search(query, k=100)[0]}
    assert by_id["old-7"].encoder_version == "enc@1" and by_id["new-7"].encoder_version == "enc@2"
    # old segment: cosine of the renormalised 4-d prefix; own segment: full 6-d cosine
    assert by_id["old-3"].score == pytest.approx(float(unit(query[0, :4]) @ unit(v1[3])), abs=1e-5)
    assert by_id["new-3"].score == pytest.approx(float(unit(query[0]) @ unit(v2[3])), abs=1e-5)
    scores = [h.score for h in c.search(query, k=100)[0]]
    assert scores == sorted(scores, reverse=True)
    # a search pinned to the old version (one that started before the switch) sees only what v1 may
    old_view = c.search(v1[7:8], k=100, version="enc@1")[0]
    assert {h.encoder_version for h in old_view} == {"enc@1"} and old_view[0].id == "old-7"


def test_chain_and_filters_across_segments(open_mixed: OpenCollection) -> None:
    rng = np.random.default_rng(1)
    v1, v2 = gallery(rng, 30)
    v3 = np.hstack([v2, rng.standard_normal((30, 2)).astype(np.float32)])
    c = open_mixed()
    c.upsert([f"a{i}" for i in range(30)], v1, [{"even": i % 2 == 0} for i in range(30)])
    c.upsert([f"b{i}" for i in range(30)], v2, [{"even": i % 2 == 0} for i in range(30)], ["enc@2"] * 30)
    c.set_active_encoder("enc@3", 8, {"to": "enc@3"})
    c.upsert([f"c{i}" for i in range(30)], v3, [{"even": i % 2 == 0} for i in range(30)])
    hits = c.search(v3[5:6], k=3)[0]
    assert {h.id for h in hits} == {"a5", "b5", "c5"}  # v3 -> v1 through v2, on 4 dims
    odd = c.search(v3[5:6], k=90, flt={"even": False})[0]
    assert len(odd) == 45 and all(not h.payload["even"] for h in odd if h.payload)  # type: ignore[index]


def test_writes_are_checked_against_their_versions_dimension(open_mixed: OpenCollection) -> None:
    c = open_mixed()
    c.upsert(["x"], [[1, 0, 0, 0]])
    with pytest.raises(InvalidInput, match="dimension"):
        c.upsert(["y"], [[1, 0, 0, 0]], versions=["enc@2"])  # enc@2 makes 6-d vectors
    with pytest.raises(InvalidInput, match="one dimension"):
        c.upsert(["y", "z"], [[1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], versions=["enc@1", "enc@2"])
    with pytest.raises(InvalidInput):
        c.search([[1, 0, 0, 0, 0, 0]], k=1)  # the active encoder is still enc@1 (4-d)


def test_moving_an_item_to_the_new_version_never_duplicates_or_loses_it(open_mixed: OpenCollection) -> None:
    rng = np.random.default_rng(2)
    v1, v2 = gallery(rng, 20)
    c = open_mixed()
    ids = [f"i{i}" for i in range(20)]
    c.upsert(ids, v1)
    c.set_active_encoder("enc@2", 6, {"to": "enc@2"})
    c.upsert(ids[:10], v2[:10])  # what a backfill does: re-encode, re-upsert
    assert c.count == 20 and c.indexed == 20
    assert c.segments["enc@1"].index.size == 10 and c.segments["enc@2"].index.size == 10
    found = c.search(v2[:20], k=1)
    assert [row[0].id for row in found] == ids
    assert [row[0].encoder_version for row in found] == ["enc@2"] * 10 + ["enc@1"] * 10
    assert c.version_counts() == {"enc@1": 10, "enc@2": 10}


@pytest.mark.parametrize("snapshot_every", [7, 10**9])
def test_mixed_collection_survives_a_crash(open_mixed: OpenCollection, tmp_path: Path, snapshot_every: int) -> None:
    opts = IndexOptions(background=False, snapshot_every=snapshot_every, wal_segment_bytes=2048)
    rng = np.random.default_rng(3)
    v1, v2 = gallery(rng, 40)
    c = open_mixed(opts)
    for start in range(0, 40, 5):
        c.upsert([f"i{i}" for i in range(start, start + 5)], v1[start : start + 5])
    c.set_active_encoder("enc@2", 6, {"to": "enc@2", "from": "enc@1"})
    for start in range(0, 20, 5):
        c.upsert([f"i{i}" for i in range(start, start + 5)], v2[start : start + 5])
    c.delete(["i39"])
    before = [[(h.id, round(h.score, 5)) for h in row] for row in c.search(v2, k=5)]
    # No close(): as after kill -9, only the fsynced log, the store and published snapshots survive.
    again = open_mixed(opts)
    assert again.config.encoder == "enc@2" and again.config.dim == 6
    assert again.state.history == [{"to": "enc@2", "from": "enc@1"}]
    assert {k: s.dim for k, s in again.segments.items()} == {"enc@1": 4, "enc@2": 6}
    assert again.segments["enc@1"].index.size == 19 and again.segments["enc@2"].index.size == 20
    assert [[(h.id, round(h.score, 5)) for h in row] for row in again.search(v2, k=5)] == before
    if snapshot_every == 7:
        assert (tmp_path / "m" / "snapshot.json").exists()
        assert list((tmp_path / "m" / "segments").glob("*/snapshot.json"))
        assert again.wal.start_offset > 0
