"""The layer both clients share: a ``Call`` says what to send and how to read the answer, and an
``operation`` turns a function that builds one into a method of either client.

An operation is written once (``service.client.data`` and ``service.client.jobs``); on an
``ERSClient`` it sends the call and returns the typed answer, on an ``AsyncERSClient`` it returns a
coroutine of that answer. Only sending differs between the two (``_send``); building requests and
reading answers (status → typed error, JSON → model) happen here, for both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload
from urllib.parse import quote

import httpx

from service.client.errors import error_from_response
from service.client.inputs import FilePart

T = TypeVar("T")
P = ParamSpec("P")
DEFAULT_URL = "http://127.0.0.1:8080"


def segment(value: str) -> str:
    """A name or id as one URL path segment (a face item's ``#``, a path-like id's ``/``)."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request of REST API v1 and the parser of its JSON answer (None for an empty body)."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # multipart form fields (a list value: the field repeated)
    files: list[FilePart] | None = None
    timeout: float | None = None  # None: the client's

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("json", "params", "data", "files", "timeout"):
            value = getattr(self, name)
            if value is not None:  # httpx reads timeout=None as "no timeout": leave it out instead
                args[name] = value
        return args

    def read(self, response: httpx.Response) -> T:
        """The typed answer, or the typed error of a non-2xx status."""
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers)
        return self.parse(response.json() if response.content else None)


class SyncClient(Protocol):
    """What ``ERSClient`` is to an operation (a protocol, so this module need not import the clients)."""

    is_async: Literal[False]


class AsyncClient(Protocol):
    """What ``AsyncERSClient`` is to an operation."""

    is_async: Literal[True]


def nothing(_: Any) -> None:
    return None


class Operation(Generic[P, T]):
    """A client method defined once by the function that builds its ``Call``."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        functools.update_wrapper(self, build)  # type: ignore[arg-type]
        # help() and IDEs show the method as a caller sees it: no `self`, the answer's type
        sig = inspect.signature(build)
        answer = sig.return_annotation
        if isinstance(answer, str) and answer.startswith("Call[") and answer.endswith("]"):
            answer = answer[len("Call[") : -1]
        self.signature = sig.replace(parameters=list(sig.parameters.values())[1:], return_annotation=answer)

    @overload
    def __get__(self, client: None, owner: type) -> Operation[P, T]: ...
    @overload
    def __get__(self, client: SyncClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        build = self.build

        @functools.wraps(build)
        def method(*args: Any, **kwargs: Any) -> Any:
            return client._send(build(client, *args, **kwargs))

        method.__signature__ = self.signature  # type: ignore[attr-defined]
        return method


operation = Operation
