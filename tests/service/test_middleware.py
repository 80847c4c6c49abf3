"""The request body's time limit, against a real ``ers serve`` over raw sockets (an in-process client
cannot send half a body): a body not received within ``ERS_BODY_TIMEOUT_S`` is answered 408 in the
error shape and the connection is closed. The issue: a body whose Content-Length was never reached
held the connection open with no timeout."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.server_proc import ServerProcess

KEY = "body-key"
TIMEOUT_S = 1.0
HEAD = (
    b"PUT /v1/collections/c/items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env: dict[str, str | float] = {"ERS_API_KEYS": KEY, "ERS_BODY_TIMEOUT_S": TIMEOUT_S}
    with ServerProcess(tmp_path_factory.mktemp("body") / "data", env) as running:
        yield running


def connect(server: ServerProcess) -> socket.socket:
    assert server.port is not None
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test).
    A byte of ours that crossed the server's close makes that close a reset: closed all the same."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def assert_timed_out(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower(), head
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "ERS_BODY_TIMEOUT_S" in error["message"], error


def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(HEAD + b'{"items": [')  # 11 of the 100 bytes announced, then nothing
        started = time.monotonic()
        answer = read_until_closed(sock)  # returns only once the server has closed the connection
        waited = time.monotonic() - started
    assert_timed_out(answer)
    assert TIMEOUT_S * 0.8 < waited < TIMEOUT_S + 4, waited
    assert httpx.get(server.url + "/healthz").status_code == 200  # the server serves on


def test_a_body_trickling_in_is_bounded_by_the_whole_deadline(server: ServerProcess) -> None:
    """A byte every 0.2 s never leaves the connection idle for long: the limit is on the whole body."""
    with connect(server) as sock:
        sock.sendall(HEAD)
        started = time.monotonic()
        for _ in range(100):  # 20 s of trickle at most; the server must answer long before
            if select.select([sock], [], [], 0.2)[0]:
                break
            sock.sendall(b" ")
        answer = read_until_closed(sock)
        waited = time.monotonic() - started
    assert_timed_out(answer)
    assert waited < TIMEOUT_S + 4, waited


def test_a_body_sent_in_pieces_within_the_deadline_is_served(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(server.url + "/v1/collections", json={"name": "c", "dim": 2}, headers=auth).status_code == 201
    body = b'{"items": [{"id": "a", "vector": [0.5, 1.0]}]}'
    with connect(server) as sock:
        sock.sendall(HEAD.replace(b"Content-Length: 100", f"Content-Length: {len(body)}".encode()))
        for piece in (body[:10], body[10:30], body[30:]):
            time.sleep(TIMEOUT_S / 5)
            sock.sendall(piece)
        sock.settimeout(10)
        answer = b""
        while not answer.endswith(b"}"):  # the head and the JSON body may come in two reads
            chunk = sock.recv(65536)
            assert chunk, answer  # closed before the whole answer came
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'\r\n\r\n{"upserted":1}'), answer
