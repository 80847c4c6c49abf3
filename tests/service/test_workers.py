"""``ers serve --workers 2``: a writer and a reader on one port (``service.workers``), real processes.

Each request below opens a fresh connection, so the kernel hands it to either process; an answer says
which one served it (``X-ERS-Worker``) and which reader relayed it to the writer (``X-ERS-Forwarded-By``).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from tests.service.server_proc import ServerProcess

DIM = 8
POSITION = "x-ers-position"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", {"ERS_WORKERS": "2"}) as proc:
        yield proc


def vector(i: int) -> list[float]:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32).tolist()


def fresh(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request on a new connection (closed after it): any of the processes may accept it."""
    with httpx.Client(timeout=10.0) as client:
        return client.request(method, url, headers={"connection": "close", **kwargs.pop("headers", {})}, **kwargs)


def upsert(server: ServerProcess, first: int, n: int = 1) -> httpx.Response:
    items = [{"id": f"i{i}", "vector": vector(i), "payload": {"n": i}} for i in range(first, first + n)]
    return fresh("PUT", f"{server.url}/v1/collections/c/items", json={"items": items})


def top_id(server: ServerProcess, i: int, position: str | None = None) -> tuple[str | None, httpx.Response]:
    headers = {POSITION: position} if position else {}
    response = fresh(
        "POST", f"{server.url}/v1/collections/c/search", json={"vector": vector(i), "k": 1}, headers=headers
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    return (results[0]["id"] if results else None), response


def served_by(response: httpx.Response) -> str:
    return response.headers.get("x-ers-worker", "").split(" ")[0]


def wait_for_reader(server: ServerProcess, timeout: float = 60.0) -> int:
    """Until a reader answers a search itself (it started and holds the collection); its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, response = top_id(server, 0)
        if served_by(response) == "reader":
            return int(response.headers["x-ers-worker"].split(" ")[1])
        time.sleep(0.05)
    raise AssertionError(f"no reader answered within {timeout}s; log:\n{server.log_tail()}")


def create(server: ServerProcess) -> None:
    response = fresh("POST", f"{server.url}/v1/collections", json={"name": "c", "dim": DIM, "metric": "cosine"})
    assert response.status_code == 201, response.text
    assert upsert(server, 0, 20).status_code == 200


def test_reads_see_their_writes_on_any_process(server: ServerProcess) -> None:
    create(server)
    wait_for_reader(server)
    seen = set()
    for i in range(100, 160):
        written = upsert(server, i)
        assert written.status_code == 200, written.text
        position = written.headers[POSITION]
        assert position.startswith("c:")
        found, response = top_id(server, i, position)
        assert found == f"i{i}", (position, response.headers)
        seen.add(served_by(response))
    assert seen == {"writer", "reader"}  # both processes answered, and neither answered stale


def test_writes_sent_to_a_reader_are_forwarded(server: ServerProcess) -> None:
    create(server)
    wait_for_reader(server)
    forwarded = 0
    for i in range(200, 260):
        response = upsert(server, i)
        assert response.status_code == 200 and response.json() == {"upserted": 1}
        assert response.headers[POSITION].startswith("c:")
        assert served_by(response) == "writer"  # only the writer writes
        forwarded += "x-ers-forwarded-by" in response.headers
        found, _ = top_id(server, i, response.headers[POSITION])
        assert found == f"i{i}"
    assert forwarded > 0
    listing = fresh("GET", f"{server.url}/v1/collections/c")
    assert listing.status_code == 200 and listing.json()["count"] == 80


def test_a_reader_serves_msgpack_searches_whose_vector_bytes_spell_json_keys(server: ServerProcess) -> None:
    """Raw float32 bytes may contain ``\\u`` or ``"text"``; a reader once took that for a query to
    embed and forwarded the search to the writer (29% of MiniLM batches of 32). Only a query's own
    keys say whether it needs an encoder."""
    create(server)
    wait_for_reader(server)
    raw = b'\\u"text"' + bytes(4 * DIM - 8)
    assert np.isfinite(np.frombuffer(raw, dtype="<f4")).all()
    body = msgpack.packb({"queries": [{"vector": raw, "k": 3}] * 4})
    holders = set()
    for _ in range(40):
        response = fresh(
            "POST", f"{server.url}/v1/collections/c/search/batch", content=body,
            headers={"content-type": "application/msgpack"},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert "x-ers-forwarded-by" not in response.headers, "a reader forwarded a vector search"
        holders.add(served_by(response))
    assert "reader" in holders


def test_a_killed_reader_is_restarted_and_nothing_is_lost(server: ServerProcess) -> None:
    create(server)
    reader = wait_for_reader(server)
    stop = threading.Event()
    failures: list[str] = []
    resets: list[str] = []
    searches = [0]

    def search_continuously() -> None:
        while not stop.is_set():
            try:
                found, _ = top_id(server, 5)
            except httpx.TransportError as exc:  # a connection the killed reader had accepted
                resets.append(repr(exc))
                continue
            except AssertionError as exc:
                failures.append(str(exc))
                continue
            searches[0] += 1
            if found != "i5":
                failures.append(f"search answered {found}")

    thread = threading.Thread(target=search_continuously)
    thread.start()
    acknowledged: list[tuple[int, str]] = []
    try:
        for i in range(300, 320):
            response = upsert(server, i)
            assert response.status_code == 200
            acknowledged.append((i, response.headers[POSITION]))
        os.kill(reader, signal.SIGKILL)
        for i in range(320, 340):  # writes go on while the reader is down
            response = upsert(server, i)
            assert response.status_code == 200
            acknowledged.append((i, response.headers[POSITION]))
        restarted = wait_for_reader(server)
        assert restarted != reader
        during = searches[0]
        time.sleep(0.5)
        assert searches[0] > during  # the client kept being answered
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == []
    assert len(resets) <= 10, resets
    for i, position in acknowledged:
        found, _ = top_id(server, i, position)
        assert found == f"i{i}"
    assert "exited with -9" in server.log_text()


def test_sigterm_stops_every_process(server: ServerProcess) -> None:
    create(server)
    reader = wait_for_reader(server)
    assert server.stop() in (0, -signal.SIGTERM)  # as a single process: uvicorn raises the signal again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{reader}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{reader}").exists()


def test_a_killed_writer_is_restarted_and_recovers_its_log(server: ServerProcess) -> None:
    create(server)
    wait_for_reader(server)
    written = upsert(server, 400)
    writer = int(written.headers["x-ers-worker"].split(" ")[1])
    os.kill(writer, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # a write on a connection the dead writer held fails; the restarted writer takes the next
        try:
            response = upsert(server, 401)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text  # relayed by a reader: the writer was down
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    assert int(response.headers["x-ers-worker"].split(" ")[1]) != writer
    for i, position in ((400, written.headers[POSITION]), (401, response.headers[POSITION])):
        found, _ = top_id(server, i, position)
        assert found == f"i{i}"


def _holder_of(sock: socket.socket) -> str:
    """Which process holds an open keep-alive connection: a GET /healthz on it is answered by the writer
    (``X-ERS-Worker``), relayed by the reader that holds the connection (``X-ERS-Forwarded-By``)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ers\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before an answer"
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert " 200 " in lines[0] + " ", lines[0]
    headers = dict(line.lower().split(":", 1) for line in lines[1:])
    holder = headers.get("x-ers-forwarded-by") or headers.get("x-ers-worker", "")
    assert holder, f"no X-ERS-Worker in {lines}"
    return holder.strip()


def test_connections_opened_together_spread_over_the_workers(server: ServerProcess) -> None:
    """A client opening its keep-alive pool at once gets both processes about evenly
    (``service.fair_accept``). Measured, 8 connections queued together: 5/3, 4/4, 5/3 with it; without
    it the first process woken took 6, 6 and 5 of them."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + 30
    while "x-ers-forwarded-by" not in fresh("GET", f"{server.url}/healthz").headers:  # the reader is up
        assert time.monotonic() < deadline, "no reader answered in 30 s"
        time.sleep(0.05)
    smaller_shares = []
    for _ in range(6):
        # All 8 connections sit in the shared socket's queue before either process accepts one.
        pool = [socket.create_connection((host, int(port)), timeout=10.0) for _ in range(8)]
        try:
            holders = [_holder_of(sock) for sock in pool]
        finally:
            for sock in pool:
                sock.close()
        counts = Counter(holders)
        smaller_shares.append(min(counts.values()) if len(counts) == 2 else 0)
        time.sleep(0.2)
    assert sum(smaller_shares) >= 17, f"the smaller process's share of 8 connections: {smaller_shares}"
