"""One collection never stops the others: a collection that cannot be loaded is quarantined (and
``collection_health`` says whether it can be repaired), and a name is never stuck by a delete that
raced writes or crashed half-way."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from indexer import collection_health
from indexer.collection import Collection
from indexer.collection_leftovers import DELETING_PREFIX, TRASH_PREFIX, deleting_path
from indexer.errors import AlreadyExists, CollectionNotFound, CollectionQuarantined, LogDamaged, StoreUnavailable
from indexer.index_policy import IndexOptions
from indexer.manager import CollectionManager
from indexer.segments import EVAL_NAMESPACE, STATE_NAMESPACE
from indexer.store.base import MetadataStore
from indexer.store.redis import RedisStore
from indexer.store.sqlite import SqliteStore
from indexer.types import ItemRecord
from indexer.wal import HEADER, WriteAheadLog
from tests.conftest import RedisServer

DIM = 4


def open_manager(data: Path, store: MetadataStore | None = None) -> CollectionManager:
    manager = CollectionManager(data, store or SqliteStore(data / "meta.sqlite3"), IndexOptions(background=False))
    manager.open_all()
    return manager


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def fill(manager: CollectionManager, name: str, batches: int = 3) -> None:
    collection = manager.create(name, DIM, "cosine")
    for b in range(batches):
        collection.upsert([f"{name}-{b}-{i}" for i in range(5)], rows(5, b))


def segment(data: Path, name: str) -> Path:
    (path,) = (data / "collections" / name / "wal").glob("*.log")
    return path


def test_damaged_collections_are_quarantined_and_the_others_open(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    for name in ("fine", "corrupt", "unreadable"):
        fill(m, name)
    m.close()
    raw = bytearray(segment(tmp_path, "corrupt").read_bytes())
    raw[HEADER.size + 30] ^= 0xFF  # the first record; two intact ones follow
    segment(tmp_path, "corrupt").write_bytes(bytes(raw))
    with sqlite3.connect(tmp_path / "meta.sqlite3") as db:
        db.execute("UPDATE collections SET config = '[]' WHERE name = 'unreadable'")

    m = open_manager(tmp_path)
    assert [c.name for c in m.list()] == ["fine"] and m.get("fine").count == 15
    assert sorted(m.quarantined()) == ["corrupt", "unreadable"]
    with pytest.raises(CollectionQuarantined, match="damaged and 2 intact records follow") as caught:
        m.get("corrupt")
    assert caught.value.retry_after
    with pytest.raises(AlreadyExists, match="quarantined"):
        m.create("corrupt", DIM, "cosine")
    m.delete("unreadable")  # the way out of a quarantine that cannot be repaired
    assert m.create("unreadable", DIM, "cosine").count == 0
    m.close()
    # the damaged log is kept as it is: nothing was cut (cutting would drop acknowledged records)
    assert segment(tmp_path, "corrupt").read_bytes() == bytes(raw)


def test_torn_tail_and_bad_snapshot_heal_at_open(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    fill(m, "torn")
    fill(m, "snap")
    m.close()  # writes the snapshots
    with open(segment(tmp_path, "torn"), "ab") as f:
        f.write(b"ERSW\x00\x10\x00\x00")  # an append cut short by a crash
    (tmp_path / "collections" / "snap" / "snapshot.json").write_text('{"offset": "x"}')
    for name in ("torn", "snap"):
        report = collection_health.check(SqliteStore(tmp_path / "meta.sqlite3"), tmp_path / "collections", name)
        assert report.status == "heals at start", report
    m = open_manager(tmp_path)
    assert not m.quarantined()
    assert m.get("torn").count == m.get("snap").count == 15
    assert m.get("snap").search(rows(5, 2)[:1], k=1)[0][0].id == "snap-2-0"
    m.close()


def test_a_truncated_log_is_quarantined_until_the_repair_restarts_it_from_the_store(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    fill(m, "cut")
    m.close()
    path = segment(tmp_path, "cut")
    os.truncate(path, path.stat().st_size - 10)  # the last record, which the store applied, is lost
    m = open_manager(tmp_path)
    with pytest.raises(CollectionQuarantined, match="log lost records the store holds"):
        m.get("cut")
    m.close()
    store = SqliteStore(tmp_path / "meta.sqlite3")
    report = collection_health.check(store, tmp_path / "collections", "cut")
    assert report.status == "repairable" and report.reset_log_at == store.applied_offset("cut")
    done = collection_health.repair(store, tmp_path / "collections", report)
    assert any("started a new log" in step for step in done)
    m = open_manager(tmp_path, store)
    cut = m.get("cut")
    assert cut.count == 15 and cut.get("cut-2-4").id == "cut-2-4"
    cut.upsert(["new"], rows(1, 9))  # a fresh id past every old one: no collision with the store's
    assert {h.id for h in cut.search(rows(5, 2)[4:5], k=2)[0]} >= {"cut-2-4"}
    assert cut.search(rows(1, 9), k=1)[0][0].id == "new" and cut.count == 16
    m.close()


def test_what_cannot_be_repaired_without_losing_data_is_not(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    fill(m, "behind")
    m.close()
    store = SqliteStore(tmp_path / "meta.sqlite3")
    raw = bytearray(segment(tmp_path, "behind").read_bytes())
    raw[HEADER.size + 30] ^= 0xFF
    segment(tmp_path, "behind").write_bytes(bytes(raw))
    store.apply("behind", [], [], 0)  # the store never applied the intact records after the damage
    report = collection_health.check(store, tmp_path / "collections", "behind")
    assert report.status == "damaged" and report.reset_log_at is None
    assert "a repair would lose them" in report.problems[0].detail
    assert collection_health.repair(store, tmp_path / "collections", report) == []


def test_a_record_that_cannot_be_applied_quarantines_the_collection_while_serving(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    fill(m, "bad")
    fill(m, "other")
    bad = m.get("bad")
    bad.wal.append(b"\x05\x00\x00\x00{nope")  # intact in the log, but not a record
    with pytest.raises(CollectionQuarantined, match="cannot be applied"):
        bad.upsert(["x"], rows(1))
    with pytest.raises(CollectionQuarantined):
        m.get("bad")
    assert list(m.quarantined()) == ["bad"] and [c.name for c in m.list()] == ["other"]
    m.get("other").upsert(["y"], rows(1))  # the others write on
    m.close()
    m = open_manager(tmp_path)
    assert list(m.quarantined()) == ["bad"]
    m.delete("bad")
    m.create("bad", DIM, "cosine").upsert(["z"], rows(1))
    m.close()


def test_delete_waits_for_in_flight_writes_and_the_name_is_free_at_once(tmp_path: Path) -> None:
    """Defect 2 at the manager: writers hold the collection object while it is deleted under them
    and re-created. A write that lost the race gets CollectionNotFound; none re-creates the
    deleted collection's items or log offset in the store."""
    m = open_manager(tmp_path)
    failures: list[BaseException] = []

    def write(collection: Collection, seed: int, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                collection.upsert([f"{seed}-{n}-{i}" for i in range(20)], rows(20, n))
            except CollectionNotFound:
                return
            except BaseException as exc:
                failures.append(exc)
                return

    for round_ in range(15):
        old = m.create("busy", DIM, "cosine")
        stop = threading.Event()
        writers = [threading.Thread(target=write, args=(old, round_ * 10 + w, stop)) for w in range(3)]
        for t in writers:
            t.start()
        m.delete("busy")
        fresh = m.create("busy", DIM, "cosine")
        stop.set()
        for t in writers:
            t.join()
        assert fresh.count == 0 and m.store.applied_offset("busy") == 0 and m.store.count("busy") == 0
        m.delete("busy")
    assert not failures, failures
    m.create("busy", DIM, "cosine").upsert(["kept"], rows(1))
    m.close()
    m = open_manager(tmp_path)
    assert not m.quarantined() and m.get("busy").count == 1
    m.close()


def test_an_interrupted_delete_is_undone_or_finished_at_start(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    fill(m, "undone")
    fill(m, "finished")
    m.store.put_doc(EVAL_NAMESPACE, "finished", {"items": []})
    m.close()
    root = tmp_path / "collections"
    os.replace(root / "undone", deleting_path(root, "undone"))  # a crash before the store step
    os.replace(root / "finished", deleting_path(root, "finished"))  # ...and one after it
    store = SqliteStore(tmp_path / "meta.sqlite3")
    store.delete_collection("finished")
    (root / f"{TRASH_PREFIX}abc").mkdir()  # a crash while removing a deleted directory
    m = open_manager(tmp_path, store)
    assert m.get("undone").count == 15 and "finished" not in {c.name for c in m.list()}
    assert store.get_doc(EVAL_NAMESPACE, "finished") is None
    assert not [p.name for p in root.iterdir() if p.name.startswith((DELETING_PREFIX, TRASH_PREFIX))]
    assert m.create("finished", DIM, "cosine").count == 0
    m.close()


def test_stale_store_entries_never_block_a_name(tmp_path: Path) -> None:
    """What an older release's race left: items, an applied offset and documents under a name the
    store has no collection for (the re-create answered 500 store_mismatch, then 409)."""
    store = SqliteStore(tmp_path / "meta.sqlite3")
    store.apply("ghost", [ItemRecord("old", 1, rows(1)[0], None, None)], [], 8791)
    store.put_doc(STATE_NAMESPACE, "ghost", {"active": "gone@1", "dim": 3, "history": []})
    m = open_manager(tmp_path, store)
    ghost = m.create("ghost", DIM, "cosine")
    assert ghost.count == 0 and ghost.config.dim == DIM
    ghost.upsert(["new"], rows(1))
    m.close()
    m = open_manager(tmp_path)
    assert m.get("ghost").count == 1 and not m.quarantined()
    m.close()


def test_a_delete_the_store_refuses_changes_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix=f"q{uuid.uuid4().hex[:8]}")
    m = open_manager(tmp_path, store)
    fill(m, "kept")
    redis_server.kill()
    try:
        with pytest.raises(StoreUnavailable):
            m.delete("kept")
    finally:
        redis_server.start()
    kept = m.get("kept")  # still open, still written to, its directory back in place
    kept.upsert(["after"], rows(1))
    assert kept.count == 16 and (tmp_path / "collections" / "kept" / "wal").is_dir()
    m.close()
    m = open_manager(tmp_path, store)
    assert m.get("kept").count == 16
    m.delete("kept")
    m.close()


def test_an_older_log_segment_that_stops_short_is_damage_but_a_torn_end_is_not(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=200)
    offsets = [wal.append(bytes([n]) * 50) for n in range(12)]
    wal.close()
    first, second = sorted((tmp_path / "wal").glob("*.log"))[:2]
    with open(first, "ab") as f:  # an older release's failed append, followed by a rotation
        f.write(b"ERSW\x40\x00")
    assert [o for o, _ in WriteAheadLog(tmp_path / "wal", segment_bytes=200).replay()] == offsets
    raw = bytearray(second.read_bytes())
    raw[HEADER.size + 5] ^= 0xFF  # the first record of the second segment: the rest is unreadable
    second.write_bytes(bytes(raw))
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=200)  # the last segment is intact: it opens
    with pytest.raises(LogDamaged, match="stop before the next segment"):
        list(wal.replay())
    wal.close()
    state = collection_health.inspect_log(tmp_path / "wal")
    assert state.damage is not None and state.readable_end == int(second.stem)
