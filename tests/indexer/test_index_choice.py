"""``auto``'s index choice (size, dimension, memory budget), its tuning to the target recall, HNSW
deletes and updates through tombstones, and what snapshots and ``describe`` keep of the tuning."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.builder import FRESH_MARGIN, build_index
from indexer.index_choice import (
    RERANK_SQ8,
    choose_index,
    effective_budget,
    hnsw_bytes,
    ivf_bytes,
    physical_memory_bytes,
)
from indexer.index_policy import IndexOptions
from indexer.vector_index import prepare
from tests.indexer.conftest import OpenCollection, clustered


def ids_of(n: int, start: int = 0) -> list[str]:
    return [f"item-{i}" for i in range(start, start + n)]


def test_choice_follows_size_then_memory_budget() -> None:
    n, dim = 100_000, 384
    assert choose_index(19_999, dim, 10**12, auto_threshold=20_000).spec == "Flat"
    hnsw = choose_index(n, dim, hnsw_bytes(n, dim), auto_threshold=20_000)
    assert (hnsw.spec, hnsw.kind, hnsw.rerank) == ("HNSW32,Flat", "hnsw", 0)
    sq8 = choose_index(n, dim, hnsw_bytes(n, dim) - 1, auto_threshold=20_000)
    assert sq8.spec.endswith(",SQ8") and sq8.kind == "ivf" and sq8.rerank == RERANK_SQ8
    pq = choose_index(n, dim, ivf_bytes(n, dim, dim) - 1, auto_threshold=20_000)
    assert pq.spec == "IVF1024,PQ192" and pq.rerank > RERANK_SQ8  # largest PQ that fits, re-ranked


def test_budget_zero_means_half_of_physical_memory() -> None:
    assert effective_budget(0) == physical_memory_bytes() // 2
    assert effective_budget(123) == 123
    with pytest.raises(ValueError, match=">= 0"):
        effective_budget(-1)


def _fresh_recall(index_ids: np.ndarray, found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(index_ids[t])) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize(("budget", "kind"), [(10**10, "HNSW"), (4_000_000, "IVF")])
def test_tuned_recall_lands_just_above_the_target(tmp_path: Path, budget: int, kind: str) -> None:
    dim, target = 64, 0.95
    x = prepare(clustered(20_000, dim, clusters=40), "cosine")
    ids = np.arange(10**6, 10**6 + len(x), dtype=np.int64)
    choice = choose_index(len(x), dim, budget, auto_threshold=5_000)
    assert choice.spec.startswith(kind)
    index = build_index(dim, "cosine", choice, ids, x, target, directory=tmp_path)
    assert index.measured_recall is not None
    # held-out queries: at the target, and not over-provisioned (the old doubled nprobe gave +0.03)
    aim = target + FRESH_MARGIN  # held-out recall runs above fresh queries'; tuning aims above the target
    assert aim <= index.measured_recall <= aim + 0.02, index.measured_recall
    queries = prepare(clustered(300, dim, seed=9, clusters=40), "cosine")
    _, truth = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, 10)
    assert abs(_fresh_recall(ids, found, truth) - index.measured_recall) <= 0.03  # fresh queries agree


def test_hnsw_deletes_and_updates_through_tombstones(open_collection: OpenCollection) -> None:
    opts = IndexOptions(background=False, auto_threshold=500, tombstone_ratio=0.2)
    c = open_collection(dim=16, metric="l2", options=opts)
    x = clustered(1000, 16)
    c.upsert(ids_of(1000), x)
    assert c.index.spec == "HNSW32,Flat" and c.index.ef_search
    c.delete(ids_of(50))
    assert len(c.index.dead) == 50 and c.count == c.index.size == 950
    for hits in c.search(x[:50], k=10):
        assert len(hits) == 10 and not {h.id for h in hits} & set(ids_of(50))
    moved = x[600] + 0.01  # item-100 moves next to item-600: the old vector is a tombstone
    c.upsert(["item-100"], [moved])
    assert c.count == c.index.size == 950 and len(c.index.dead) == 51
    top = [h.id for h in c.search(moved[None, :], k=2)[0]]
    assert set(top) == {"item-100", "item-600"}
    assert "item-100" not in [h.id for h in c.search(x[100:101], k=5)[0]]
    c.delete(ids_of(200, 50))  # past tombstone_ratio: rebuilt without tombstones, still HNSW
    assert not c.index.dead and c.index.spec == "HNSW32,Flat" and c.count == c.index.size == 750
    assert c.search(moved[None, :], k=1)[0][0].id in {"item-100", "item-600"}


def test_growth_moves_flat_to_hnsw_then_to_sq8_when_hnsw_outgrows_the_budget(open_collection: OpenCollection) -> None:
    dim = 16
    budget = hnsw_bytes(1500, dim)  # HNSW fits up to 1500 vectors, SQ8 codes far beyond
    c = open_collection(dim=dim, options=IndexOptions(background=False, auto_threshold=1000, memory_budget=budget))
    x = clustered(2000, dim)
    c.upsert(ids_of(900), x[:900])
    assert c.index.spec == "Flat" and c.stats()["measured_recall"] == 1.0
    c.upsert(ids_of(300, 900), x[900:1200])
    assert c.index.spec == "HNSW32,Flat" and c.index.ef_search
    c.upsert(ids_of(800, 1200), x[1200:])
    assert c.index.spec.startswith("IVF") and c.index.spec.endswith("SQ8") and c.index.exact is not None
    assert c.count == c.index.size == 2000
    assert c.search(x[1500:1501], k=1)[0][0].id == "item-1500"


def test_restart_keeps_ef_search_and_measured_recall(open_collection: OpenCollection) -> None:
    opts = IndexOptions(background=False, auto_threshold=500)
    c = open_collection(dim=16, options=opts)
    x = clustered(1000, 16)
    c.upsert(ids_of(1000), x)
    before = c.stats()
    assert before["ef_search"] and before["measured_recall"] is not None and before["nprobe"] is None
    c.index.set_ef_search(before["ef_search"] + 7)  # not what a re-tune would pick: must come from the meta
    c.snapshot()
    again = open_collection(dim=16, options=opts)
    assert again.index.spec == "HNSW32,Flat"
    assert again.stats()["ef_search"] == before["ef_search"] + 7
    assert again.stats()["measured_recall"] == before["measured_recall"]


def test_sq8_restart_replays_writes_after_the_snapshot_into_the_exact_vectors(
    open_collection: OpenCollection, tmp_path: Path
) -> None:
    opts = IndexOptions(background=False, auto_threshold=500, memory_budget=200_000, snapshot_every=10**9)
    c = open_collection(dim=16, metric="l2", options=opts)
    x = clustered(1300, 16)
    c.upsert(ids_of(1000), x[:1000])
    assert c.index.exact is not None and c.stats()["rerank"] == RERANK_SQ8
    c.snapshot()
    c.upsert(ids_of(300, 1000), x[1000:])  # after the snapshot: appended to the exact file, then lost
    c.delete(["item-3"])
    # No close(): as after kill -9. The exact file is cut back to the snapshot's rows and replayed.
    again = open_collection(dim=16, metric="l2", options=opts)
    assert again.index.exact is not None and again.index.exact.rows == 1300
    assert again.count == again.index.size == 1299
    assert again.search(x[1200:1201], k=1)[0][0].id == "item-1200"
    assert again.search(x[3:4], k=1)[0][0].id != "item-3"
    # exact re-ranking: the scores are the exact (negated squared) distances
    hit = again.search(x[1250:1251] + 0.5, k=1)[0][0]
    stored = again.vector_of(hit.id)
    assert hit.score == pytest.approx(-float(np.sum((x[1250] + 0.5 - stored) ** 2)), rel=1e-5)
    assert len(list((tmp_path / "c").glob("exact-*.f32"))) == 1
