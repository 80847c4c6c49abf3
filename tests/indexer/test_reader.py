"""The read-only view of a collection another manager owns (``indexer.reader``): it follows the log
tail, switches to a snapshot of another kind, survives a truncation past it, follows deletes and
recreates, and writes nothing in the data directory."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.index_policy import IndexOptions
from indexer.manager import CollectionManager
from indexer.reader import ReaderCollection, ReadOnlyView
from indexer.reader_manager import ReaderManager
from indexer.reader_store import ReadOnlySqliteStore
from indexer.store.sqlite import SqliteStore

DIM = 16


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[CollectionManager]:
    data = tmp_path / "data"
    data.mkdir()
    store = SqliteStore(data / "meta.sqlite3")
    options = IndexOptions(background=False, auto_threshold=400, snapshot_every=10**9, wal_segment_bytes=4096)
    manager = CollectionManager(data, store, options)
    yield manager
    manager.close()
    store.close()


@pytest.fixture
def reader(writer: CollectionManager) -> Iterator[ReaderManager]:
    store = ReadOnlySqliteStore(writer.data_dir / "meta.sqlite3")
    manager = ReaderManager(writer.data_dir, store)
    yield manager
    manager.close()
    store.close()


def top_ids(manager: CollectionManager, name: str, queries: np.ndarray, k: int = 5) -> list[list[str]]:
    return [[h.id for h in row] for row in manager.get(name).search(queries, k)]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's content hash, but SQLite's shared-memory index (readers of a WAL database use it)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def upsert(manager: CollectionManager, name: str, start: int, n: int, seed: int) -> np.ndarray:
    data = vectors(n, seed)
    ids = [f"i{start + i}" for i in range(n)]
    manager.get(name).upsert(ids, data, [{"n": start + i} for i in range(n)])
    return data


def test_view_follows_the_log_tail_and_matches_the_writer(writer: CollectionManager, reader: ReaderManager) -> None:
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 100, seed=1)
    reader.open_all()
    queries = vectors(8, seed=9)
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)
    before = reader.position("c")
    upsert(writer, "c", 50, 100, seed=2)  # half replace earlier items (new FAISS ids), half are new
    writer.get("c").delete(["i0", "i1"])
    assert reader.position("c") == before  # nothing moves until the view polls
    reader.refresh()
    view = reader.get("c")
    assert reader.position("c") == writer.get("c").wal.end_offset
    assert view.count == writer.get("c").count == 148
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)
    hit = view.search(vectors(1, seed=2)[:1], 1)[0][0]
    assert (hit.id, hit.payload) == ("i50", {"n": 50})  # the payload of the newest write


def test_view_switches_to_a_snapshot_of_another_kind(writer: CollectionManager, reader: ReaderManager) -> None:
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 300, seed=1)
    reader.open_all()
    assert reader.get("c").index.spec == "Flat"  # no snapshot yet: an exact index over the store
    upsert(writer, "c", 300, 200, seed=2)  # past auto_threshold: the writer builds IVF and snapshots it
    assert writer.get("c").index.spec != "Flat"
    upsert(writer, "c", 500, 20, seed=3)  # a tail past the snapshot
    reader._next_slow = 0.0
    reader.refresh()
    view = reader.get("c")
    assert view.index.spec == writer.get("c").index.spec
    assert view.index.nprobe == writer.get("c").index.nprobe
    assert view.index.size == writer.get("c").index.size == 520
    queries = vectors(8, seed=9)
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)


def test_view_behind_a_truncation_is_rebuilt(writer: CollectionManager, reader: ReaderManager) -> None:
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 10, seed=1)
    reader.open_all()
    old = reader.get("c")
    for round_ in range(8):  # 4 KiB log segments: several rotations
        upsert(writer, "c", 10 + 10 * round_, 10, seed=10 + round_)
    writer.get("c").snapshot()  # truncates the segments before the snapshot, which the view still needs
    assert writer.get("c").wal.start_offset > (reader.position("c") or 0)
    reader.refresh()
    assert reader.get("c") is not old
    assert reader.get("c").count == 90
    queries = vectors(4, seed=9)
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)


def test_view_follows_deletes_and_recreates(writer: CollectionManager, reader: ReaderManager) -> None:
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 10, seed=1)
    reader.open_all()
    assert reader.holds("c")
    writer.delete("c")
    reader._next_slow = 0.0
    reader.refresh()
    assert not reader.holds("c")
    writer.create("c", DIM, "l2")
    upsert(writer, "c", 100, 3, seed=2)
    reader._next_slow = 0.0
    reader.refresh()
    assert reader.get("c").config.metric == "l2"
    assert sorted(reader.get("c").id_to_int) == ["i100", "i101", "i102"]


def test_reader_writes_nothing(writer: CollectionManager, reader: ReaderManager) -> None:
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 500, seed=1)
    before = tree_digest(writer.data_dir)
    reader.open_all()
    reader._next_slow = 0.0
    reader.refresh()
    reader.get("c").search(vectors(2, seed=3), 3)
    with pytest.raises(ReadOnlyView):
        reader.get("c").upsert(["x"], vectors(1, seed=4))
    with pytest.raises(ReadOnlyView):
        reader.delete("c")
    assert tree_digest(writer.data_dir) == before
    assert isinstance(reader.get("c"), ReaderCollection)


def test_view_of_a_reranked_sq8_index_keeps_its_tail_in_memory(tmp_path: Path) -> None:
    """A quantised index re-ranks from the writer's exact-vector files: the view maps them read-only
    and keeps the rows its log tail adds in RAM, with exact scores, and writes nothing."""
    data = tmp_path / "data"
    data.mkdir()
    store = SqliteStore(data / "meta.sqlite3")
    options = IndexOptions(background=False, auto_threshold=500, memory_budget=200_000, snapshot_every=10**9)
    writer = CollectionManager(data, store, options)
    writer.create("c", DIM, "l2")
    upsert(writer, "c", 0, 1000, seed=1)
    assert writer.get("c").index.exact is not None  # the budget forced IVF-SQ8 with re-ranking
    writer.get("c").snapshot()
    reader = ReaderManager(data, ReadOnlySqliteStore(data / "meta.sqlite3"))
    try:
        reader.open_all()
        view = reader.get("c")
        assert view.index.exact is not None and view.index.exact.read_only
        tail = upsert(writer, "c", 1000, 50, seed=2)
        before = tree_digest(data)
        reader.refresh()
        queries = np.vstack([tail[:4] + 0.01, vectors(4, seed=9)])
        assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)
        hit = reader.get("c").search(tail[7:8] + 0.5, 1)[0][0]
        stored = writer.get("c").vector_of(hit.id)
        assert hit.score == pytest.approx(-float(np.sum((tail[7] + 0.5 - stored) ** 2)), rel=1e-5)
        assert tree_digest(data) == before
    finally:
        reader.close()
        writer.close()
        store.close()


def test_view_maps_a_flat_snapshot_and_switches_once_its_overlay_grows(
    writer: CollectionManager, reader: ReaderManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import indexer.reader as reader_module
    from indexer.mapped_index import MappedIndex

    monkeypatch.setattr(reader_module, "OVERLAY_SWITCH_ROWS", 30)
    writer.create("c", DIM, "cosine", index="Flat")
    upsert(writer, "c", 0, 100, seed=1)
    writer.get("c").snapshot()
    reader.open_all()
    view = reader.get("c")
    first = view.index
    assert isinstance(first, MappedIndex) and first.overlay_rows == 0
    upsert(writer, "c", 90, 20, seed=2)  # 20 new FAISS ids; the 10 replaced snapshot rows become tombstones
    writer.get("c").delete(["i0", "i100"])  # one snapshot row, one overlay row
    reader.refresh()
    assert first.overlay_rows == 19 and len(first.dead) == 11
    assert view.count == writer.get("c").count == 108
    queries = vectors(8, seed=9)
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)
    writer.get("c").snapshot()  # a periodic snapshot: not worth switching for a small overlay
    reader._next_slow = 0.0
    reader.refresh()
    assert view.index is first
    upsert(writer, "c", 200, 40, seed=3)
    writer.get("c").snapshot()
    reader._next_slow = 0.0
    reader.refresh()  # past the overlay limit: the newer snapshot, mapped, with an empty overlay
    assert view.index is not first and isinstance(view.index, MappedIndex) and view.index.overlay_rows == 0
    assert top_ids(reader, "c", queries) == top_ids(writer, "c", queries)


def test_wake_polls_at_once_between_slow_ticks(writer: CollectionManager) -> None:
    """A request waiting for a position wakes the poll thread, rather than waiting out ``poll_s``."""
    writer.create("c", DIM, "cosine")
    upsert(writer, "c", 0, 10, seed=1)
    store = ReadOnlySqliteStore(writer.data_dir / "meta.sqlite3")
    reader = ReaderManager(writer.data_dir, store, poll_s=60.0)
    try:
        reader.open_all()
        reader.start()
        upsert(writer, "c", 10, 10, seed=2)
        end = writer.get("c").wal.end_offset
        time.sleep(0.3)
        assert reader.position("c") != end  # the next tick is a minute away
        reader.wake()
        deadline = time.monotonic() + 5.0
        while reader.position("c") != end and time.monotonic() < deadline:
            time.sleep(0.005)
        assert reader.position("c") == end
    finally:
        reader.close()
        store.close()
