"""The OpenAPI document is exact: no dangling reference, every status an operation can answer with
the one error schema, the one-of rules of queries and items stated (and agreeing with the models),
and ``OPTIONS``/405 naming exactly the methods of a path in ``Allow``."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
from pydantic import ValidationError

from indexer.errors import InvalidInput
from service.openapi import dangling_refs
from service.runtime.embedding import FIELDS, request_items
from service.schemas import ItemIn, SearchRequest
from tests.service.conftest import MakeClient

KEY = "doc-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture
def schema(make_client: MakeClient) -> dict[str, Any]:
    document: dict[str, Any] = make_client(api_keys=[KEY]).get("/openapi.json", headers=AUTH).json()
    return document


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in schema["paths"].items() for m, op in item.items()]


def test_every_reference_is_defined(schema: dict[str, Any]) -> None:
    """The issue: JobCreate and UpsertRequest were referenced by request bodies but not defined."""
    assert list(dangling_refs(schema)) == []
    defined = schema["components"]["schemas"]
    for name in ("JobCreate", "JobSource", "UpsertRequest", "ItemIn", "SearchRequest", "BatchSearchRequest"):
        assert name in defined, name
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, never sent
        assert name not in defined
    jobs = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert jobs == {"$ref": "#/components/schemas/JobCreate"}


def test_every_error_status_is_documented_with_the_error_schema(schema: dict[str, Any]) -> None:
    """The issue: only 2xx and 422 were documented, while the API also answers 401/403/404/409/413/503."""
    for method, path, op in operations(schema):
        responses = op["responses"]
        for status, response in responses.items():
            if int(status) >= 400 and path != "/readyz":
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)
        if path not in ("/healthz", "/readyz"):
            assert "401" in responses and op["security"] == [{"apiKey": []}], (method, path)
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"408", "413", "422"} <= set(responses), (method, path)
        if path.startswith("/v1/"):
            assert "503" in responses, (method, path)
    paths = schema["paths"]
    assert "409" in paths["/v1/collections"]["post"]["responses"]  # the name is taken
    assert {"403", "404"} <= set(paths["/v1/jobs"]["post"]["responses"])  # a path outside the roots; no collection
    assert "409" in paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    for path in ("/v1/collections/{name}/items", "/v1/collections/{name}/search", "/v1/embed"):
        item = paths[path]
        op = item.get("put") or item["post"]
        assert "429" in op["responses"], path  # a full encoder queue
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "507" in paths["/v1/collections/{name}/items"]["put"]["responses"]  # a full disk refuses writes
    assert "507" not in paths["/v1/collections/{name}/search"]["post"]["responses"]
    assert schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]["maximum"] == 1000  # ERS_MAX_K
    assert schema["components"]["securitySchemes"] == {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "one of ERS_API_KEYS"}
    }


def test_without_keys_no_security_and_no_401(make_client: MakeClient) -> None:
    schema = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in schema["components"]
    for method, path, op in operations(schema):
        assert "security" not in op and "401" not in op["responses"], (method, path)


def test_created_collections_and_jobs_link_to_their_operations(schema: dict[str, Any]) -> None:
    created = schema["paths"]["/v1/collections"]["post"]["responses"]["201"]["links"]
    get = schema["paths"]["/v1/collections/{name}"]["get"]["operationId"]
    assert created["get/v1/collections/{name}"] == {"operationId": get, "parameters": {"name": "$response.body#/name"}}
    submitted = schema["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
    assert submitted["get/v1/jobs/{job_id}"]["parameters"] == {"job_id": "$response.body#/id"}


QUERIES: list[dict[str, Any]] = [
    {"vector": [0.5, 1.0]},
    {"id": "a"},
    {"text": "cat", "k": 3},
    {"image": "aGk="},
    {"record": {"color": "red"}},
    {"vector": None, "id": "a"},  # null counts as not given
    {},
    {"vector": [1.0], "id": "a"},
    {"text": "cat", "image": "aGk="},
    {"vector": None, "id": None},
    {"id": "a", "record": {"x": 1}, "text": None},
]
ITEMS: list[dict[str, Any]] = [
    {"id": "a", "vector": [1.0]},
    {"id": "a", "text": "cat", "payload": {"x": 1}},
    {"id": "a", "record": {"x": "y"}, "vector": None},
    {"id": "a"},
    {"id": "a", "vector": [1.0], "text": "cat"},
    {"id": "a", "image": "aGk=", "record": {}},
]


def _server_accepts(model: type[SearchRequest] | type[ItemIn], body: dict[str, Any]) -> bool:
    """What the API does with the body: the model's validation, then (items) ``request_items``."""
    try:
        parsed = model.model_validate(body)
        if isinstance(parsed, ItemIn):
            request_items([parsed.model_dump()])
    except (ValidationError, InvalidInput):
        return False
    return True


@pytest.mark.parametrize(
    ("model", "bodies", "fields"),
    [(SearchRequest, QUERIES, ("vector", "id", "text", "image", "record")), (ItemIn, ITEMS, FIELDS)],
)
def test_the_one_of_rule_is_in_the_schema_and_agrees_with_the_server(
    schema: dict[str, Any],
    model: type[SearchRequest] | type[ItemIn],
    bodies: list[dict[str, Any]],
    fields: tuple[str, ...],
) -> None:
    """The issue: "exactly one of vector / id / text / image / record" was not in the schema."""
    document = schema["components"]["schemas"]
    validator = jsonschema_rs.validator_for({**document[model.__name__], "components": schema["components"]})
    for body in bodies:
        exactly_one = sum(body.get(f) is not None for f in fields) == 1
        assert validator.is_valid(body) == exactly_one == _server_accepts(model, body), body


def test_options_and_405_name_exactly_the_methods_of_the_path(make_client: MakeClient) -> None:
    """The issue: Allow named the first route's methods (OPTIONS /v1/collections answered 405 with
    `Allow: POST`, while the path also takes GET)."""
    client = make_client(api_keys=[KEY])
    schema = client.get("/openapi.json", headers=AUTH).json()
    for template, item in schema["paths"].items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        documented = {m.upper() for m in item} | {"OPTIONS"}
        r = client.options(path, headers=AUTH)
        assert r.status_code == 204 and r.content == b"", path
        assert set(r.headers["allow"].split(", ")) == documented, (path, r.headers["allow"])
        unsupported = next(m for m in ("PATCH", "PUT", "DELETE", "POST") if m not in documented)
        r = client.request(unsupported, path, headers=AUTH)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", (unsupported, path)
        assert set(r.headers["allow"].split(", ")) == documented, (unsupported, path, r.headers["allow"])
    allowed = client.options("/v1/collections", headers=AUTH).headers["allow"]
    assert allowed == "GET, OPTIONS, POST"
    assert client.options("/no/such/path", headers=AUTH).status_code == 404
    assert client.options("/v1/collections").status_code == 401  # OPTIONS is a request like any other
    assert client.options("/healthz").headers["allow"] == "GET, OPTIONS"
