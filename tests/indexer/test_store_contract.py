"""One contract suite for every ``MetadataStore``: SQLite and Redis must be interchangeable."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import AlreadyExists, StoreUnavailable
from indexer.store.base import MetadataStore
from indexer.store.factory import open_store
from indexer.store.redis import RedisStore
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig, ItemRecord


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """A fresh, empty store; Redis tests get a unique key prefix so they never see each other."""
    if request.param == "sqlite":
        st: MetadataStore = SqliteStore(tmp_path / "meta.sqlite3")
        yield st
        st.close()
        return
    server = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex}"
    st = RedisStore(server.url, prefix=prefix)
    yield st
    st.close()
    if server.running():  # a test may have left it down; clean up only what we can reach
        import redis

        client = redis.Redis.from_url(server.url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def cfg(name: str = "docs", dim: int = 4) -> CollectionConfig:
    return CollectionConfig(name=name, dim=dim, metric="cosine", encoder="e5", created_at=1.5)


def item(i: int, dim: int = 4, **kw: Any) -> ItemRecord:
    vec = np.arange(dim, dtype=np.float32) + i
    return ItemRecord(id=f"id-{i}", int_id=i, vector=vec, payload={"n": i}, encoder_version="v1", **kw)


def ids(records: list[ItemRecord | None]) -> list[str | None]:
    return [None if r is None else r.id for r in records]


def test_is_a_metadata_store(store: MetadataStore) -> None:
    assert isinstance(store, MetadataStore)
    store.ping()


def test_collection_lifecycle(store: MetadataStore) -> None:
    assert store.get_collection("b") is None and store.list_collections() == []
    store.create_collection(cfg("b", 8))
    store.create_collection(cfg("a", 4))
    assert store.get_collection("b") == cfg("b", 8)
    assert [c.name for c in store.list_collections()] == ["a", "b"]
    assert store.delete_collection("b") is True
    assert store.delete_collection("b") is False
    assert store.get_collection("b") is None
    assert store.list_collections() == [cfg("a", 4)]


def test_duplicate_create_raises(store: MetadataStore) -> None:
    store.create_collection(cfg("a", 4))
    with pytest.raises(AlreadyExists):
        store.create_collection(cfg("a", 16))
    assert store.get_collection("a") == cfg("a", 4)  # the first config wins untouched


def test_apply_upserts_deletes_and_offset(store: MetadataStore) -> None:
    store.create_collection(cfg())
    assert store.applied_offset("docs") == 0 and store.count("docs") == 0
    store.apply("docs", [item(i) for i in range(5)], [], 100)
    assert store.applied_offset("docs") == 100 and store.count("docs") == 5
    store.apply("docs", [item(7)], ["id-0", "id-1", "id-missing"], 250)
    assert store.applied_offset("docs") == 250
    assert store.count("docs") == 4
    assert sorted(r.id for r in store.iter_items("docs")) == ["id-2", "id-3", "id-4", "id-7"]
    store.apply("docs", [], ["nope", "never"], 300)  # deletes of missing ids are ignored
    assert store.count("docs") == 4 and store.applied_offset("docs") == 300


def test_failed_apply_changes_nothing(store: MetadataStore) -> None:
    store.create_collection(cfg())
    store.apply("docs", [item(1)], [], 10)
    bad = ItemRecord(id="bad", int_id=9, vector=None, payload={"x": object()})
    with pytest.raises(TypeError):
        store.apply("docs", [item(2), bad], ["id-1"], 20)
    assert store.applied_offset("docs") == 10
    assert ids(store.get_items("docs", ["id-1", "id-2", "bad"])) == ["id-1", None, None]


def test_upsert_replaces_by_id(store: MetadataStore) -> None:
    store.create_collection(cfg())
    store.apply("docs", [item(1)], [], 1)
    new_vec = np.array([9, 8, 7, 6], dtype=np.float32)
    store.apply("docs", [ItemRecord("id-1", 42, new_vec, {"new": True}, "v2")], [], 2)
    got = store.get_item("docs", "id-1", with_vector=True)
    assert got is not None and store.count("docs") == 1
    assert (got.int_id, got.payload, got.encoder_version) == (42, {"new": True}, "v2")
    assert got.vector is not None and got.vector.tobytes() == new_vec.tobytes()


def test_vectors_round_trip_bit_exact(store: MetadataStore) -> None:
    special = np.array([-0.0, 0.0, 1e-38, -1e-45, 3.4e38, -3.4e38, np.inf, np.nan], dtype=np.float32)
    rnd = np.random.default_rng(7).standard_normal(384).astype(np.float32)
    store.create_collection(cfg(dim=384))
    store.apply("docs", [ItemRecord("s", 1, special), ItemRecord("r", 2, rnd)], [], 1)
    for key, want in (("s", special), ("r", rnd)):
        got = store.get_item("docs", key, with_vector=True)
        assert got is not None and got.vector is not None
        assert got.vector.dtype == np.float32 and got.vector.tobytes() == want.tobytes()
        got.vector[0] = 123.0  # the returned array owns writable memory
    no_vec = store.get_item("docs", "r")
    assert no_vec is not None and no_vec.vector is None


def test_payloads_and_versions_round_trip(store: MetadataStore) -> None:
    payload = {"title": "Zürich ☃ 東京 🚀", "tags": ["a", "b"], "nested": {"x": [1, 2.5, None, True]}}
    store.create_collection(cfg())
    store.apply("docs", [ItemRecord("ü-id/ 1", 1, None, payload, "enc@2"), ItemRecord("bare", 2)], [], 1)
    full = store.get_item("docs", "ü-id/ 1")
    bare = store.get_item("docs", "bare", with_vector=True)
    assert full is not None and full.payload == payload and full.encoder_version == "enc@2"
    assert bare is not None and (bare.payload, bare.encoder_version, bare.vector) == (None, None, None)


def test_get_items_keeps_order(store: MetadataStore) -> None:
    store.create_collection(cfg())
    store.apply("docs", [item(i) for i in range(3)], [], 1)
    got = store.get_items("docs", ["id-2", "x", "id-0", "id-2"])
    assert ids(got) == ["id-2", None, "id-0", "id-2"]
    assert all(r is None or r.vector is None for r in got)
    full = store.get_items("docs", ["id-1", "x", "id-0"], with_vectors=True)
    for want, record in zip([item(1), None, item(0)], full, strict=True):
        assert (record is None) == (want is None)
        if record is not None and want is not None:
            assert (
                record.vector is not None and record.vector.tobytes() == np.asarray(want.vector, np.float32).tobytes()
            )
            assert (record.int_id, record.payload) == (want.int_id, want.payload)
    assert store.get_items("docs", []) == []
    assert store.get_items("other", ["id-0"]) == [None]
    assert store.count("other") == 0 and store.get_item("other", "id-0") is None


@pytest.mark.parametrize("with_vectors", [False, True])
def test_iter_items_over_many_batches(store: MetadataStore, with_vectors: bool) -> None:
    store.create_collection(cfg())
    records = [item(i) for i in range(2500)]
    store.apply("docs", records[:1200], [], 1)
    store.apply("docs", records[1200:], [], 2)
    seen = {r.id: r for r in store.iter_items("docs", with_vectors=with_vectors, batch=1000)}
    assert len(seen) == 2500 and set(seen) == {r.id for r in records}
    for r in records[::97]:
        got = seen[r.id]
        assert got.int_id == r.int_id and got.payload == r.payload
        if with_vectors:
            assert got.vector is not None and r.vector is not None
            assert got.vector.tobytes() == r.vector.tobytes()
        else:
            assert got.vector is None
    assert list(store.iter_items("empty")) == []


def test_delete_collection_removes_items_and_offset(store: MetadataStore) -> None:
    store.create_collection(cfg())
    store.create_collection(cfg("keep"))
    store.apply("docs", [item(i) for i in range(10)], [], 99)
    store.apply("keep", [item(1)], [], 5)
    assert store.delete_collection("docs")
    assert store.count("docs") == 0 and store.applied_offset("docs") == 0
    store.create_collection(cfg())
    assert store.count("docs") == 0 and store.applied_offset("docs") == 0
    assert list(store.iter_items("docs")) == [] and store.get_item("docs", "id-1") is None
    assert store.count("keep") == 1 and store.applied_offset("keep") == 5


def test_docs(store: MetadataStore) -> None:
    assert store.get_doc("jobs", "a") is None and store.list_docs("jobs") == []
    store.put_doc("jobs", "b", {"state": "running", "n": 1})
    store.put_doc("jobs", "a", {"state": "done", "msg": "ok ✓"})
    store.put_doc("jobs", "b", {"state": "failed"})
    store.put_doc("other", "a", {"x": 1})
    assert store.get_doc("jobs", "b") == {"state": "failed"}
    assert store.list_docs("jobs") == [{"state": "done", "msg": "ok ✓"}, {"state": "failed"}]
    assert store.delete_doc("jobs", "a") is True and store.delete_doc("jobs", "a") is False
    assert store.list_docs("jobs") == [{"state": "failed"}] and store.get_doc("other", "a") == {"x": 1}


def test_concurrent_readers_see_whole_applies(store: MetadataStore) -> None:
    """Each apply adds exactly ``per`` items and bumps the offset by one: a reader must never see
    a partial apply, and counts must never go backwards."""
    store.create_collection(cfg())
    per, rounds = 50, 40
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for r in range(rounds):
                batch = [item(r * per + j) for j in range(per)]
                store.apply("docs", batch, [], r + 1)
        except BaseException as exc:  # surfaced to the main thread below
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        last = 0
        try:
            while not done.is_set():
                before = store.applied_offset("docs")
                n = store.count("docs")
                after = store.applied_offset("docs")
                assert n % per == 0 and before * per <= n <= after * per and n >= last
                last = n
                store.get_items("docs", ["id-0", "id-1"])
                sum(1 for _ in store.iter_items("docs", batch=300))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert store.count("docs") == per * rounds and store.applied_offset("docs") == rounds


def test_redis_outage_is_fast_and_data_survives_restart(redis_server: Any) -> None:
    store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
    try:
        store.create_collection(cfg())
        store.apply("docs", [item(i) for i in range(20)], ["id-3"], 77)
        store.put_doc("jobs", "j1", {"state": "done"})
        redis_server.kill()
        for op in (store.ping, lambda: store.count("docs"), lambda: store.apply("docs", [item(1)], [], 78)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                op()
            assert time.monotonic() - started < 3.0
        redis_server.start()
        store.ping()  # pooled connections died with the server; the client must reconnect
        assert store.get_collection("docs") == cfg()
        assert store.count("docs") == 19 and store.applied_offset("docs") == 77
        assert store.get_doc("jobs", "j1") == {"state": "done"}
    finally:
        redis_server.start()  # no-op when running: other tests share this server
        store.close()


def test_factory_picks_backend(tmp_path: Path, redis_server: Any) -> None:
    sqlite_store = open_store(None, tmp_path / "new" / "dir")
    assert isinstance(sqlite_store, SqliteStore) and (tmp_path / "new" / "dir" / "meta.sqlite3").exists()
    sqlite_store.close()
    redis_store = open_store(redis_server.url, tmp_path, redis_prefix=f"test-{uuid.uuid4().hex}")
    assert isinstance(redis_store, RedisStore)
    redis_store.ping()
    redis_store.close()


# -- indexing jobs ---------------------------------------------------------------------------------
def job_doc(created: float, **kw: Any) -> dict[str, Any]:
    return {"collection": "docs", "source": {"type": "directory", "path": "/x"}, "state": "queued",
            "created_at": created, **kw}  # fmt: skip


def test_job_lifecycle_and_compare_and_set(store: MetadataStore) -> None:
    assert store.get_job("j1") is None and store.list_jobs() == []
    store.create_job("j1", job_doc(1.0))
    store.create_job("j2", job_doc(2.0, options={"batch": 8, "tags": []}))
    with pytest.raises(AlreadyExists):
        store.create_job("j1", job_doc(3.0))
    job = store.get_job("j2")
    assert job is not None
    assert (job["id"], job["state"], job["done"], job["failed"], job["errors"], job["dead_letters"]) == (
        "j2", "queued", 0, 0, [], 0)  # fmt: skip
    assert job["options"] == {"batch": 8, "tags": []} and job["source"] == {"type": "directory", "path": "/x"}
    assert [j["id"] for j in store.list_jobs()] == ["j2", "j1"]  # newest first
    running = store.update_job("j1", {"state": "running", "total": 10}, states=["queued"])
    assert running is not None and (running["state"], running["total"]) == ("running", 10)
    # Compare-and-set: a cancel that lost the race to completion changes nothing.
    assert store.update_job("j1", {"state": "succeeded"}, states=["running"]) is not None
    assert store.update_job("j1", {"state": "cancelled"}, states=["queued", "running"]) is None
    assert store.update_job("missing", {"state": "running"}) is None
    assert store.update_job("j1", {"note": None}) is not None  # no state condition
    job = store.get_job("j1")
    assert job is not None and job["state"] == "succeeded" and job["total"] == 10 and job["note"] is None
    assert store.delete_job("j1") is True and store.delete_job("j1") is False
    assert store.get_job("j1") is None and [j["id"] for j in store.list_jobs()] == ["j2"]


def test_job_batches_count_once_and_errors_are_capped(store: MetadataStore) -> None:
    from indexer.store.sqlite_jobs import ERRORS_KEPT

    store.create_job("j", job_doc(1.0))
    errors = [{"id": f"bad-{i}", "reason": "corrupt ✗"} for i in range(ERRORS_KEPT + 5)]
    assert store.record_job_batch("j", 0, 3, 2, errors[:2]) is True
    assert store.record_job_batch("j", 0, 3, 2, errors[:2]) is False  # a redone batch is not counted again
    assert store.record_job_batch("j", 7, 0, 4, errors[2:], dead=[{"id": "d", "reason": "x", "attempts": 3}])
    job = store.get_job("j")
    assert job is not None and (job["done"], job["failed"], job["dead_letters"]) == (3, 6, 1)
    assert job["errors"] == errors[:ERRORS_KEPT]  # the first ones, in order
    assert store.job_batches("j") == {0, 7}
    assert store.job_dead_letters("j") == [{"id": "d", "reason": "x", "attempts": 3}]
    assert store.job_batches("other") == set() and store.job_dead_letters("other") == []


def test_concurrent_batch_records_add_up(store: MetadataStore) -> None:
    """Several workers recording (and re-recording) batches at once: each counted exactly once."""
    store.create_job("j", job_doc(1.0))
    wins: list[int] = []

    def worker() -> None:
        for seq in range(40):
            if store.record_job_batch("j", seq, 2, 1):
                wins.append(seq)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    job = store.get_job("j")
    assert sorted(wins) == list(range(40))
    assert job is not None and (job["done"], job["failed"]) == (80, 40)
