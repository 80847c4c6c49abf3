"""``service.forwarding`` in one process: what a reader serves itself reaches the route with its body
intact, and a msgpack body is unpacked once (the forwarding check's value is the route's)."""

from __future__ import annotations

from typing import Any

import httpx
import msgpack
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service import wire
from service.forwarding import ForwardingMiddleware, needs_encoder
from service.schemas import SearchRequest


class OneView:
    """What the middleware asks of a reader's manager: it holds collection ``c``, at position 0."""

    def holds(self, name: str) -> bool:
        return name == "c"

    def position(self, name: str) -> int | None:
        return 0 if name == "c" else None


def reader_app(seen: list[Any]) -> Starlette:
    async def search(request: Request) -> JSONResponse:
        fmt = wire.body_format(request)
        seen.append(request.scope.get(wire.UNPACKED))
        body = await wire.read(request, SearchRequest, fmt, "")
        return JSONResponse({"k": body.k, "dim": len(wire.floats_of(body.vector_b64 or b"", "v"))})

    app = Starlette(routes=[Route("/v1/collections/{name}/search", search, methods=["POST"])])
    app.state.manager = OneView()
    app.add_middleware(ForwardingMiddleware, client=httpx.AsyncClient(base_url="http://127.0.0.1:9"))
    return app


def test_a_served_msgpack_search_is_unpacked_once_and_reaches_the_route_whole() -> None:
    seen: list[Any] = []
    raw = np.arange(8, dtype="<f4").tobytes()
    body = msgpack.packb({"vector": raw, "k": 3})
    with TestClient(reader_app(seen)) as client:
        response = client.post("/v1/collections/c/search", content=body, headers={"content-type": wire.MSGPACK})
    assert response.status_code == 200, response.text
    assert response.json() == {"k": 3, "dim": 8}
    assert seen[0] is not None and seen[0]["k"] == 3  # the middleware's unpacked value, handed on


def test_a_json_search_is_parsed_by_the_route_alone() -> None:
    seen: list[Any] = []
    with TestClient(reader_app(seen)) as client:
        response = client.post("/v1/collections/c/search", json={"vector_b64": "AAAAAA==", "k": 2})
    assert response.status_code == 200, response.text
    assert response.json() == {"k": 2, "dim": 1}
    assert seen == [None]


def test_needs_encoder_reads_msgpack_keys_and_json_bytes() -> None:
    vector_bytes = b'"text"\\u' * 4  # float bytes that spell the JSON keys
    assert needs_encoder(msgpack.packb({"vector": vector_bytes}), wire.MSGPACK.encode())[0] is False
    assert needs_encoder(msgpack.packb({"text": "a cat"}), b"application/x-msgpack")[0] is True
    assert needs_encoder(msgpack.packb({"queries": [{"vector": b"x"}, {"image": "a"}]}), b"application/msgpack")[0]
    assert needs_encoder(b'{"text": "a cat"}', b"application/json") == (True, None)
    assert needs_encoder(b"\xc1", wire.MSGPACK.encode()) == (False, None)  # malformed: the route answers 400
