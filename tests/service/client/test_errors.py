"""Answers a live server in these tests does not give on demand (a full encoder queue, Redis down, a
proxy's error page) still become the right typed error, with what the body and headers say."""

from __future__ import annotations

import json

import pytest

from service.client import (
    Conflict,
    ERSClientError,
    Forbidden,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Unavailable,
)
from service.client.errors import error_from_response


def body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_overloaded_and_unavailable_carry_retry_after() -> None:
    full = error_from_response(429, body("overloaded", "queue full"), {"retry-after": "2"})
    assert isinstance(full, Overloaded) and (full.status, full.code, full.retry_after) == (429, "overloaded", 2.0)
    down = error_from_response(503, body("store_unavailable", "redis is down"), {"retry-after": "1"})
    assert isinstance(down, Unavailable) and down.retry_after == 1.0 and str(down) == "HTTP 503: redis is down"
    not_ready = error_from_response(503, b'{"status": "unavailable", "reason": "store unreachable"}', {})
    assert isinstance(not_ready, Unavailable) and not_ready.message == "store unreachable"
    assert not_ready.code == "unavailable" and not_ready.retry_after is None


CLASSES = [(403, Forbidden), (409, Conflict), (413, PayloadTooLarge), (500, ServerError), (502, ServerError)]


@pytest.mark.parametrize(("status", "cls"), CLASSES)
def test_each_status_has_its_class(status: int, cls: type[ERSClientError]) -> None:
    error = error_from_response(status, body("some_code", "what went wrong"), {})
    assert type(error) is cls and (error.status, error.code, error.message) == (status, "some_code", "what went wrong")


def test_a_body_that_is_not_the_api_s_keeps_its_text() -> None:
    error = error_from_response(502, b"<html>Bad Gateway</html>", {})
    assert isinstance(error, ServerError) and error.message == "<html>Bad Gateway</html>" and error.code == "http_error"
    odd = error_from_response(418, b"", {})
    assert type(odd) is ERSClientError and str(odd) == "HTTP 418: I'm a Teapot"
