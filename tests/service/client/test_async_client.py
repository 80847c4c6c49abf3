"""``AsyncERSClient`` against the same live ``ers serve``: the core flow (collections, items, search,
a job followed to its end, a migration) and the typed errors, with requests in flight together."""

from __future__ import annotations

import asyncio

import pytest

from service.client import (
    AsyncERSClient,
    Conflict,
    ERSConnectionError,
    InvalidRequest,
    NewItem,
    NotFound,
    PayloadTooLarge,
    Query,
    Unauthorized,
)
from tests.service.client.conftest import TEXT_V2, LiveServer
from tests.service.server_proc import free_port
from tests.service.test_jobs_support import TEXT, text_tree


async def core_flow(live: LiveServer) -> None:
    async with AsyncERSClient(live.url, live.key) as ers:
        assert (await ers.healthz()).status == "ok"
        made = await ers.create_collection("a-vec", 2, metric="ip")
        assert (made.name, made.dim, made.metric) == ("a-vec", 2, "ip")
        upserted = await asyncio.gather(
            *(ers.upsert("a-vec", [NewItem(f"x{i}", vector=[1.0, i / 10], payload={"i": i})]) for i in range(8))
        )
        assert sum(u.upserted for u in upserted) == 8
        assert (await ers.get_item("a-vec", "x3", with_vector=True)).vector == pytest.approx([1.0, 0.3])
        many = await asyncio.gather(*(ers.search("a-vec", vector=[0.0, 1.0], k=k) for k in (1, 2, 3)))
        assert [[h.id for h in r.results] for r in many] == [["x7"], ["x7", "x6"], ["x7", "x6", "x5"]]
        batch = await ers.search_batch("a-vec", [Query(id="x7", k=1, filter={"i": {"lt": 3}})])
        assert [h.id for h in batch.results[0]] == ["x2"]
        assert await ers.delete_item("a-vec", "x0") == 1
        assert [c.count for c in await ers.list_collections() if c.name == "a-vec"] == [7]

        with pytest.raises(NotFound) as missing:
            await ers.get_collection("a-none")
        assert (missing.value.status, missing.value.code) == (404, "collection_not_found")
        assert "a-none" in missing.value.message
        with pytest.raises(Conflict) as dup:
            await ers.create_collection("a-vec", 2)
        assert dup.value.status == 409 and dup.value.code == "already_exists"
        with pytest.raises(InvalidRequest, match="dimension 3"):
            await ers.search("a-vec", vector=[1, 2, 3])
        with pytest.raises(PayloadTooLarge):
            await ers.search_batch("a-vec", [Query(vector=[1, 0])] * 10_000)

        await ers.create_collection("a-text", encoder=TEXT)
        good, bad = text_tree(live.sources / "async-texts", good=6)
        job = await ers.submit_job("a-text", str(live.sources / "async-texts"))
        seen = [j async for j in ers.watch_job(job.id, interval=0.05)]
        assert seen[-1].state == "succeeded" and (seen[-1].done, seen[-1].failed) == (len(good), len(bad))
        assert not any(j.terminal for j in seen[:-1])
        hits = (await ers.search("a-text", text="document number 3 about topic 3", k=1)).results
        assert hits[0].encoder_version == TEXT

        moved = await ers.migrate("a-text", TEXT_V2, force=True)
        assert moved.active == TEXT_V2 and moved.migration.gate == "forced"
        assert (await ers.rollback("a-text")).active == TEXT
        assert [m.kind for m in (await ers.migrations("a-text")).history] == ["migrate", "rollback"]
        await ers.delete_collection("a-vec")
        with pytest.raises(NotFound):
            await ers.search("a-vec", vector=[1, 0])


def test_async_core_flow(live: LiveServer) -> None:
    asyncio.run(core_flow(live))


async def wrong_key_and_no_server(live: LiveServer) -> None:
    async with AsyncERSClient(live.url, "wrong") as stranger:
        with pytest.raises(Unauthorized) as caught:
            await stranger.list_jobs()
        assert caught.value.status == 401 and caught.value.code == "unauthorized"
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncERSClient(url, timeout=2) as nowhere:
        with pytest.raises(ERSConnectionError, match=f"cannot reach ERS at {url}"):
            await nowhere.readyz()


def test_async_errors(live: LiveServer) -> None:
    asyncio.run(wrong_key_and_no_server(live))
