"""Bad input gets a clear 4xx JSON error ``{error: {code, message}}`` and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient


def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    err: dict[str, str] = response.json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    return err


@pytest.fixture
def docs(make_client: MakeClient) -> TestClient:
    client = make_client(max_batch=10, max_queries=4, max_k=50, max_body_bytes=200_000)
    assert client.post("/v1/collections", json={"name": "docs", "dim": 4}).status_code == 201
    client.put("/v1/collections/docs/items", json={"items": [{"id": "a", "vector": [1, 0, 0, 0]}]})
    return client


def assert_unchanged(client: TestClient) -> None:
    info = client.get("/v1/collections/docs").json()
    assert info["count"] == info["indexed"] == 1


def test_unknown_collection_and_item_are_404(docs: TestClient) -> None:
    for method, path, body in [
        ("GET", "/v1/collections/nope", None),
        ("DELETE", "/v1/collections/nope", None),
        ("PUT", "/v1/collections/nope/items", {"items": [{"id": "x", "vector": [1, 0, 0, 0]}]}),
        ("POST", "/v1/collections/nope/search", {"vector": [1, 0, 0, 0]}),
        ("GET", "/v1/collections/nope/items/a", None),
    ]:
        err = error_of(docs.request(method, path, json=body), 404)
        assert err["code"] == "collection_not_found" and "'nope' does not exist" in err["message"]
    err = error_of(docs.get("/v1/collections/docs/items/missing"), 404)
    assert err["code"] == "item_not_found" and "'missing'" in err["message"]
    error_of(docs.delete("/v1/collections/docs/items/missing"), 404)
    error_of(docs.post("/v1/collections/docs/search", json={"id": "missing"}), 404)


def test_duplicate_collection_is_409(docs: TestClient) -> None:
    err = error_of(docs.post("/v1/collections", json={"name": "docs", "dim": 4}), 409)
    assert err["code"] == "already_exists" and "'docs' already exists" in err["message"]
    assert docs.get("/v1/collections/docs").json()["dim"] == 4


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([1.0, 2.0], "dimension 2, collection expects 4"),
        ([], "dimension 0, collection expects 4"),
        ("NaN", "NaN or Inf"),
        ("Infinity", "NaN or Inf"),
        ("-Infinity", "NaN or Inf"),
        ([1e39, 0, 0, 0], "outside the float32 range"),
    ],
)
def test_bad_vectors_are_422_and_write_nothing(docs: TestClient, vector: Any, message: str) -> None:
    raw = json.dumps(vector) if isinstance(vector, list) else f"[{vector}, 0, 0, 0]"
    body = '{"items": [{"id": "good", "vector": [0, 1, 0, 0]}, {"id": "bad", "vector": ' + raw + "}]}"
    r = docs.put("/v1/collections/docs/items", content=body, headers={"content-type": "application/json"})
    assert message in error_of(r, 422)["message"]
    assert_unchanged(docs)  # the good item of the batch was not written either
    search = '{"vector": ' + raw + ', "k": 1}'
    r = docs.post("/v1/collections/docs/search", content=search, headers={"content-type": "application/json"})
    error_of(r, 422)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "dim": 0}, "dim must be between"),
        ({"name": "bad name!", "dim": 4}, "collection name"),
        ({"name": "x", "dim": 4, "metric": "hamming"}, "metric"),
        ({"name": "x", "dim": 4, "index": "NotAnIndex99"}, "invalid FAISS index spec"),
        ({"name": "x"}, "dim is required"),
    ],
)
def test_bad_collection_specs_are_422(docs: TestClient, body: dict[str, Any], message: str) -> None:
    assert message in error_of(docs.post("/v1/collections", json=body), 422)["message"]
    assert docs.get("/v1/collections/x").status_code == 404


def test_malformed_requests_are_422(docs: TestClient) -> None:
    r = docs.put("/v1/collections/docs/items", content=b"{not json", headers={"content-type": "application/json"})
    error_of(r, 422)
    assert "items" in error_of(docs.put("/v1/collections/docs/items", json={}), 422)["message"]
    assert "items is empty" in error_of(docs.put("/v1/collections/docs/items", json={"items": []}), 422)["message"]
    both = {"vector": [1, 0, 0, 0], "id": "a"}
    assert "exactly one" in error_of(docs.post("/v1/collections/docs/search", json=both), 422)["message"]
    bad_filter = {"vector": [1, 0, 0, 0], "filter": {"n": {"like": 3}}}
    assert "unknown operator" in error_of(docs.post("/v1/collections/docs/search", json=bad_filter), 422)["message"]
    error_of(docs.post("/v1/collections/docs/search", json={"vector": [1, 0, 0, 0], "k": 0}), 422)
    assert_unchanged(docs)


def test_limits_are_413(docs: TestClient) -> None:
    items = [{"id": f"i{i}", "vector": [1, 0, 0, 0]} for i in range(11)]
    err = error_of(docs.put("/v1/collections/docs/items", json={"items": items}), 413)
    assert err["code"] == "limit_exceeded" and "limit is 10 (ERS_MAX_BATCH)" in err["message"]
    queries = [{"vector": [1, 0, 0, 0]}] * 5
    assert (
        "ERS_MAX_QUERIES"
        in error_of(docs.post("/v1/collections/docs/search/batch", json={"queries": queries}), 413)["message"]
    )
    assert (
        "ERS_MAX_K"
        in error_of(docs.post("/v1/collections/docs/search", json={"vector": [1, 0, 0, 0], "k": 51}), 413)["message"]
    )
    huge = json.dumps({"items": [{"id": "h", "vector": [0.1] * 4, "payload": {"blob": "x" * 300_000}}]})
    err = error_of(
        docs.put("/v1/collections/docs/items", content=huge, headers={"content-type": "application/json"}), 413
    )
    assert "ERS_MAX_BODY_BYTES" in err["message"]
    # A chunked body without Content-Length is counted as it streams.
    chunks = (huge[i : i + 65536].encode() for i in range(0, len(huge), 65536))
    r = docs.put("/v1/collections/docs/items", content=chunks, headers={"content-type": "application/json"})
    error_of(r, 413)
    assert_unchanged(docs)
