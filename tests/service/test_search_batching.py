"""Query coalescing: merged searches answer exactly what each search answers alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pytest

from indexer.collection import Collection, Hit
from indexer.errors import InvalidInput
from indexer.index_policy import IndexOptions
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig
from service.runtime.search_batcher import SearchBatcher
from tests.indexer.conftest import clustered
from tests.service.conftest import MakeClient

DIM = 16
N = 3000
MakeCollection = Callable[..., Collection]


@pytest.fixture
def make_collection(tmp_path: Path) -> Iterator[MakeCollection]:
    stores: list[SqliteStore] = []

    def _make(index: str = "Flat", name: str = "c") -> Collection:
        store = SqliteStore(tmp_path / f"{name}.sqlite3")
        stores.append(store)
        cfg = CollectionConfig(name=name, dim=DIM, metric="cosine", index=index)
        store.create_collection(cfg)
        c = Collection(cfg, tmp_path / name, store, IndexOptions(background=False))
        payloads = [{"shard": i % 10, "rare": i % 500 == 0} for i in range(N)]
        c.upsert([f"item-{i}" for i in range(N)], clustered(N, DIM), payloads)
        return c

    yield _make
    for store in stores:
        store.close()


def _rows(hits: list[Hit]) -> tuple[list[str], list[float]]:
    return [h.id for h in hits], [h.score for h in hits]


def _assert_same(merged: list[list[Hit]], alone: list[list[Hit]]) -> None:
    assert len(merged) == len(alone)
    for m, a in zip(merged, alone, strict=True):
        (m_ids, m_scores), (a_ids, a_scores) = _rows(m), _rows(a)
        assert m_ids == a_ids
        # A merged call may score with a matrix product instead of a scan: same values up to rounding.
        np.testing.assert_allclose(m_scores, a_scores, rtol=1e-5, atol=1e-6)


async def _gather(batcher: SearchBatcher, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Submit all searches in one event-loop turn: with one slot, the first runs alone and the
    rest queue behind it, so they are merged by construction (no timing involved)."""
    return await asyncio.gather(*(batcher.search(*call) for call in calls), return_exceptions=True)


def test_merged_searches_equal_searches_alone(make_collection: MakeCollection) -> None:
    c = make_collection()
    queries = clustered(12, DIM, seed=3)
    stored = c.vector_of("item-7")[None, :]
    calls: list[tuple[Any, ...]] = [(c, queries[i : i + 1], 10) for i in range(12)]
    calls.append((c, stored, 10, None, ["item-7"]))  # search by id: its own item left out
    calls.append((c, queries[:3], 10))  # a batch request's rows ride along too
    batcher = SearchBatcher(concurrency=1)
    results = asyncio.run(_gather(batcher, calls))

    assert batcher.calls == 2 and batcher.searches == len(calls)  # the first alone, the rest merged
    for call, got in zip(calls, results, strict=True):
        _, vectors, k, *rest = call
        exclude = rest[1] if len(rest) > 1 else None
        _assert_same(got, c.search(vectors, k, exclude=exclude))
    by_id = results[12][0]
    assert "item-7" not in [h.id for h in by_id] and len(by_id) == 10


@pytest.mark.parametrize("index", ["Flat", "IVF16,Flat"])
def test_filters_and_k_are_respected_per_search(make_collection: MakeCollection, index: str) -> None:
    c = make_collection(index)
    assert c.index.spec == index
    queries = clustered(9, DIM, seed=4)
    # "rare" matches 6 items: an IVF index probing few cells finds fewer, and those rows alone
    # fall back to exact scoring; rows of the other filter in the same run must not be affected.
    filters: list[dict[str, Any] | None] = [{"shard": 3}, {"rare": True}, None]
    calls = [(c, queries[i : i + 1], 5 + i % 2, filters[i % 3]) for i in range(9)]
    batcher = SearchBatcher(concurrency=1)
    results = asyncio.run(_gather(batcher, calls))

    assert batcher.searches == 9 and batcher.calls < 9  # same (k, filter) searches were merged
    shard = {f"item-{i}" for i in range(N) if i % 10 == 3}
    rare = {f"item-{i}" for i in range(N) if i % 500 == 0}
    for (_, vectors, k, flt), got in zip(calls, results, strict=True):
        _assert_same(got, c.search(vectors, k, flt))
        ids = {h.id for h in got[0]}
        assert len(got[0]) == (min(k, len(rare)) if flt == {"rare": True} else k)
        if flt == {"shard": 3}:
            assert ids <= shard
        elif flt == {"rare": True}:
            assert ids <= rare


def test_ivf_filter_fallback_is_decided_per_row(make_collection: MakeCollection) -> None:
    c = make_collection("IVF16,Flat")
    c.index.set_nprobe(1)  # one cell: a rare filter runs short in some rows, not in others
    queries = c.index.reconstruct(np.arange(0, N, 150, dtype=np.int64))  # 20 rows over the cells
    allowed = np.arange(0, N, 100, dtype=np.int64)
    params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(allowed), nprobe=1)
    _, probed = c.index.index.search(queries, 4, params=params)
    found = (probed >= 0).sum(axis=1)
    assert found.min() < 4 <= found.max()  # the case really mixes rows that fall back and rows that do not

    merged_scores, merged_ids = c.index.search(queries, 4, allowed)
    for row in range(len(queries)):
        scores, ids = c.index.search(queries[row : row + 1], 4, allowed)
        np.testing.assert_array_equal(merged_ids[row], ids[0])
        np.testing.assert_allclose(merged_scores[row], scores[0], rtol=1e-5)
        if found[row] == 4:  # enough in the probed cell: the approximate answer stands
            np.testing.assert_array_equal(ids[0], probed[row])
    assert (merged_ids >= 0).all()  # and the short rows were completed exactly


def test_a_failing_search_fails_alone(make_collection: MakeCollection) -> None:
    c = make_collection()
    queries = clustered(6, DIM, seed=5)
    bad = np.zeros((1, DIM + 1), dtype=np.float32)  # wrong dimension (the route would refuse it)
    calls: list[tuple[Any, ...]] = [(c, queries[i : i + 1], 10) for i in range(6)]
    calls.insert(3, (c, bad, 10))
    batcher = SearchBatcher(concurrency=1)
    results = asyncio.run(_gather(batcher, calls))

    assert isinstance(results[3], InvalidInput)
    good = [r for i, r in enumerate(results) if i != 3]
    for i, got in enumerate(good):
        _assert_same(got, c.search(queries[i : i + 1], 10))


def test_collections_are_never_merged_and_cancelled_searches_are_skipped(make_collection: MakeCollection) -> None:
    a, b = make_collection(name="a"), make_collection(name="b")
    b.delete([f"item-{i}" for i in range(N // 2)])  # b differs from a
    q = clustered(1, DIM, seed=6)
    batcher = SearchBatcher(concurrency=1)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.search(a, q, 5))
        gone = asyncio.ensure_future(batcher.search(a, q, 5))
        rest = [asyncio.ensure_future(batcher.search(col, q, 5)) for col in (a, b, b)]
        await asyncio.sleep(0)  # let them queue behind the first
        gone.cancel()  # a client that went away before its turn
        return [await first, *[await t for t in rest], gone.cancelled()]

    first, a2, b1, b2, cancelled = asyncio.run(scenario())
    assert cancelled
    _assert_same(first, a.search(q, 5))
    _assert_same(a2, a.search(q, 5))
    _assert_same(b1, b.search(q, 5))
    _assert_same(b2, b.search(q, 5))
    assert batcher.searches == 4  # the cancelled one was never run


def test_concurrent_api_searches_answer_like_sequential_ones(make_client: MakeClient) -> None:
    client = make_client(search_concurrency=1)
    x = clustered(500, DIM)
    items = [{"id": f"d{i}", "vector": x[i].tolist(), "payload": {"even": i % 2 == 0}} for i in range(500)]
    assert client.post("/v1/collections", json={"name": "docs", "dim": DIM}).status_code == 201
    assert client.put("/v1/collections/docs/items", json={"items": items}).status_code == 200
    queries = clustered(16, DIM, seed=7)
    bodies: list[dict[str, Any]] = [{"vector": q.tolist(), "k": 5} for q in queries]
    bodies += [{"vector": queries[0].tolist(), "k": 5, "filter": {"even": True}}, {"id": "d3", "k": 5}]
    bodies.append({"vector": [1.0] * (DIM - 1), "k": 5})  # wrong dimension: 422 for this one only
    sequential = [client.post("/v1/collections/docs/search", json=b) for b in bodies]

    async def concurrent() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(*(ac.post("/v1/collections/docs/search", json=b) for b in bodies))

    assert client.portal is not None
    together = client.portal.call(concurrent)
    batcher = client.app.state.search_batcher  # type: ignore[attr-defined]
    assert batcher.calls < batcher.searches  # some requests really were merged
    assert [r.status_code for r in together] == [r.status_code for r in sequential] == [200] * 18 + [422]
    assert together[-1].json()["error"]["code"] == "invalid_input"
    for seq, tog in zip(sequential[:-1], together[:-1], strict=True):
        s, t = seq.json()["results"], tog.json()["results"]
        assert [h["id"] for h in s] == [h["id"] for h in t]
        np.testing.assert_allclose([h["score"] for h in s], [h["score"] for h in t], rtol=1e-5, atol=1e-6)
        assert [h["payload"] for h in s] == [h["payload"] for h in t]
    assert all(h["payload"]["even"] for h in together[16].json()["results"])
    assert "d3" not in [h["id"] for h in together[17].json()["results"]]
