"""``AsyncERSClient``: REST API v1 over an ``httpx.AsyncClient``; the same methods as ``ERSClient``,
each a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Literal, TypeVar

import httpx

from service.client.base import ClientBase
from service.client.call import Call
from service.client.errors import ERSConnectionError
from service.client.types import Job

T = TypeVar("T")


class AsyncERSClient(ClientBase):
    """An asyncio client of one ERS server::

        async with AsyncERSClient("http://127.0.0.1:8080", api_key="...") as ers:
            hits = (await ers.search("notes", vector=[1, 0, 0], k=5)).results

    Errors as in ``ERSClient``."""

    http_class = httpx.AsyncClient
    is_async: Literal[True] = True  # picks the coroutine overloads of every operation
    _http: httpx.AsyncClient

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(**call.request_args())
        except httpx.TransportError as exc:
            raise ERSConnectionError(self.url, str(exc) or type(exc).__name__) from exc
        return call.read(response)

    async def watch_job(self, job_id: str, interval: float = 0.5) -> AsyncIterator[Job]:
        """The job every ``interval`` seconds, until (and including) its terminal state."""
        job = await self.get_job(job_id)
        yield job
        while not job.terminal:
            await asyncio.sleep(interval)
            job = await self.get_job(job_id)
            yield job

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncERSClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
