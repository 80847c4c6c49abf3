"""Issue 16, sections 1, 3 and 5: each request a hostile client sent, exactly, and what it gets now.

Before, a payload integer too big for a float was logged and then broke every later write and the
server's start; JSON nested 10,000 deep in a form field, and ``k=abc``, were 500s; a name or id with
a newline was stored but not addressable; NaN/Infinity/1e400 in a payload came back as null; a vector
of booleans was taken as 1/0. Now each is a 4xx before anything is logged, the same on every write
path (REST JSON, REST multipart, jobs), and the collection keeps serving and restarting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.test_jobs_support import finished, wait_for

HUGE = "1" + "0" * 400  # the integer: 400 digits
DEEP = "[" * 10_000 + "]" * 10_000  # 10,000 levels of nesting
JSON = {"content-type": "application/json"}
PNG = ("q.png", b"\x89PNG\r\n\x1a\n", "image/png")  # multipart needs a file part; never decoded here


def open_api(data: Path, **overrides: Any) -> TestClient:
    client = TestClient(create_app(Settings(data_dir=data, **overrides)))
    client.__enter__()
    return client


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def api(data: Path) -> Iterator[TestClient]:
    client = open_api(data, allowed_roots=[data.parent])
    assert client.post("/v1/collections", json={"name": "docs", "dim": 4}).status_code == 201
    assert put(client, '{"items":[{"id":"a","vector":[1,0,0,0],"payload":{"x":1}}]}').status_code == 200
    yield client
    client.__exit__(None, None, None)


def put(client: TestClient, body: str) -> Any:
    return client.put("/v1/collections/docs/items", content=body, headers=JSON)


def refused(response: Any, status: int = 422) -> str:
    """The error message of a refused request (the one error shape of the API)."""
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


def assert_only_a(client: TestClient) -> None:
    """Nothing of a refused request was written: the collection holds its one item, 'a'."""
    info = client.get("/v1/collections/docs").json()
    assert info["count"] == info["indexed"] == 1, info


# -- 1. a payload with a huge integer ----------------------------------------------------------
def test_huge_integer_payload_is_refused_before_the_log_and_the_collection_restarts(
    api: TestClient, data: Path
) -> None:
    body = '{"items":[{"id":"bad","vector":[1,1,1,1],"payload":{"x":' + HUGE + "}}]}"
    assert "payload 'x': integer outside the 64-bit range" in refused(put(api, body))
    assert_only_a(api)
    assert api.get("/v1/collections/docs/items/bad").status_code == 404
    # Later writes are accepted (before: every one was a 500) ...
    assert put(api, '{"items":[{"id":"b","vector":[0,1,0,0],"payload":{"x":2}}]}').json() == {"upserted": 1}
    # ... and the server starts again on the same data (before: exit 3, OverflowError in filters._typed).
    api.__exit__(None, None, None)
    again = open_api(data)
    try:
        assert again.get("/v1/collections/docs").json()["count"] == 2
        assert put(again, '{"items":[{"id":"c","vector":[0,0,1,0]}]}').json() == {"upserted": 1}
        hits = again.post("/v1/collections/docs/search", json={"vector": [0, 1, 0, 0], "k": 1, "filter": {"x": 2}})
        assert [h["id"] for h in hits.json()["results"]] == ["b"]
    finally:
        again.__exit__(None, None, None)


def test_huge_integer_payload_in_a_job_manifest_fails_that_item_alone(api: TestClient, data: Path) -> None:
    lines = [
        '{"id":"bad","vector":[1,1,1,1],"payload":{"x":' + HUGE + "}}",
        '{"id":"nan","vector":[1,1,1,1],"payload":{"x":NaN}}',
        '{"id":"inf","vector":[1,1,1,1],"payload":{"x":1e400}}',
        '{"id":"deep","vector":[1,1,1,1],"payload":' + DEEP + "}",
        '{"id":"ok","vector":[0,0,0,1],"payload":{"x":3}}',
    ]
    manifest = data.parent / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    r = api.post("/v1/jobs", json={"collection": "docs", "source": {"type": "manifest", "path": str(manifest)}})
    assert r.status_code == 202, r.text
    job = wait_for(lambda: api.get(f"/v1/jobs/{r.json()['id']}").json(), finished)
    assert (job["state"], job["done"], job["failed"]) == ("succeeded", 1, 4), job
    reasons = {e["id"]: e["reason"] for e in job["errors"]}
    assert "integer outside the 64-bit range" in reasons["bad"]
    assert "NaN and Infinity are not allowed" in reasons["inf"]
    assert "not valid JSON" in reasons["line 2"] and "not valid JSON" in reasons["line 4"]
    assert api.get("/v1/collections/docs/items/ok").json()["payload"] == {"x": 3}


def test_huge_integer_in_a_filter_is_422(api: TestClient) -> None:
    for flt in ('{"x":' + HUGE + "}", '{"x":{"gte":' + HUGE + "}}"):
        body = '{"vector":[1,0,0,0],"k":1,"filter":' + flt + "}"
        r = api.post("/v1/collections/docs/search", content=body, headers=JSON)
        assert "integer outside the 64-bit range" in refused(r)
        batch = '{"queries":[' + body + "]}"
        assert "integer outside" in refused(api.post("/v1/collections/docs/search/batch", content=batch, headers=JSON))


# -- 3. other 500s ---------------------------------------------------------------------------------
def test_multipart_search_with_k_abc_is_422(api: TestClient) -> None:
    r = api.post("/v1/collections/docs/search", files={"file": PNG}, data={"k": "abc"})
    assert "k must be a whole number" in refused(r)
    r = api.post("/v1/collections/docs/search", files={"file": PNG}, data={"k": "0"})
    assert "k must be a whole number" in refused(r)


def test_json_nested_10000_deep_in_a_multipart_filter_is_422(api: TestClient) -> None:
    r = api.post("/v1/collections/docs/search", files={"file": PNG}, data={"filter": '{"x":' + DEEP + "}"})
    assert refused(r).startswith("filter is not valid JSON")


def test_json_nested_10000_deep_in_a_multipart_payload_is_422(api: TestClient) -> None:
    r = api.put("/v1/collections/docs/items", files={"file": PNG}, data={"payload": '{"x":' + DEEP + "}"})
    assert refused(r).startswith("payload is not valid JSON")
    assert_only_a(api)
    shallow_but_too_deep = '{"x":' + "[" * 40 + "]" * 40 + "}"  # parses; over MAX_PAYLOAD_DEPTH
    r = api.put("/v1/collections/docs/items", files={"file": PNG}, data={"payload": shallow_but_too_deep})
    assert "nested deeper than 32 levels" in refused(r)


def test_json_nested_10000_deep_in_multipart_job_options_is_422(api: TestClient) -> None:
    manifest = ("m.jsonl", b'{"id":"z","vector":[1,0,0,0]}\n', "application/x-ndjson")
    options = '{"batch_size":' + DEEP + "}"
    r = api.post("/v1/jobs", data={"collection": "docs", "options": options}, files={"manifest": manifest})
    assert refused(r).startswith("options is not valid JSON")
    assert api.get("/v1/jobs").json()["jobs"] == []


# -- 5. names and values -----------------------------------------------------------------------------
def test_collection_named_abc_newline_is_refused(api: TestClient) -> None:
    assert "collection name must be" in refused(api.post("/v1/collections", json={"name": "abc\n", "dim": 4}))
    assert [c["name"] for c in api.get("/v1/collections").json()["collections"]] == ["docs"]


def test_item_id_with_a_newline_is_refused(api: TestClient) -> None:
    r = put(api, '{"items":[{"id":"a\\nb","vector":[0,1,0,0]}]}')
    assert "item id 'a\\nb' contains a control character" in refused(r)
    assert_only_a(api)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_infinity_and_1e400_in_a_payload_are_refused(api: TestClient, number: str) -> None:
    """They were accepted and came back as null."""
    body = '{"items":[{"id":"n","vector":[0,1,0,0],"payload":{"x":' + number + "}}]}"
    assert "NaN and Infinity are not allowed" in refused(put(api, body))
    assert_only_a(api)
    r = api.put("/v1/collections/docs/items", files={"file": PNG}, data={"payload": '{"x":' + number + "}"})
    assert refused(r)  # a multipart payload: 422 too (not valid JSON, or not finite)


def test_a_vector_of_booleans_is_refused(api: TestClient) -> None:
    r = put(api, '{"items":[{"id":"t","vector":[true,false,true,false]}]}')
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert_only_a(api)
    r = api.post("/v1/collections/docs/search", json={"vector": [True, False, False, False], "k": 1})
    assert r.status_code == 422, r.text
    r = put(api, json.dumps({"items": [{"id": "s", "vector": ["1", 0, 0, 0]}]}))
    assert r.status_code == 422, r.text
    assert put(api, '{"items":[{"id":"i","vector":[0,1,0,0]}]}').json() == {"upserted": 1}  # integers are numbers
