"""The OpenAPI document, made exact once FastAPI has generated it.

FastAPI documents what route signatures show: the success status, and 422 in its own
validation-error shape. ERS answers more (auth, limits, missing resources, conflicts, an
unavailable store), always as ``{"error": {"code", "message"}}``, and parses some bodies by hand
(faster, or JSON-or-multipart), which FastAPI cannot see. This module is the one place that says
which statuses each operation can answer, so the routes stay thin:

- every hand-parsed body model is defined in ``components`` (no dangling ``$ref``; checked);
- every operation lists each status it can answer, errors with the one ``ErrorResponse`` schema:
  statuses that follow from the operation's shape (a key, a path parameter, a body) by
  rule, and those that follow from what it does (conflicts, queues, paths) in ``DOMAIN_STATUSES``;
- with API keys set, the bearer scheme and which operations need it;
- links from a created collection or job to the operations on it, for clients and stateful testers.

The one-of rules of the query and item bodies live on their models (``json_schema_extra`` in
``service.schemas``); ``Allow`` and ``OPTIONS`` are answered by ``service.middleware``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from service.errors import HTTP_STATUS
from service.middleware import PROBE_PATHS
from service.routes.jobs import JobCreate
from service.schemas import BatchSearchRequest, SearchRequest, UpsertRequest
from service.settings import Settings

REF = "#/components/schemas/{model}"
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# Bodies the routes parse themselves (``model_validate_json``, or JSON-or-multipart): FastAPI never
# sees them, so their schemas are added here.
HAND_PARSED: tuple[type[BaseModel], ...] = (SearchRequest, BatchSearchRequest, UpsertRequest, JobCreate)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable, e.g. collection_not_found, limit_exceeded")
    message: str = Field(description="for people: what was wrong and, where there is one, what to do")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ReadyStatus(BaseModel):
    """``/readyz``: ``status`` always; the details only to a caller with a key (or without keys set)."""

    model_config = ConfigDict(extra="allow")
    status: str = Field(description="ready | unavailable")


DESCRIPTIONS = {
    304: "not modified (If-None-Match matched the ETag)",
    400: "the body could not be read as its content type (not UTF-8 JSON, broken msgpack, a broken multipart form)",
    401: "missing or invalid API key (Authorization: Bearer <key>)",
    403: "a server path outside ERS_ALLOWED_ROOTS",
    404: "the collection, item or job does not exist",
    408: "the request body was not received within ERS_BODY_TIMEOUT_S",
    409: "conflicts with the current state (already exists, refused migration, finished job)",
    413: "over a limit: ERS_MAX_BODY_BYTES, ERS_MAX_BATCH, ERS_MAX_QUERIES, ERS_MAX_K, ERS_MAX_INPUTS, image pixels",
    415: "a Content-Type the operation does not read (JSON, msgpack, and where stated multipart/form-data)",
    422: "the request is not valid",
    429: "an encoder queue is full; retry after Retry-After seconds",
    503: "the metadata store is unavailable, or the collection cannot be served; retry after Retry-After",
    507: "no space left to write; nothing was acknowledged",
}
# What operations answer because of what they do, beyond what their shape implies.
QUEUED = {429}  # the operation embeds through an encoder's bounded queue
WIRE = {415}  # the operation reads JSON or msgpack (``service.wire``) and refuses other content types
DOMAIN_STATUSES: dict[tuple[str, str], set[int]] = {
    ("post", "/v1/collections"): {409},
    ("put", "/v1/collections/{name}/items"): QUEUED | WIRE,
    ("post", "/v1/collections/{name}/search"): QUEUED | WIRE,
    ("post", "/v1/collections/{name}/search/batch"): QUEUED | WIRE,
    ("post", "/v1/embed"): QUEUED,
    ("post", "/v1/collections/{name}/verify"): QUEUED,
    ("post", "/v1/collections/{name}/migrations"): {409},
    ("post", "/v1/collections/{name}/migrations/rollback"): {409, 422},  # 422: nothing to roll back
    ("post", "/v1/jobs"): {403, 404},  # 404: the collection the body names
    ("post", "/v1/jobs/{job_id}/cancel"): {409},
    ("get", "/v1/collections/{name}/thumbnails/{item_id}"): {304},
}
# Operations that append to a collection's log or write the store: a full disk (or Redis's memory) refuses them.
WRITES = {
    ("post", "/v1/collections"),
    ("delete", "/v1/collections/{name}"),
    ("put", "/v1/collections/{name}/items"),
    ("delete", "/v1/collections/{name}/items/{item_id}"),
    ("post", "/v1/collections/{name}/migrations"),
    ("post", "/v1/collections/{name}/migrations/rollback"),
    ("put", "/v1/collections/{name}/eval-set"),
    ("delete", "/v1/collections/{name}/eval-set"),
    ("post", "/v1/jobs"),
    ("post", "/v1/jobs/{job_id}/cancel"),
}
# Where a created resource can be used next: (method, path, status) -> {link name: (method, path, parameters)}.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/collections", "201"): {
        f"{method}{path}": (method, path, {"name": "$response.body#/name"})
        for method, path in [
            ("get", "/v1/collections/{name}"),
            ("delete", "/v1/collections/{name}"),
            ("put", "/v1/collections/{name}/items"),
            ("post", "/v1/collections/{name}/search"),
            ("post", "/v1/collections/{name}/search/batch"),
            ("get", "/v1/collections/{name}/migrations"),
        ]
    },
    ("post", "/v1/jobs", "202"): {
        f"{method}{path}": (method, path, {"job_id": "$response.body#/id"})
        for method, path in [("get", "/v1/jobs/{job_id}"), ("post", "/v1/jobs/{job_id}/cancel")]
    },
}


def install(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``, ``/docs``) serve the completed document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate(), settings)  # FastAPI caches the dict it returns: completed once, in place
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """FastAPI's document, completed in place as the module docstring says, for this configuration."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's own 422 shape is never sent: the error handlers answer every error as ErrorResponse.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    models: tuple[type[BaseModel], ...] = (*HAND_PARSED, ErrorResponse, ReadyStatus)
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas.update(defs.get("$defs", {}))
    if settings.api_keys:
        components["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "one of ERS_API_KEYS"}
        }
    for path, method, operation in _operations(schema):
        protected = bool(settings.api_keys) and path not in PROBE_PATHS
        if protected:
            operation["security"] = [{"apiKey": []}]
        responses = operation.setdefault("responses", {})
        responses.pop("422", None)  # FastAPI's guess (any parameter): replaced by the rules below
        for status in sorted(statuses(method, path, operation, protected)):
            responses[str(status)] = _error(status)
        for (source_method, source_path, answer), links in LINKS.items():
            if (source_method, source_path) == (method, path) and answer in responses:
                responses[answer]["links"] = {
                    name: {"operationId": _operation_id(schema, m, p), "parameters": params}
                    for name, (m, p, params) in links.items()
                }
    # The limits are settings, so only the running server can state them.
    k = schemas["SearchRequest"]["properties"]["k"]
    k["maximum"] = settings.max_k
    k["description"] = f"at most ERS_MAX_K ({settings.max_k}); over it: 413"
    search = schema["paths"].get("/v1/collections/{name}/search", {}).get("post", {})
    form = search.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema", {})
    if "k" in form.get("properties", {}):  # the multipart form's k: the same limit
        form["properties"]["k"] = {**form["properties"]["k"], "maximum": settings.max_k}
    ready = schema["paths"].get("/readyz", {}).get("get")
    if ready is not None:
        body = {"application/json": {"schema": {"$ref": REF.format(model="ReadyStatus")}}}
        ready["responses"]["200"] = {"description": "ready", "content": body}
        ready["responses"]["503"] = {"description": "not ready; the details say why (with a key)", "content": body}
    missing = sorted(set(dangling_refs(schema)))
    if missing:
        raise RuntimeError(f"OpenAPI references undefined schemas {missing}: add their models to HAND_PARSED")
    return schema


def statuses(method: str, path: str, operation: dict[str, Any], protected: bool) -> set[int]:
    """Every error status the operation can answer (its success statuses are FastAPI's)."""
    found = set(DOMAIN_STATUSES.get((method, path), set()))
    if protected:
        found.add(401)
    if "{" in path:
        found.add(404)
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "query" for p in parameters):
        found.add(422)
    if "requestBody" in operation:
        found |= {408, 413, 400, 422}  # the body limits (middleware), decoding, then validation
    if path.startswith("/v1/"):
        found.add(503)  # the store, or a collection that cannot be served
    if (method, path) in WRITES and 507 in HTTP_STATUS.values():
        found.add(507)
    return found


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
    }
    if status == 304:
        del response["content"]
    elif status == 401:
        response["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    elif status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def _operation_id(schema: dict[str, Any], method: str, path: str) -> str:
    return str(schema["paths"][path][method]["operationId"])


def dangling_refs(node: Any, root: dict[str, Any] | None = None) -> Iterator[str]:
    """Every local ``$ref`` in ``node`` that names nothing in ``root`` (``node`` itself by default)."""
    root = node if root is None else root
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                yield ref
        for value in node.values():
            yield from dangling_refs(value, root)
    elif isinstance(node, list):
        for value in node:
            yield from dangling_refs(value, root)
