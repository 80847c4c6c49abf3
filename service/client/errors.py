"""Typed errors of the ERS client: one class per HTTP status the API answers, each carrying the
API's ``code`` and ``message`` (its error body is ``{"error": {"code", "message"}}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus


class ERSClientError(Exception):
    """Any error the API answered, or a failure to reach it (``status`` 0, see ``ERSConnectionError``).

    ``str()`` reads ``HTTP <status>: <message>``, the line the ``ers`` CLI prints."""

    status: int = 0  # the class's status; an instance holds the one the server answered

    def __init_subclass__(cls, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str, code: str = "http_error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class Unauthorized(ERSClientError, status=401):
    """401: no API key, or one the server does not know (``Authorization: Bearer <key>``)."""


class Forbidden(ERSClientError, status=403):
    """403: e.g. a job's server path outside ``ERS_ALLOWED_ROOTS``."""


class NotFound(ERSClientError, status=404):
    """404: unknown collection, item or job."""


class Conflict(ERSClientError, status=409):
    """409: a duplicate collection, a migration the compatibility check refuses, a finished job cancelled."""


class PayloadTooLarge(ERSClientError, status=413):
    """413: a body, batch, query count, ``k`` or image over the server's limits."""


class InvalidRequest(ERSClientError, status=422):
    """422: a wrong vector dimension, NaN, a bad filter, a missing encoder, a malformed body."""


class RetryableError(ERSClientError):
    """An answer worth retrying later: ``retry_after`` holds the server's ``Retry-After`` in seconds."""

    def __init__(
        self, message: str, code: str = "http_error", status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code, status)
        self.retry_after = retry_after


class Overloaded(RetryableError, status=429):
    """429: the encoder queue is full."""


class Unavailable(RetryableError, status=503):
    """503: the metadata store (Redis) is unreachable, or the server is not ready."""


class ServerError(ERSClientError, status=500):
    """Any other 5xx (a model artifact that fails to load, a zoo fetch that failed upstream)."""


class ERSConnectionError(ERSClientError, ConnectionError):
    """The server could not be reached at all (refused, timed out, DNS): no HTTP answer."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach ERS at {url}: {reason}", "connection_error", 0)
        self.url = url

    def __str__(self) -> str:
        return self.message


BY_STATUS: dict[int, type[ERSClientError]] = {
    cls.status: cls for cls in (Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, InvalidRequest)
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "no message"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare enough to leave to the caller
        return None


def error_from_response(status: int, content: bytes, headers: Mapping[str, str]) -> ERSClientError:
    """The typed error for a non-2xx answer. Bodies that are not the API's error shape (a proxy's
    HTML page, ``/readyz``'s ``{"status", "reason"}``) still give a readable message."""
    code, message = "http_error", content.decode(errors="replace").strip() or _phrase(status)
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
    elif isinstance(body, dict) and "reason" in body:
        code, message = str(body.get("status", code)), str(body["reason"])
    if status in (429, 503):
        cls: type[RetryableError] = Overloaded if status == 429 else Unavailable
        return cls(message, code, status, _retry_after(headers))
    if status >= 500:
        return ServerError(message, code, status)
    return BY_STATUS.get(status, ERSClientError)(message, code, status)
