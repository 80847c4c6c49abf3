"""ASGI middleware, outermost first: request metrics, API-key auth, the ``Allow`` header of a path, and
the request body's size and time limits.

Auth and the body limits are plain ASGI layers, not FastAPI dependencies: FastAPI reads and validates a
declared body before it runs a route's dependencies, so a dependency could only refuse a request after
its body was read (a keyless request with a bad body got 422, not 401), and could never stop a client
that sends its body slowly. Here auth is decided from the headers alone, before anything reads the
body, and the body is then read once, within its size and time limits, before the app sees it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Collection, Sequence

import anyio
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics
from service.settings import Settings

# ``request.state.authenticated``: whether the request carried a valid key (always true without keys).
AUTHENTICATED = "authenticated"
UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <key>)"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # open with keys set: orchestrators probe without one
# ``ers serve --workers N``: a write's log position (``<collection>:<offset>``, or ``<collection>:gone``
# once deleted); a read that sends it back is answered by a process that has reached it.
POSITION_HEADER = b"x-ers-position"
WORKER_HEADER = b"x-ers-worker"  # which process answered (``writer <pid>``, ``reader <pid>``)
FORWARDED_HEADER = b"x-ers-forwarded-by"  # the reader that relayed the writer's answer
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COLLECTION_PATH = "/v1/collections/"


class MetricsMiddleware:
    """Times every HTTP request and labels it with its route template (bounded cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - started)


class PositionMiddleware:
    """Adds ``X-ERS-Position`` to the successful answer of every request that may write a collection
    named in its path (any method but GET, HEAD and OPTIONS; searches aside), read when the answer starts, that is,
    after the write: the log's end then, at or past the write. ``position(name)`` is that token, or
    None. ``worker``, when set, is sent as ``X-ERS-Worker`` on every answer."""

    def __init__(self, app: ASGIApp, position: Callable[[str], str | None], worker: str | None = None) -> None:
        self.app = app
        self.position = position
        self.worker = None if worker is None else (WORKER_HEADER, worker.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        name = None
        if scope["method"] not in READ_METHODS and path.startswith(COLLECTION_PATH) and "/search" not in path:
            name = path[len(COLLECTION_PATH) :].split("/", 1)[0] or None  # a search (POST) writes nothing
        if name is None and self.worker is None:
            await self.app(scope, receive, send)
            return

        async def send_with_position(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [self.worker] if self.worker is not None else []
                token = self.position(name) if name is not None and message["status"] < 400 else None
                if token is not None:
                    extra.append((POSITION_HEADER, token.encode()))
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_position)


def presented_key_is_valid(scope: Scope, keys: Sequence[str]) -> bool:
    """Whether ``Authorization: Bearer <key>`` names one of ``keys``: compared with every key, always,
    in constant time per key, so the time taken says nothing about which key or how much of it matched."""
    header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
    scheme, _, token = header.partition(b" ")
    presented = token.strip()
    if scheme.lower() != b"bearer" or not presented:
        return False
    matches = [hmac.compare_digest(presented, key.encode()) for key in keys]
    return any(matches)


class RouteTable:
    """Which methods the routes answer at a request's path. The app's own route list holds included
    routers wrapped, so it is built from the routes as declared."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = [r for r in routes if isinstance(r, Route) and r.methods]

    def methods(self, scope: Scope) -> set[str]:
        """Every method of every route whose path matches; empty when none does (a 404)."""
        found: set[str] = set()
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                found |= route.methods or set()
        return found


class ApiKeyMiddleware:
    """With ``ERS_API_KEYS`` set, every route needs a valid key except ``open_paths`` and those under
    ``open_prefixes``; the refusal is 401 with ``WWW-Authenticate: Bearer``, sent before the body is
    read. A path no route has stays a 404, with a key or without.

    Every request, open or not, carries the decision in ``request.state.authenticated``, so an open
    route can say less to a caller without a key (``/readyz`` shows only its status)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        routes: RouteTable,
        open_paths: Collection[str],
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        keys = self.settings.api_keys
        authenticated = not keys or presented_key_is_valid(scope, keys)
        scope.setdefault("state", {})[AUTHENTICATED] = authenticated
        path: str = scope["path"]
        is_open = path in self.open_paths or path.startswith(self.open_prefixes)
        if authenticated or is_open or not self.routes.methods(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class AllowedMethodsMiddleware:
    """``OPTIONS`` on a path answers 204 with ``Allow`` naming every method of every route at that
    path, and a 405 carries the same list: the router alone stops at the first route whose path
    matches, so ``Allow`` named one route's methods (``GET`` for a path that also takes ``DELETE``)."""

    def __init__(self, app: ASGIApp, routes: RouteTable) -> None:
        self.app = app
        self.routes = routes

    def allowed(self, scope: Scope) -> list[str]:
        methods = self.routes.methods(scope)
        return sorted(methods | {"OPTIONS"}) if methods else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allowed = self.allowed(scope)
            if allowed:  # else no route has this path: the router answers 404
                await send({"type": "http.response.start", "status": 204, "headers": [_allow(allowed)]})
                await send({"type": "http.response.body", "body": b""})
                return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, _allow(self.allowed(scope))]}
            await send(message)

        await self.app(scope, receive, send_with_allow)


def _allow(methods: list[str]) -> tuple[bytes, bytes]:
    return b"allow", ", ".join(methods).encode()


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Read the request body before the app sees it, within two limits: over ``limit()`` bytes is 413
    (refused from ``Content-Length`` before reading, or as soon as a chunked body passes it), and a body
    not received within ``timeout()`` seconds is 408 and the connection is closed. Without the deadline
    a client that declares a length and never sends it holds a connection and a task for good.

    A request without a body (no ``Content-Length`` or 0, not chunked: GET, DELETE) is passed on as it
    is: the deadline's timer costs microseconds that a search by id or a list need not pay."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int], timeout: Callable[[], float]) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        has_body = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _too_large(scope, receive, send, limit)
                    return
                has_body = has_body or value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] | None = None
        timeout = self.timeout()
        try:
            with anyio.move_on_after(timeout):
                chunks = await _read_body(receive, limit)
        except _TooLarge:
            await _too_large(scope, receive, send, limit)
            return
        if chunks is None:
            await _timed_out(scope, receive, send, timeout)
            return
        if not chunks:
            return  # the client went away before its body was complete: nobody to answer
        # The chunks are replayed as they came, so a multipart parser still streams them.
        replayed = 0

        async def replay() -> Message:
            nonlocal replayed
            if replayed == len(chunks):
                return await receive()  # after the body: the disconnect, when it comes
            replayed += 1
            return {"type": "http.request", "body": chunks[replayed - 1], "more_body": replayed < len(chunks)}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive, limit: int) -> list[bytes]:
    """The body's chunks (at least one, possibly empty); [] when the client disconnected first."""
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return []
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:  # a chunked body, or one longer than its declared length
            raise _TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    message = f"request body is larger than the limit of {limit} bytes (ERS_MAX_BODY_BYTES)"
    await error_response(413, "limit_exceeded", message)(scope, receive, send)


async def _timed_out(scope: Scope, receive: Receive, send: Send, timeout: float) -> None:
    message = f"request body not received within {timeout:g} s (ERS_BODY_TIMEOUT_S)"
    # The rest of the body may still arrive: the connection cannot carry another request.
    response = error_response(408, "request_timeout", message, {"Connection": "close"})
    await response(scope, receive, send)
