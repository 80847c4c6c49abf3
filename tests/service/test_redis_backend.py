"""The API on the Redis metadata store: same behaviour, and a clear 503 while Redis is down."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from tests.conftest import RedisServer
from tests.service.conftest import MakeClient


def test_api_on_redis_survives_restart_and_answers_503_while_redis_is_down(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    opts: dict[str, Any] = {"redis_url": redis_server.url, "redis_prefix": prefix}
    client = make_client(**opts)
    client.post("/v1/collections", json={"name": "docs", "dim": 4, "metric": "l2"})
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    items = [{"id": f"d{i}", "vector": x[i].tolist(), "payload": {"i": i}} for i in range(20)]
    assert client.put("/v1/collections/docs/items", json={"items": items}).json() == {"upserted": 20}
    client.__exit__(None, None, None)

    client = make_client(**opts)
    assert client.get("/v1/collections/docs").json()["count"] == 20
    got = client.get("/v1/collections/docs/items/d3", params={"with_vector": True}).json()
    assert np.asarray(got["vector"], dtype=np.float32).tobytes() == x[3].tobytes() and got["payload"] == {"i": 3}

    redis_server.kill()
    try:
        started = time.perf_counter()
        r = client.put("/v1/collections/docs/items", json={"items": [{"id": "late", "vector": [1, 2, 3, 4]}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "store_unavailable"
        assert time.perf_counter() - started < 5
        assert client.get("/readyz").status_code == 503
        r = client.post("/v1/collections", json={"name": "other", "dim": 4})
        assert r.status_code == 503
        # Searches are answered from memory while the store is away.
        hits = client.post("/v1/collections/docs/search", json={"vector": x[5].tolist(), "k": 1}).json()
        assert hits["results"][0]["id"] == "d5"
    finally:
        redis_server.start()

    # The client retries its write; the log already held it, so it is applied exactly once.
    r = client.put("/v1/collections/docs/items", json={"items": [{"id": "late", "vector": [1, 2, 3, 4]}]})
    assert r.status_code == 200
    info = client.get("/v1/collections/docs").json()
    assert info["count"] == info["indexed"] == 21
    assert client.get("/readyz").status_code == 200
