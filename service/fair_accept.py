"""Sharing one listening socket fairly among the processes of ``ers serve --workers N``.

Every child of ``service.workers`` accepts on the same inherited socket. Served by uvicorn as usual
(``loop.create_server``), the first child the kernel wakes accepts *every* connection waiting at that
moment (asyncio and uvloop accept up to the backlog per wake-up). A client that opens its pool of
keep-alive connections at once, as HTTP clients and load generators do, then lands wholly on one
process, and the other cores idle: measured with 2 workers and 2 client connections, the server
used 1.36 cores and served no more batches than one worker.

So a child here accepts one connection per wake-up and then looks away from the socket for a moment
that grows with the connections it already holds (``pause_for``): the child holding the fewest
connections is the first to look again, so new connections spread over the children, as nginx's
``accept_mutex_delay`` / ``ngx_accept_disabled`` spreads them over its workers. A lone child (or one
whose siblings are busy) still takes every connection, only a few milliseconds later. Only connections
from the shared socket count (the writer's private one carries the readers' forwarding pools).

Measured (2 workers, two connections opened together, 40 tries, 50 ms apart): 2 ms per held
connection spread them over both processes 80 times in 80; 1 ms, 34 in 40. The price: a client that
opens a new connection per request gets at most ~500 accepts a second per process (one per pause);
clients that keep their connections alive, as HTTP client libraries do by default, never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from typing import Any

import uvicorn

log = logging.getLogger("ers")
PAUSE_PER_CONNECTION_S = 0.002
PAUSE_MAX_S = 0.010
PAUSE_AFTER_ERROR_S = 0.1  # e.g. out of file descriptors: try again soon, without spinning


def pause_for(open_connections: int) -> float:
    """How long a child holding ``open_connections`` waits before it may accept again."""
    return min(PAUSE_MAX_S, PAUSE_PER_CONNECTION_S * max(0, open_connections))


class FairAcceptServer(uvicorn.Server):
    """uvicorn's ``Server``, with ``public`` (the socket shared with sibling processes) accepted one
    connection at a time; sockets passed to ``run`` (the writer's private one) are served as usual."""

    def __init__(self, config: uvicorn.Config, public: socket.socket) -> None:
        super().__init__(config)
        self.public = public
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._watching = False
        self._accepting = True
        self._connecting: set[asyncio.Task[Any]] = set()  # strong references until each is set up
        # The connections taken from ``public``: server_state.connections also holds the writer's
        # private ones (readers' forwarding pools), which say nothing about this process's share.
        self._mine: weakref.WeakSet[asyncio.Protocol] = weakref.WeakSet()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self._loop = asyncio.get_running_loop()
        self.public.setblocking(False)
        self._watch()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._accepting = False
        self._unwatch()
        if self._resume is not None:
            self._resume.cancel()
        self.public.close()
        await super().shutdown(sockets=sockets)

    def _protocol(self) -> asyncio.Protocol:
        # What uvicorn's own create_server would build for each connection.
        protocol_class: Any = self.config.http_protocol_class  # typed as the bare asyncio.Protocol
        protocol: asyncio.Protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        self._mine.add(protocol)
        return protocol

    def held(self) -> int:
        """Connections from ``public`` this process holds open (uvicorn drops a closed one from
        ``server_state.connections``)."""
        return sum(1 for protocol in self._mine if protocol in self.server_state.connections)

    def _watch(self) -> None:
        self._resume = None
        if self._accepting and not self._watching and self._loop is not None:
            self._loop.add_reader(self.public.fileno(), self._accept_one)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):  # the socket may be closed already
                self._loop.remove_reader(self.public.fileno())
            self._watching = False

    def _pause(self, seconds: float) -> None:
        self._unwatch()
        assert self._loop is not None
        self._resume = self._loop.call_later(seconds, self._watch)

    def _accept_one(self) -> None:
        try:
            conn, _ = self.public.accept()
        except (BlockingIOError, InterruptedError):
            return  # a sibling took it
        except OSError as exc:
            log.warning("accept failed (%s); accepting again in %.1f s", exc, PAUSE_AFTER_ERROR_S)
            self._pause(PAUSE_AFTER_ERROR_S)
            return
        conn.setblocking(False)
        assert self._loop is not None
        task = self._loop.create_task(self._serve_connection(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        # The new connection counts: it is not in server_state.connections until its task runs.
        self._pause(pause_for(self.held() + 1))

    async def _serve_connection(self, conn: socket.socket) -> Any:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
        except Exception:  # the client gone already, say: its own problem, not the server's
            log.debug("a connection failed before its first byte", exc_info=True)
            conn.close()
