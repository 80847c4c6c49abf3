"""Vectors as bytes: ``vector_b64`` in JSON, msgpack bodies with ``bin`` vectors, msgpack answers on
``Accept``, and the ``with_payload`` / ``with_vector`` flags. Every bad body is a clear 4xx in the error
envelope and writes nothing."""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient

DIM = 8
MSGPACK = {"content-type": "application/msgpack"}
MSGPACK_BOTH = MSGPACK | {"accept": "application/msgpack"}
SEARCH = "/v1/collections/docs/search"
RNG = np.random.default_rng(7)
STORED = RNG.standard_normal((20, DIM)).astype(np.float32)
QUERIES = RNG.standard_normal((5, DIM)).astype(np.float32)


def b64(row: np.ndarray) -> str:
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()


def raw(row: np.ndarray) -> bytes:
    return np.asarray(row, dtype="<f4").tobytes()


def count(client: TestClient) -> int:
    info = client.get("/v1/collections/docs").json()
    assert info["count"] == info["indexed"]
    return int(info["count"])


def error_of(response: Any, statuses: tuple[int, ...], needle: str) -> dict[str, str]:
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/json")  # errors stay JSON
    err: dict[str, str] = response.json()["error"]
    assert set(err) == {"code", "message"} and needle in err["message"], err
    return err


@pytest.fixture
def docs(make_client: MakeClient) -> TestClient:
    client = make_client(max_batch=50, max_queries=10, max_body_bytes=50_000)
    assert client.post("/v1/collections", json={"name": "docs", "dim": DIM}).status_code == 201
    items = [{"id": f"i{n}", "vector": row.tolist(), "payload": {"n": n}} for n, row in enumerate(STORED)]
    assert client.put("/v1/collections/docs/items", json={"items": items}).json() == {"upserted": len(STORED)}
    return client


def ranked(results: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(h["id"], round(h["score"], 5)) for h in results]


def test_vector_b64_gives_the_json_list_result(docs: TestClient) -> None:
    for q in QUERIES:
        as_list = docs.post("/v1/collections/docs/search", json={"vector": q.tolist(), "k": 5}).json()["results"]
        as_b64 = docs.post("/v1/collections/docs/search", json={"vector_b64": b64(q), "k": 5}).json()["results"]
        assert as_b64 == as_list and len(as_list) == 5
    batch = {"queries": [{"vector_b64": b64(q), "k": 3} for q in QUERIES]}
    answer = docs.post("/v1/collections/docs/search/batch", json=batch).json()["results"]
    singles = [docs.post("/v1/collections/docs/search", json={"vector": q.tolist(), "k": 3}).json() for q in QUERIES]
    assert [ranked(a) for a in answer] == [ranked(s["results"]) for s in singles]
    # Lists and bytes mixed in one batch: each query as given.
    mixed = {"queries": [{"vector": QUERIES[0].tolist(), "k": 3}, {"vector_b64": b64(QUERIES[1]), "k": 3}]}
    answer = docs.post("/v1/collections/docs/search/batch", json=mixed).json()["results"]
    assert [ranked(a) for a in answer] == [ranked(s["results"]) for s in singles[:2]]


def test_upsert_with_vector_b64_stores_the_exact_float32(docs: TestClient) -> None:
    row = np.array([0.1, -2.5, 3e-8, 7, 0, 1, 2, 3], dtype=np.float32)
    r = docs.put("/v1/collections/docs/items", json={"items": [{"id": "b", "vector_b64": b64(row)}]})
    assert r.json() == {"upserted": 1}
    stored = docs.get("/v1/collections/docs/items/b", params={"with_vector": "true"}).json()["vector"]
    assert np.array_equal(np.asarray(stored, dtype=np.float32), row)


def test_msgpack_batch_upsert_and_batch_search_round_trip(docs: TestClient) -> None:
    rows = RNG.standard_normal((4, DIM)).astype(np.float32)
    items = [{"id": f"m{n}", "vector": raw(r), "payload": {"n": n, "tag": "mp"}} for n, r in enumerate(rows)]
    items.append({"id": "as-list", "vector": rows[0].tolist()})  # a plain list is a vector in msgpack too
    r = docs.put("/v1/collections/docs/items", content=msgpack.packb({"items": items}), headers=MSGPACK)
    assert r.status_code == 200 and r.json() == {"upserted": 5}
    assert count(docs) == len(STORED) + 5
    queries = [{"vector": raw(r), "k": 2, "filter": {"tag": "mp"}} for r in rows]
    r = docs.post("/v1/collections/docs/search/batch", content=msgpack.packb({"queries": queries}), headers=MSGPACK)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    for n, hits in enumerate(r.json()["results"]):
        assert hits[0]["id"] == f"m{n}" and hits[0]["payload"] == {"n": n, "tag": "mp"}
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_accept_msgpack_answers_in_msgpack(docs: TestClient) -> None:
    body = msgpack.packb({"vector": raw(QUERIES[0]), "k": 3, "with_vector": True})
    r = docs.post("/v1/collections/docs/search", content=body, headers=MSGPACK_BOTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    answer = msgpack.unpackb(r.content)
    expected = docs.post("/v1/collections/docs/search", json={"vector": QUERIES[0].tolist(), "k": 3}).json()
    assert ranked(answer["results"]) == ranked(expected["results"])
    for hit in answer["results"]:  # a vector comes back as float32 bytes, bit-exact as stored
        assert np.array_equal(np.frombuffer(hit["vector"], dtype="<f4"), STORED[int(hit["id"][1:])])
    batch = {"queries": [{"vector_b64": b64(QUERIES[1]), "k": 2}]}
    r = docs.post("/v1/collections/docs/search/batch", json=batch, headers={"accept": "application/msgpack"})
    assert r.headers["content-type"] == "application/msgpack" and len(msgpack.unpackb(r.content)["results"][0]) == 2
    item = {"items": [{"id": "z", "vector": raw(QUERIES[2])}]}
    r = docs.put("/v1/collections/docs/items", content=msgpack.packb(item), headers=MSGPACK_BOTH)
    assert msgpack.unpackb(r.content) == {"upserted": 1}
    # JSON preferred by q-value, or no msgpack named: JSON.
    prefer_json = {"accept": "application/msgpack;q=0.5, application/json"}
    r = docs.post("/v1/collections/docs/search", json={"vector": QUERIES[0].tolist()}, headers=prefer_json)
    assert r.headers["content-type"].startswith("application/json")


def test_with_payload_false_and_with_vector_true(docs: TestClient) -> None:
    query = {"vector": QUERIES[0].tolist(), "k": 4}
    plain = docs.post("/v1/collections/docs/search", json=query).json()["results"]
    assert all(set(h) == {"id", "score", "payload", "encoder_version"} for h in plain)
    lean = docs.post("/v1/collections/docs/search", json=query | {"with_payload": False}).json()["results"]
    assert [set(h) for h in lean] == [{"id", "score", "encoder_version"}] * 4
    assert ranked(lean) == ranked(plain)
    full = docs.post("/v1/collections/docs/search", json=query | {"with_vector": True}).json()["results"]
    for hit in full:
        assert hit["payload"] == {"n": int(hit["id"][1:])}
        assert np.array_equal(np.asarray(hit["vector"], dtype=np.float32), STORED[int(hit["id"][1:])])
    batch = {"queries": [query | {"with_payload": False, "with_vector": True}, query]}
    both = docs.post("/v1/collections/docs/search/batch", json=batch).json()["results"]
    assert [set(h) for h in both[0]] == [{"id", "score", "encoder_version", "vector"}] * 4
    assert both[1] == plain


def _bad_bodies() -> list[tuple[str, str, bytes, dict[str, str], tuple[int, ...], str]]:
    """(method, path, body, headers, statuses, words of the message) of every refused body."""
    short = b64(np.zeros(DIM - 1, np.float32))
    nan = np.zeros(DIM, np.float32)
    nan[3] = np.nan
    inf = np.full(DIM, np.inf, np.float32)
    ok, q0 = raw(STORED[0]), raw(QUERIES[0])
    js = {"content-type": "application/json"}
    mp = MSGPACK

    def item(body: dict[str, Any]) -> bytes:
        return msgpack.packb({"items": [{"id": "ok", "vector": ok}, {"id": "bad", **body}]})

    def items_json(body: dict[str, Any]) -> bytes:
        return orjson.dumps({"items": [{"id": "x", **body}]})

    def query(body: dict[str, Any]) -> bytes:
        return msgpack.packb({"queries": [{"vector": q0}, body]})

    put, one, many = ("PUT", "/v1/collections/docs/items"), ("POST", SEARCH), ("POST", f"{SEARCH}/batch")
    zeros = [0] * DIM
    # fmt: off
    return [
        # vector_b64 in JSON
        (*put, items_json({"vector_b64": "not base64!"}), js, (422,), "base64"),
        (*put, items_json({"vector_b64": "AAAA" * 2 + "AA=="}), js, (422,), "4 bytes"),
        (*put, items_json({"vector_b64": short}), js, (422,), "dimension 7"),
        (*put, items_json({"vector_b64": b64(nan)}), js, (422,), "NaN"),
        (*put, items_json({"vector_b64": b64(STORED[0]), "vector": zeros}), js, (422,), "exactly one of"),
        (*put, items_json({"vector_b64": 5}), js, (422,), "vector_b64"),
        (*one, orjson.dumps({"vector_b64": "AAAA" * 2 + "AA=="}), js, (422,), "4 bytes"),
        (*one, orjson.dumps({"vector_b64": short}), js, (422,), "dimension 7"),
        (*one, orjson.dumps({"vector_b64": b64(inf)}), js, (422,), "NaN or Inf"),
        (*one, orjson.dumps({"vector_b64": "é"}), js, (422,), "base64"),
        (*one, orjson.dumps({"vector_b64": ""}), js, (422,), "empty"),
        (*one, orjson.dumps({"vector_b64": b64(QUERIES[0]), "id": "i1"}), js, (422,), "exactly one of"),
        (*many, orjson.dumps({"queries": [{"vector_b64": b64(QUERIES[0])}, {"vector_b64": "@@"}]}), js, (422,),
         "query 1"),
        # msgpack
        (*put, b"\xc1", mp, (400,), "msgpack"),
        (*put, msgpack.packb({"items": []})[:-1] + b"\x93", mp, (400,), "msgpack"),
        (*put, msgpack.packb({"items": [{"id": "x", "vector": ok}]}) + b"\x00", mp, (400,), "msgpack"),
        (*put, item({"vector": ok[:-1]}), mp, (422,), "4 bytes"),
        (*put, item({"vector": raw(STORED[0][:4])}), mp, (422,), "dimension 4"),
        (*put, item({"vector": raw(nan)}), mp, (422,), "NaN"),
        (*put, item({"vector": "text"}), mp, (422,), "vector"),
        (*put, item({"vector": ok, "payload": {"x": b"bytes"}}), mp, (422,), "payload"),
        (*put, item({"vector": ok, "vector_b64": b64(STORED[0])}), mp, (422,), "exactly one of"),
        (*put, item({"vector_b64": ok}), mp, (422,), "base64 text"),
        (*put, msgpack.packb({"items": [{"id": 5, "vector": ok}]}), mp, (422,), "id"),
        (*put, msgpack.packb([1, 2]), mp, (422,), "body"),
        (*many, b"\x92", mp, (400,), "msgpack"),
        (*many, query({"vector": q0[:6]}), mp, (422,), "4 bytes"),
        (*many, query({"vector": q0, "k": "3"}), mp, (422,), "k"),
        (*many, query({"vector": raw(QUERIES[0][:5])}), mp, (422,), "dimension 5"),
        (*one, msgpack.packb({"vector": raw(inf)}), mp, (422,), "NaN or Inf"),
        # content types; msgpack sent as JSON
        (*put, items_json({"vector": zeros}), {"content-type": "text/plain"}, (415,), "application/msgpack"),
        (*many, orjson.dumps({"queries": [{"vector": zeros}]}), {"content-type": "application/xml"}, (415,),
         "Content-Type"),
        (*one, orjson.dumps({"vector": zeros}), {"content-type": "application/x-www-form-urlencoded"}, (415,),
         "Content-Type"),
        (*put, msgpack.packb({"items": [{"id": "x", "vector": ok}]}), js, (422,), "JSON"),
    ]
    # fmt: on


@pytest.mark.parametrize("case", range(len(_bad_bodies())))
def test_every_bad_body_is_a_clear_4xx_and_writes_nothing(docs: TestClient, case: int) -> None:
    method, path, body, headers, statuses, needle = _bad_bodies()[case]
    before = count(docs)
    error_of(docs.request(method, path, content=body, headers=headers), statuses, needle)
    assert count(docs) == before


def test_a_msgpack_body_over_the_size_limit_is_413(docs: TestClient) -> None:
    rows = RNG.standard_normal((40, DIM)).astype(np.float32)
    items = [{"id": f"big{n}", "vector": raw(r), "payload": {"blob": "x" * 2000}} for n, r in enumerate(rows)]
    r = docs.put("/v1/collections/docs/items", content=msgpack.packb({"items": items}), headers=MSGPACK)
    error_of(r, (413,), "ERS_MAX_BODY_BYTES")
    assert count(docs) == len(STORED)


def test_the_search_routes_keep_their_openapi_operations(docs: TestClient) -> None:
    schema = docs.get("/openapi.json").json()
    for path in ("/v1/collections/{name}/search", "/v1/collections/{name}/search/batch"):
        operation = schema["paths"][path]["post"]
        assert [p["name"] for p in operation["parameters"]] == ["name"]
        assert "415" in operation["responses"] and "200" in operation["responses"]
    query = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert query["vector_b64"]["anyOf"][0]["contentEncoding"] == "base64"
    assert query["with_payload"]["default"] is True and query["with_vector"]["default"] is False
