"""``ERSClient``: REST API v1 over a blocking ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Literal, TypeVar

import httpx

from service.client.base import ClientBase
from service.client.call import Call
from service.client.errors import ERSConnectionError
from service.client.types import Job

T = TypeVar("T")


class ERSClient(ClientBase):
    """A blocking client of one ERS server::

        with ERSClient("http://127.0.0.1:8080", api_key="...") as ers:
            ers.create_collection("notes", dim=3)
            ers.upsert("notes", [NewItem("a", vector=[1, 0, 0])])
            hits = ers.search("notes", vector=[1, 0, 0], k=5).results

    Every method raises an ``ERSClientError`` subclass for an error answer (``NotFound``,
    ``Conflict``, ``InvalidRequest``, ...) and ``ERSConnectionError`` when the server cannot be reached.
    Keyword arguments besides ``timeout`` go to ``httpx.Client`` (``transport``, ``verify``...)."""

    http_class = httpx.Client
    is_async: Literal[False] = False  # picks the plain-answer overloads of every operation
    _http: httpx.Client

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(**call.request_args())
        except httpx.TransportError as exc:
            raise ERSConnectionError(self.url, str(exc) or type(exc).__name__) from exc
        return call.read(response)

    def watch_job(self, job_id: str, interval: float = 0.5) -> Iterator[Job]:
        """The job every ``interval`` seconds, until (and including) its terminal state."""
        job = self.get_job(job_id)
        yield job
        while not job.terminal:
            time.sleep(interval)
            job = self.get_job(job_id)
            yield job

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ERSClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
