"""A reader process's outermost ASGI layer (``ers serve --workers N``): what it cannot serve goes to the
writer over loopback, and comes back unchanged (status, headers, body).

A reader serves one thing itself: a vector (or stored-id) search of a collection it holds a view of
(``indexer.reader_manager``). Everything else — writes, collections, jobs, migrations, the console,
probes, and a search that needs an encoder (text, image, record, a multipart upload) — is forwarded.
A search carrying ``X-ERS-Position`` waits (up to ``wait_s``) for the view to reach every position it
names, and is forwarded when it does not: a reader never answers older than a client's own writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.reader_manager import ReaderManager
from service import wire
from service.errors import error_response
from service.middleware import FORWARDED_HEADER, POSITION_HEADER, WORKER_HEADER

log = logging.getLogger("ers")
SEARCH_PATH = re.compile(r"^/v1/collections/(?P<name>[^/]+)/search(?:/batch)?$")
# A query with one of these keys is embedded by an encoder, which only the writer loads; a "\u" escape
# could spell one of them, so a JSON body with escapes goes to the writer too (it answers the same).
NEEDS_ENCODER = (b'"text"', b'"image"', b'"record"', b"\\u")
ENCODER_FIELDS = ("text", "image", "record")
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer"})
SERVER_ADDS = frozenset({b"date", b"server"})  # uvicorn adds its own: relayed too, they would be doubled
REPLAYABLE_BYTES = 1 << 20  # bodies up to this size are buffered, so a forward can be retried
WRITER_DOWN_S = 30.0  # how long a forward waits for a restarting writer before answering 503


def needs_encoder(body: bytes, content_type: bytes) -> tuple[bool, Any]:
    """Whether a search body asks for an embedding (text, image or record), and the msgpack value
    read to tell (None for JSON), which the route then takes as it is (``wire.UNPACKED``). A JSON
    body is searched as bytes; a msgpack body is read, because its vectors are raw float32 bytes,
    which spell ``\\u`` or ``"text"`` often enough (measured: 9 of 31 MiniLM batches of 32, 11 of
    1,000 single queries), and each such search went to the writer instead of being served here."""
    if wire.media_format(content_type.decode("latin-1")) != "msgpack":
        return any(key in body for key in NEEDS_ENCODER), None
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException):
        return False, None  # malformed: this process's route answers 400, as the writer's would
    queries = doc.get("queries") if isinstance(doc, dict) else None
    entries = queries if isinstance(queries, list) else [doc]
    return any(isinstance(e, dict) and any(field in e for field in ENCODER_FIELDS) for e in entries), doc


def parse_positions(value: str) -> list[tuple[str, int | None]] | None:
    """``name:offset`` (or ``name:gone``) items, comma-separated; None when malformed."""
    found: list[tuple[str, int | None]] = []
    for item in value.split(","):
        name, sep, at = item.strip().rpartition(":")
        if not sep or not name:
            return None
        if at == "gone":
            found.append((name, None))
        elif at.isdigit():
            found.append((name, int(at)))
        else:
            return None
    return found


def reached(manager: ReaderManager, positions: list[tuple[str, int | None]]) -> bool:
    for name, offset in positions:
        at = manager.position(name)
        if (offset is None and at is not None) or (offset is not None and (at is None or at < offset)):
            return False
    return True


class ForwardingMiddleware:
    def __init__(
        self, app: ASGIApp, client: httpx.AsyncClient, wait_s: float = 2.0, body_limit: int = 64 << 20
    ) -> None:
        self.app = app
        self.client = client  # to the writer; the app closes it at shutdown
        self.wait_s = wait_s
        self.body_limit = body_limit
        self.worker = f"reader {os.getpid()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        match = SEARCH_PATH.match(scope["path"]) if scope["method"] == "POST" else None
        manager: ReaderManager | None = getattr(scope["app"].state, "manager", None)
        if match is None or manager is None or not manager.holds(match["name"]):
            await self.forward(scope, receive, send, [], more=True)
            return
        chunks, more = await _read(receive, min(self.body_limit, REPLAYABLE_BYTES))
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"")
        if more or content_type.startswith(b"multipart/"):
            await self.forward(scope, receive, send, chunks, more)
            return
        encoder, unpacked = needs_encoder(body, content_type)
        if encoder:
            await self.forward(scope, receive, send, chunks, more)
            return
        wanted = headers.get(POSITION_HEADER)
        if wanted is not None:
            positions = parse_positions(wanted.decode("latin-1"))
            if positions is None or not await self._wait(manager, positions):
                await self.forward(scope, receive, send, chunks, more)
                return
        if unpacked is not None:
            scope[wire.UNPACKED] = unpacked  # the body replayed below, already read
        await self.app(scope, _replay(body, receive), self._tagged(send))

    async def _wait(self, manager: ReaderManager, positions: list[tuple[str, int | None]]) -> bool:
        deadline = time.monotonic() + self.wait_s
        while not reached(manager, positions):
            if time.monotonic() >= deadline:
                return False
            manager.wake()
            await asyncio.sleep(0.001)
        return True

    def _tagged(self, send: Send) -> Send:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (WORKER_HEADER, self.worker)]}
            await send(message)

        return tagged

    async def forward(self, scope: Scope, receive: Receive, send: Send, chunks: list[bytes], more: bool) -> None:
        """Send the request to the writer and relay its answer; a writer that is restarting is waited
        for (a request is re-sent only when none of it reached the writer and its body can be replayed)."""
        if more and not chunks:
            chunks, more = await _read(receive, REPLAYABLE_BYTES)
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        url = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        deadline = time.monotonic() + WRITER_DOWN_S
        while True:
            content = _stream(chunks, receive) if more else b"".join(chunks)
            request = self.client.build_request(scope["method"], url, headers=headers, content=content)
            try:
                response = await self.client.send(request, stream=True)
                break
            except httpx.ConnectError:  # nothing was sent: the writer is restarting
                if more or time.monotonic() >= deadline:
                    await _unavailable(scope, receive, send, "the writer process is not answering; retry")
                    return
                await asyncio.sleep(0.05)
            except httpx.TransportError:  # the writer died while answering: the outcome is unknown
                await _unavailable(scope, receive, send, "the writer process stopped while answering; retry")
                return
        try:
            relayed = [(k, v) for k, v in response.headers.raw if k.lower() not in SERVER_ADDS]
            relayed.append((FORWARDED_HEADER, self.worker))  # the writer's answer, as it came, plus who relayed it
            await send({"type": "http.response.start", "status": response.status_code, "headers": relayed})
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


def writer_client(writer_url: str) -> httpx.AsyncClient:
    """The reader's pooled connections to the writer (no read timeout: an upload or a job may be long)."""
    timeout = httpx.Timeout(connect=5.0, read=None, write=None, pool=None)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=writer_url, timeout=timeout, limits=limits)


async def _unavailable(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    await error_response(503, "writer_unavailable", message, {"Retry-After": "1"})(scope, receive, send)


async def _read(receive: Receive, limit: int) -> tuple[list[bytes], bool]:
    """The body's chunks up to about ``limit`` bytes, and whether more follows."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return chunks, False  # the client went away
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return chunks, False
        if size >= limit:
            return chunks, True


async def _stream(chunks: list[bytes], receive: Receive) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: the disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
