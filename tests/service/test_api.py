"""REST API v1: the happy paths a client relies on."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient


def _items(n: int, dim: int, seed: int = 0, start: int = 0) -> tuple[list[dict[str, object]], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    items = [
        {"id": f"doc-{start + i}", "vector": x[i].tolist(), "payload": {"lang": ["en", "de"][i % 2], "n": start + i}}
        for i in range(n)
    ]
    return items, x


def test_collection_lifecycle(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "docs", "dim": 8, "metric": "cosine"})
    assert r.status_code == 201
    assert r.json() | {"created_at": 0} == {
        "name": "docs", "dim": 8, "metric": "cosine", "encoder": None, "index": "auto", "created_at": 0,
        "count": 0, "indexed": 0, "active_index": "Flat", "nprobe": None, "building": False, "keep_sources": False,
        "ef_search": None, "measured_recall": 1.0, "rerank": None,
    }  # fmt: skip
    client.post("/v1/collections", json={"name": "imgs", "dim": 4, "metric": "l2", "index": "HNSW16"})
    names = [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    assert names == ["docs", "imgs"]
    assert client.get("/v1/collections/imgs").json()["active_index"] == "HNSW16"
    assert client.delete("/v1/collections/imgs").status_code == 204
    assert client.get("/v1/collections/imgs").status_code == 404
    assert [c["name"] for c in client.get("/v1/collections").json()["collections"]] == ["docs"]


def test_upsert_get_search_delete(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs", "dim": 8})
    items, x = _items(50, 8)
    assert client.put("/v1/collections/docs/items", json={"items": items}).json() == {"upserted": 50}
    info = client.get("/v1/collections/docs").json()
    assert info["count"] == info["indexed"] == 50

    item = client.get("/v1/collections/docs/items/doc-3", params={"with_vector": True}).json()
    assert item["payload"] == {"lang": "de", "n": 3} and item["encoder_version"] is None
    assert np.asarray(item["vector"], dtype=np.float32).tobytes() == x[3].tobytes()
    assert "vector" not in client.get("/v1/collections/docs/items/doc-3").json()

    r = client.post("/v1/collections/docs/search", json={"vector": x[7].tolist(), "k": 3})
    body = r.json()
    assert body["results"][0]["id"] == "doc-7" and abs(body["results"][0]["score"] - 1) < 1e-5
    assert body["results"][0]["payload"] == {"lang": "de", "n": 7}
    assert len(body["results"]) == 3 and body["took_ms"] >= 0

    by_id = client.post("/v1/collections/docs/search", json={"id": "doc-7", "k": 3}).json()["results"]
    assert "doc-7" not in [h["id"] for h in by_id] and len(by_id) == 3

    assert client.delete("/v1/collections/docs/items/doc-7").json() == {"deleted": 1}
    r = client.post("/v1/collections/docs/search", json={"vector": x[7].tolist(), "k": 50})
    assert "doc-7" not in [h["id"] for h in r.json()["results"]] and len(r.json()["results"]) == 49


def test_ids_with_slashes_are_reachable(client: TestClient) -> None:
    # A directory job's ids are relative paths ("cats/a.png"): get and delete must reach them.
    client.post("/v1/collections", json={"name": "pics", "dim": 4})
    items = [{"id": "cats/a b.png", "vector": [1, 0, 0, 0]}, {"id": "cats/b.png", "vector": [0, 1, 0, 0]}]
    client.put("/v1/collections/pics/items", json={"items": items})
    assert client.get("/v1/collections/pics/items/cats/a%20b.png").json()["id"] == "cats/a b.png"
    assert client.delete("/v1/collections/pics/items/cats/b.png").json() == {"deleted": 1}
    assert client.get("/v1/collections/pics/items/cats/b.png").status_code == 404
    assert client.get("/v1/collections/pics").json()["count"] == 1


def test_l2_scores_are_negated_squared_distances(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "pts", "dim": 2, "metric": "l2"})
    client.put(
        "/v1/collections/pts/items", json={"items": [{"id": "o", "vector": [0, 0]}, {"id": "p", "vector": [3, 4]}]}
    )
    hits = client.post("/v1/collections/pts/search", json={"vector": [0, 0], "k": 2}).json()["results"]
    assert [(h["id"], h["score"]) for h in hits] == [("o", 0.0), ("p", -25.0)]


def test_filtered_search_returns_k_matching(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs", "dim": 8})
    items, x = _items(200, 8)
    client.put("/v1/collections/docs/items", json={"items": items})
    flt = {"lang": "en", "n": {"gte": 100}}
    hits = client.post("/v1/collections/docs/search", json={"vector": x[0].tolist(), "k": 30, "filter": flt}).json()
    ids = [h["id"] for h in hits["results"]]
    assert len(ids) == 30
    assert all(h["payload"]["lang"] == "en" and h["payload"]["n"] >= 100 for h in hits["results"])
    few = client.post(
        "/v1/collections/docs/search", json={"vector": x[0].tolist(), "k": 30, "filter": {"n": {"in": [1, 2, 3]}}}
    )
    assert sorted(h["id"] for h in few.json()["results"]) == ["doc-1", "doc-2", "doc-3"]


def test_batch_search_answers_each_query(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs", "dim": 8})
    items, x = _items(100, 8)
    client.put("/v1/collections/docs/items", json={"items": items})
    queries = [{"vector": x[i].tolist(), "k": 2} for i in range(10)]
    queries.append({"vector": x[20].tolist(), "k": 5, "filter": {"lang": "de"}})
    queries.append({"id": "doc-30", "k": 1})
    body = client.post("/v1/collections/docs/search/batch", json={"queries": queries}).json()
    assert len(body["results"]) == 12
    assert [r[0]["id"] for r in body["results"][:10]] == [f"doc-{i}" for i in range(10)]
    assert all(len(r) == 2 for r in body["results"][:10])
    assert len(body["results"][10]) == 5 and all(h["payload"]["lang"] == "de" for h in body["results"][10])
    assert body["results"][11][0]["id"] != "doc-30"


def test_upsert_replaces_existing_id(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs", "dim": 2, "metric": "l2"})
    client.put("/v1/collections/docs/items", json={"items": [{"id": "a", "vector": [0, 0], "payload": {"v": 1}}]})
    client.put("/v1/collections/docs/items", json={"items": [{"id": "a", "vector": [9, 9], "payload": {"v": 2}}]})
    assert client.get("/v1/collections/docs").json()["count"] == 1
    got = client.get("/v1/collections/docs/items/a", params={"with_vector": True}).json()
    assert got["payload"] == {"v": 2} and got["vector"] == [9.0, 9.0]


def test_data_survives_a_restart(make_client: MakeClient) -> None:
    client = make_client()
    client.post("/v1/collections", json={"name": "docs", "dim": 8})
    items, x = _items(30, 8)
    client.put("/v1/collections/docs/items", json={"items": items})
    client.__exit__(None, None, None)
    again = make_client()
    assert again.get("/v1/collections/docs").json()["count"] == 30
    assert (
        again.post("/v1/collections/docs/search", json={"vector": x[4].tolist(), "k": 1}).json()["results"][0]["id"]
        == "doc-4"
    )


def test_health_ready_metrics_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/collections", json={"name": "docs", "dim": 8})
    items, _ = _items(5, 8)
    client.put("/v1/collections/docs/items", json={"items": items})
    client.get("/v1/collections/nope")
    text = client.get("/metrics").text
    assert 'ers_requests_total{method="PUT",path="/v1/collections/{name}/items",status="200"} 1' in text
    assert 'ers_requests_total{method="GET",path="/v1/collections/{name}",status="404"} 1' in text
    assert 'ers_collection_items{collection="docs"} 5.0' in text
    assert "ers_request_duration_seconds_bucket" in text
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/collections",
        "/v1/collections/{name}/items",
        "/v1/collections/{name}/search",
        "/v1/collections/{name}/search/batch",
        "/v1/collections/{name}/items/{item_id}",
    ):
        assert path in paths
