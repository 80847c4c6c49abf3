"""Collections: durable writes, exact scores for each metric, filters, restarts, auto index."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import CollectionQuarantined, InvalidInput, ItemNotFound
from indexer.index_policy import IndexOptions
from indexer.thumbnails import Thumbnail
from indexer.types import Metric
from tests.indexer.conftest import OpenCollection, clustered


def ids_of(n: int, start: int = 0) -> list[str]:
    return [f"item-{i}" for i in range(start, start + n)]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_exact_search_matches_brute_force_and_score_convention(open_collection: OpenCollection, metric: Metric) -> None:
    c = open_collection(dim=8, metric=metric)
    x = clustered(500, 8)
    c.upsert(ids_of(500), x)
    q = clustered(5, 8, seed=9)
    hits = c.search(q, k=5)
    if metric == "cosine":
        xn, qn = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
        scores = qn @ xn.T
    elif metric == "ip":
        scores = q @ x.T
    else:
        scores = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    for row in range(5):
        best = np.argsort(-scores[row])[:5]
        assert [h.id for h in hits[row]] == [f"item-{i}" for i in best]
        np.testing.assert_allclose([h.score for h in hits[row]], scores[row][best], rtol=1e-4, atol=1e-4)
        assert all(a.score >= b.score for a, b in zip(hits[row], hits[row][1:], strict=False))


def test_upsert_replaces_and_delete_removes(open_collection: OpenCollection) -> None:
    c = open_collection(dim=4, metric="l2")
    c.upsert(["a", "b"], [[0, 0, 0, 1], [0, 0, 1, 0]], [{"v": 1}, {"v": 2}])
    c.upsert(["a"], [[5, 5, 5, 5]], [{"v": 3}])
    assert c.count == 2 and c.index.size == 2
    assert c.get("a").payload == {"v": 3}
    assert c.vector_of("a").tolist() == [5, 5, 5, 5]
    assert c.search([[5, 5, 5, 5]], k=1)[0][0].id == "a"
    assert c.delete(["a", "zzz"]) == 1
    assert c.count == 1 and c.index.size == 1
    with pytest.raises(ItemNotFound):
        c.get("a")
    assert [h.id for h in c.search([[5, 5, 5, 5]], k=5)[0]] == ["b"]


def test_search_hits_carry_the_latest_payload_and_version_after_upserts_deletes_and_restart(
    open_collection: OpenCollection,
) -> None:
    """The search loop reads ``hit_fields`` (id, payload, version in one lookup): it must say what the
    three maps say after every kind of write, and after a replay."""
    c = open_collection(dim=4, metric="l2", options=IndexOptions(background=False, snapshot_every=10**9))
    c.upsert(["a", "b", "c"], [[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]], [{"v": 1}, None, {"v": 3}])
    c.upsert(["a"], [[0, 0, 0, 1]], [{"v": 9}])
    c.delete(["c"])
    for coll in (c, open_collection(dim=4, metric="l2")):  # the second: replayed from the log
        assert coll.hit_fields == {n: (coll.int_to_id[n], coll.payloads[n], coll.versions[n]) for n in coll.int_to_id}
        hits = {h.id: h for h in coll.search([[0, 0, 0, 1]], k=5)[0]}
        assert set(hits) == {"a", "b"}
        assert hits["a"].payload == {"v": 9} and hits["b"].payload is None


def test_thumbnails_follow_the_last_write_and_go_with_the_item(open_collection: OpenCollection) -> None:
    c = open_collection(dim=4, metric="l2")
    picture = Thumbnail(b"\xff\xd8jpeg", 64, 48)
    c.upsert(["a", "b"], [[0, 0, 0, 1], [0, 0, 1, 0]], thumbnails=[picture, None])
    assert c.thumbnails.get("a") == picture and c.thumbnails.get("b") is None
    c.upsert(["a"], [[1, 0, 0, 0]])  # a vector from elsewhere: the old picture no longer describes it
    assert c.thumbnails.get("a") is None
    c.upsert(["b"], [[1, 0, 0, 0]], thumbnails=[picture])
    assert c.delete(["b"]) == 1 and c.thumbnails.get("b") is None


def test_repeated_id_in_one_batch_keeps_the_last(open_collection: OpenCollection) -> None:
    c = open_collection(dim=2)
    c.upsert(["a", "a"], [[1, 0], [0, 1]], [{"n": 1}, {"n": 2}])
    assert c.count == 1 and c.get("a").payload == {"n": 2}


@pytest.mark.parametrize(
    ("vectors", "message"),
    [([[1.0, 2.0]], "dimension 2"), ([[np.nan] * 4], "NaN or Inf"), ([[np.inf] * 4], "NaN or Inf"), ([[]], "empty")],
)
def test_bad_vectors_are_refused_and_nothing_is_written(
    open_collection: OpenCollection, vectors: list[list[float]], message: str
) -> None:
    c = open_collection(dim=4)
    end = c.wal.end_offset
    with pytest.raises(InvalidInput, match=message):
        c.upsert(["x"], vectors)
    assert c.count == 0 and c.wal.end_offset == end


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ4"])
def test_filters_return_exactly_the_matching_items(open_collection: OpenCollection, spec: str) -> None:
    c = open_collection(dim=16, metric="l2", index=spec)
    n = 2000
    x = clustered(n, 16)
    payloads = [{"shard": i % 10, "price": i % 100, "rare": i % 250 == 0} for i in range(n)]
    c.upsert(ids_of(n), x, payloads)
    c.delete(ids_of(5))  # deletions exercise HNSW tombstones too
    assert c.index.spec == spec
    if not spec.startswith("HNSW"):  # these indexes really delete: no tombstones
        assert not c.index.dead and c.index.index.ntotal == n - 5
    live = {f"item-{i}": payloads[i] for i in range(5, n)}
    q = clustered(4, 16, seed=5)
    cases = [
        ({"shard": 3}, 20),
        ({"shard": {"in": [1, 2]}, "price": {"gte": 10, "lt": 20}}, 15),
        ({"rare": True}, 20),  # 7 live matches: fewer than k
        ({"price": {"gt": 1000}}, 5),
    ]
    for flt, k in cases:
        matching = {i for i, p in live.items() if all(_ok(p[f], cond) for f, cond in flt.items())}
        for hits in c.search(q, k=k, flt=flt):
            got = [h.id for h in hits]
            assert len(got) == min(k, len(matching)), (flt, spec)
            assert set(got) <= matching and len(set(got)) == len(got)


def _ok(value: object, cond: object) -> bool:
    if not isinstance(cond, dict):
        return value == cond
    v = float(value)  # type: ignore[arg-type]
    return (
        ("in" not in cond or value in cond["in"])
        and ("gte" not in cond or v >= cond["gte"])
        and ("gt" not in cond or v > cond["gt"])
        and ("lt" not in cond or v < cond["lt"])
    )


def test_restart_replays_the_log_without_snapshot(open_collection: OpenCollection) -> None:
    c = open_collection(dim=4, options=IndexOptions(background=False, snapshot_every=10**9))
    x = clustered(300, 4)
    c.upsert(ids_of(300), x, [{"i": i} for i in range(300)])
    c.upsert(["item-7"], [[9, 9, 9, 9]])
    c.delete(["item-8"])
    # No close(): as after kill -9, nothing but the fsynced log and the store survive.
    again = open_collection(dim=4)
    assert again.count == 299 and again.index.size == 299
    assert again.vector_of("item-7").tolist() == [9, 9, 9, 9]
    assert again.vector_of("item-9").tobytes() == x[9].tobytes()
    assert again.search(x[10:11], k=1)[0][0].id == "item-10"


def test_snapshot_truncates_log_and_restart_uses_it(open_collection: OpenCollection, tmp_path: Path) -> None:
    opts = IndexOptions(background=False, snapshot_every=100, wal_segment_bytes=4096)
    c = open_collection(dim=4, options=opts)
    x = clustered(1000, 4)
    for start in range(0, 1000, 50):
        c.upsert(ids_of(50, start), x[start : start + 50])
    assert (tmp_path / "c" / "snapshot.json").exists()
    assert c.wal.start_offset > 0  # old segments were dropped once snapshot and store covered them
    again = open_collection(dim=4, options=opts)
    assert again.count == 1000 and again.index.size == 1000
    assert again.search(x[:1], k=1)[0][0].id == "item-0"


def test_corrupt_snapshot_is_rebuilt_from_the_store(open_collection: OpenCollection, tmp_path: Path) -> None:
    c = open_collection(dim=4, options=IndexOptions(background=False, snapshot_every=10))
    x = clustered(100, 4)
    c.upsert(ids_of(100), x)
    snap = next((tmp_path / "c").glob("index-*.faiss"))
    snap.write_bytes(b"garbage")
    again = open_collection(dim=4)
    assert again.count == 100 and again.index.size == 100
    assert again.search(x[3:4], k=1)[0][0].id == "item-3"


# A budget of 500 kB cannot hold 4000 16-d vectors in HNSW (~1.6 MB) but holds their SQ8 codes.
@pytest.mark.parametrize(("budget", "kind"), [(0, "HNSW"), (500_000, "IVF")])
def test_auto_switches_to_an_approximate_index_with_measured_recall(
    open_collection: OpenCollection, budget: int, kind: str
) -> None:
    opts = IndexOptions(background=False, auto_threshold=3000, memory_budget=budget)
    c = open_collection(dim=16, metric="cosine", options=opts)
    x = clustered(4000, 16, clusters=50)
    c.upsert(ids_of(2000), x[:2000])
    assert c.index.spec == "Flat"
    c.upsert(ids_of(2000, 2000), x[2000:])
    assert c.index.spec.startswith(kind) and (c.index.nprobe or c.index.ef_search)
    assert (c.index.exact is not None) == (kind == "IVF")  # SQ8 re-ranks with exact vectors
    q = clustered(100, 16, seed=3, clusters=50)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(qn @ xn.T), axis=1)[:, :10]
    found = c.search(q, k=10)
    recall = np.mean(
        [len({h.id for h in f} & {f"item-{i}" for i in t}) / 10 for f, t in zip(found, truth, strict=True)]
    )
    assert recall >= 0.9
    c.upsert(["new"], [x[0] * -1])
    assert c.count == c.index.size == 4001


def test_background_build_keeps_writes_made_during_the_build(open_collection: OpenCollection) -> None:
    # the budget forces IVF-SQ8: the build also writes the exact-vector file the replay appends to
    c = open_collection(dim=8, options=IndexOptions(background=True, auto_threshold=2000, memory_budget=600_000))
    x = clustered(6000, 8)
    c.upsert(ids_of(2000), x[:2000])  # crosses the threshold: the IVF build starts in a thread
    writer = threading.Thread(target=lambda: [c.upsert(ids_of(100, s), x[s : s + 100]) for s in range(2000, 6000, 100)])
    writer.start()
    c.delete(ids_of(10))
    c.upsert(ids_of(10, 20), x[:10])  # replace while building
    writer.join()
    c.policy.close(snapshot=False)  # waits for the build thread
    assert c.index.spec.startswith("IVF")
    assert c.count == c.index.size == 5990
    for i in (15, 2500, 5999):
        assert c.search(x[i : i + 1], k=1)[0][0].id == f"item-{i}"
    assert c.search(x[:1], k=1)[0][0].id == "item-20"


def test_searches_run_while_writes_continue(open_collection: OpenCollection) -> None:
    c = open_collection(dim=8, options=IndexOptions(background=True, auto_threshold=1500, memory_budget=400_000))
    x = clustered(3000, 8)
    c.upsert(ids_of(500), x[:500])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hits in c.search(x[:4], k=5):
                    assert len(hits) == 5 and len({h.id for h in hits}) == 5
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for s in range(500, 3000, 100):
        c.upsert(ids_of(100, s), x[s : s + 100])
    stop.set()
    for t in threads:
        t.join()
    c.policy.close(snapshot=False)
    assert not errors, errors
    assert c.count == c.index.size == 3000 and c.index.spec.startswith("IVF")


def test_gpu_replica_stays_off_without_a_gpu(open_collection: OpenCollection) -> None:
    from indexer.gpu import gpu_count

    c = open_collection(dim=4)
    c.upsert(ids_of(3), clustered(3, 4))
    assert c.index.gpu.enabled == (gpu_count() > 0)
    # Below MIN_GPU_VECTORS the CPU index serves even where a GPU exists.
    assert c.index.gpu.get(c.index.index, c.index.version) is None


def test_store_from_another_data_dir_is_refused(open_collection: OpenCollection, tmp_path: Path) -> None:
    import shutil

    from indexer.errors import StoreMismatch

    c = open_collection(dim=4)
    c.upsert(ids_of(10), clustered(10, 4))
    c.close()
    shutil.rmtree(tmp_path / "c")  # the store remembers a log this directory no longer has
    with pytest.raises(StoreMismatch, match="does not belong to this metadata store"):
        open_collection(dim=4)


def test_faiss_runs_single_threaded_in_every_worker_thread(open_collection: OpenCollection) -> None:
    import faiss

    from indexer.threads import set_faiss_threads

    c = open_collection(dim=4)
    c.upsert(ids_of(10), clustered(10, 4))
    set_faiss_threads(1)
    seen: list[int] = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)  # what a fresh OpenMP thread would default to on 2 cores
        c.search(clustered(1, 4), k=1)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1]


def test_a_replay_that_skips_a_record_quarantines_instead_of_diverging(
    open_collection: OpenCollection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log replay that lost a record (the replay/truncation race of stop 32 did) must not let the store
    # and the index go on with different contents: the catch-up checks that the offsets follow each other.
    c = open_collection(dim=4, options=IndexOptions(background=False, snapshot_every=10**9))
    c.upsert(["a"], [[1, 0, 0, 0]])
    real = type(c.wal).replay

    def losing_the_first(wal: Any, from_offset: int = 0) -> Iterator[tuple[int, bytes]]:
        yield from list(real(wal, from_offset))[1:]

    monkeypatch.setattr(type(c.wal), "replay", losing_the_first)
    c.upsert(["b"], [[0, 1, 0, 0]])  # its own record is the one lost: applied by the next write's catch-up
    assert c.count == 1
    with pytest.raises(CollectionQuarantined, match="jumped from offset"):
        c.upsert(["c"], [[0, 0, 1, 0]])  # the catch-up now sees b's record missing before c's
    assert c.count == 1 and c.index.size == 1  # nothing applied past the gap
