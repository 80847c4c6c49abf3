"""Faults a real server must survive: damaged collections on disk, a full disk, and a collection
deleted and re-created while clients write to and search it. Each test runs a real ``ers serve``
child process (``tests/service/server_proc.py``) and restarts it where the restart is under test.

Which damage heals and which quarantines (``ers doctor --help`` says the same):

- a torn log tail (bytes of an append a crash cut short) is cut off at start: the collection serves;
- an unreadable index snapshot is rebuilt from the store at start: the collection serves;
- a corrupt record with intact records after it, and a log truncated below what the store applied,
  are quarantined (503 with the reason) until ``ers doctor --repair`` starts a new log at the
  store's offset (the store holds every record: nothing is lost);
- an unreadable store record is quarantined and not repairable: the collection can be deleted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from indexer.wal import HEADER
from tests.indexer import test_disk_full
from tests.service.server_proc import ERS_BIN, ServerProcess

DIM = 8
TIMEOUT = httpx.Timeout(30.0)
small_disk = test_disk_full.small_disk  # the fixture: a 2 MiB tmpfs mounted for the test
fill = test_disk_full.fill


def vectors(n: int, seed: int, dim: int = DIM) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32).tolist()


def items(prefix: str, n: int, seed: int, dim: int = DIM) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "vector": v, "payload": {"i": i}} for i, v in enumerate(vectors(n, seed, dim))]


def create(http: httpx.Client, name: str, dim: int = DIM) -> httpx.Response:
    return http.post("/v1/collections", json={"name": name, "dim": dim, "metric": "cosine"})


def doctor(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")} | {"COLUMNS": "200"}
    return subprocess.run([str(ERS_BIN), "doctor", "--data-dir", str(data), *args],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


def stored_vector(http: httpx.Client, name: str, item_id: str) -> bytes | None:
    r = http.get(f"/v1/collections/{name}/items/{item_id}", params={"with_vector": True})
    assert r.status_code in (200, 404), r.text
    return None if r.status_code == 404 else np.asarray(r.json()["vector"], dtype=np.float32).tobytes()


def log_segment(data: Path, name: str) -> Path:
    (segment,) = sorted((data / "collections" / name / "wal").glob("*.log"))
    return segment


def record_starts(segment: Path) -> list[int]:
    raw, starts, pos = segment.read_bytes(), [], 0
    while pos < len(raw):
        starts.append(pos)
        pos += HEADER.size + HEADER.unpack_from(raw, pos)[1]
    return starts


# -- quarantine ------------------------------------------------------------------------------------
DAMAGED = ("corrupt", "truncated", "norecord")
HEALED = ("torn", "badsnap")


def damage(data: Path) -> None:
    """What each collection's name says, done to a stopped server's data directory."""
    torn = log_segment(data, "torn")
    with open(torn, "ab") as f:  # the first bytes of an append that a crash cut short
        f.write(HEADER.pack(b"ERSW", 4000, 0) + b"\x01" * 100)
    (snap,) = (data / "collections" / "badsnap").glob("index-*.faiss")
    snap.write_bytes(b"\x00garbage" * 50)
    corrupt = log_segment(data, "corrupt")
    raw = bytearray(corrupt.read_bytes())
    raw[HEADER.size + 40] ^= 0xFF  # inside the first record; two intact records follow it
    corrupt.write_bytes(bytes(raw))
    truncated = log_segment(data, "truncated")
    last = record_starts(truncated)[-1]
    os.truncate(truncated, last + 30)  # the last acknowledged record lost (the store applied it)
    with sqlite3.connect(data / "meta.sqlite3") as db:
        db.execute("UPDATE collections SET config = '{not json' WHERE name = 'norecord'")


def test_damaged_collections_are_quarantined_and_the_others_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = ("good", *HEALED, *DAMAGED)
    written: dict[str, list[dict[str, Any]]] = {}
    with ServerProcess(data) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for seed, name in enumerate(names):
            assert create(http, name).status_code == 201
            written[name] = []
            for batch in range(3):  # three log records each
                chunk = items(f"{name}-{batch}-", 20, seed * 10 + batch)
                assert http.put(f"/v1/collections/{name}/items", json={"items": chunk}).status_code == 200
                written[name] += chunk
    damage(data)  # the graceful stop wrote a snapshot of every collection

    server = ServerProcess(data).start()  # starts, whatever one collection holds
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            for name in ("good", *HEALED):  # served, with every item (torn tail cut, snapshot rebuilt)
                assert http.get(f"/v1/collections/{name}").json()["count"] == 60, name
                probe = written[name][7]
                hits = http.post(f"/v1/collections/{name}/search", json={"vector": probe["vector"], "k": 1}).json()
                assert hits["results"][0]["id"] == probe["id"]
            for name in DAMAGED:
                for r in (
                    http.get(f"/v1/collections/{name}"),
                    http.put(f"/v1/collections/{name}/items", json={"items": items("new-", 1, 99)}),
                    http.post(f"/v1/collections/{name}/search", json={"vector": vectors(1, 1)[0], "k": 1}),
                ):
                    assert r.status_code == 503, (name, r.text)
                    assert r.json()["error"]["code"] == "collection_quarantined" and "Retry-After" in r.headers
            message = http.get("/v1/collections/corrupt").json()["error"]["message"]
            assert "damaged" in message and "intact records follow" in message
            assert "store has applied" in http.get("/v1/collections/truncated").json()["error"]["message"]
            ready = http.get("/readyz").json()
            assert ready["status"] == "ready" and sorted(ready["quarantined"]) == sorted(DAMAGED)
            metrics = http.get("/metrics").text
            assert all(f'ers_collection_quarantined{{collection="{n}"}} 1' in metrics for n in DAMAGED)
            listed = [c["name"] for c in http.get("/v1/collections").json()["collections"]]
            assert listed == sorted(("good", *HEALED))
            refused = doctor(data)  # never while a server owns the data directory
            assert refused.returncode == 2 and "refusing" in refused.stderr
            assert http.delete("/v1/collections/norecord").status_code == 204  # a way out through the API
            assert create(http, "norecord").status_code == 201
    finally:
        server.stop()

    report = doctor(data)
    assert report.returncode == 1, report.stdout + report.stderr
    for name, status in (("good", "ok"), ("torn", "ok"), ("corrupt", "repairable"), ("truncated", "repairable")):
        assert f"{name}: {status}" in report.stdout, report.stdout
    repaired = doctor(data, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "started a new log" in repaired.stdout and "wal.damaged-" in repaired.stdout

    with ServerProcess(data) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        assert "quarantined" not in http.get("/readyz").json()
        for name in ("corrupt", "truncated"):  # every acknowledged item is back, bit-exact
            assert http.get(f"/v1/collections/{name}").json()["count"] == 60
            for item in written[name][::7]:
                assert stored_vector(http, name, item["id"]) == np.asarray(item["vector"], np.float32).tobytes()
            assert http.put(f"/v1/collections/{name}/items", json={"items": items("after-", 5, 7)}).status_code == 200
        server.kill9()
        server.start()
        http.base_url = httpx.URL(server.url)
        assert http.get("/v1/collections/corrupt").json()["count"] == 65


# -- defect 2: deleting a collection while upserts run left its name stuck --------------------------
def test_delete_during_upserts_never_leaves_the_name_stuck(tmp_path: Path) -> None:
    """The issue's scenario, 30 times: upserts stream into a collection, it is deleted under them and
    re-created at once. Before the fix, 14 re-creates in 30 answered 500 ``store_mismatch`` (an
    upsert in flight re-wrote the deleted collection's items and log offset into the store), then
    409 with GET 404, and the restart failed with ``StoreMismatch``."""
    name = "stuck"
    with ServerProcess(tmp_path / "data") as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        assert create(http, name).status_code == 201
        statuses: dict[int, int] = {}
        stop = threading.Event()

        def upsert_forever(seed: int) -> None:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as own:
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {"items": items(f"w{seed}-{n}-", 20, seed * 100_000 + n)}
                    code = own.put(f"/v1/collections/{name}/items", json=body).status_code
                    statuses[code] = statuses.get(code, 0) + 1

        writers = [threading.Thread(target=upsert_forever, args=(s,)) for s in range(4)]
        for t in writers:
            t.start()
        try:
            for round_ in range(30):
                deleted = http.delete(f"/v1/collections/{name}")
                assert deleted.status_code == 204, (round_, deleted.text)
                recreated = create(http, name)
                assert recreated.status_code == 201, (round_, recreated.text)
                assert http.get(f"/v1/collections/{name}").status_code == 200
        finally:
            stop.set()
            for t in writers:
                t.join()
        assert set(statuses) <= {200, 404}, statuses  # a write racing the delete: done, or 404
        assert statuses.get(200, 0) > 0
        server.kill9()
        server.start()  # the restart used to fail with StoreMismatch
        http.base_url = httpx.URL(server.url)
        assert http.get(f"/v1/collections/{name}").status_code == 200
        assert http.get("/readyz").json()["status"] == "ready"


# -- a full disk -----------------------------------------------------------------------------------
def test_disk_full_refuses_writes_with_507_and_loses_nothing(small_disk: Path) -> None:
    """Records larger than a page: every append on the full disk writes part of a record and fails.
    The part is cut off at once, so the writes after the disk has room again are not buried behind
    it (they would be lost at the next start) and nothing refused comes back after a crash."""
    dim, name = 96, "full"
    batch = lambda tag, seed: items(f"{tag}-", 16, seed, dim)  # noqa: E731 - 6 KiB a record
    acked: dict[str, bytes] = {}
    refused: list[str] = []
    server = ServerProcess(small_disk, {"ERS_SNAPSHOT_EVERY": 40})  # snapshots meet the full disk too
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            assert create(http, name, dim).status_code == 201

            def write(tag: str, seed: int) -> int:
                chunk = batch(tag, seed)
                r = http.put(f"/v1/collections/{name}/items", json={"items": chunk})
                assert r.status_code in (200, 507), r.text
                if r.status_code == 200:
                    acked.update({i["id"]: np.asarray(i["vector"], np.float32).tobytes() for i in chunk})
                else:
                    assert r.json()["error"]["code"] == "insufficient_storage"
                    refused.extend(i["id"] for i in chunk)
                return r.status_code

            assert all(write(f"before{n}", n) == 200 for n in range(4))
            filler = fill(small_disk)
            assert [write(f"full{n}", 100 + n) for n in range(6)] == [507] * 6  # no acknowledgement
            probe = next(iter(acked))  # reads go on meanwhile
            assert stored_vector(http, name, probe) == acked[probe]
            assert http.post(f"/v1/collections/{name}/search", json={"id": probe, "k": 3}).status_code == 200
            assert http.get("/readyz").status_code == 200
            filler.unlink()  # space is back: writes resume at once
            assert [write(f"after{n}", 200 + n) for n in range(4)] == [200] * 4
        server.kill9()
        server.start()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            assert http.get(f"/v1/collections/{name}").json()["count"] == len(acked)
            for item_id, vector in acked.items():  # nothing acknowledged lost, bit-exact
                assert stored_vector(http, name, item_id) == vector, item_id
            assert all(stored_vector(http, name, item_id) is None for item_id in refused[::5])
    finally:
        server.stop()


# -- create / delete / upsert / search on one name ---------------------------------------------------
def test_lifecycle_race_on_one_name(tmp_path: Path) -> None:
    """Several threads create, delete, upsert into, search and read one collection name for 20 s: every
    answer is a success or the 404/409 the race explains (never a 5xx), the name works afterwards, and
    a restart after ``kill -9`` is clean (nothing quarantined, the last state served)."""
    name, seconds = "race", float(os.environ.get("ERS_RACE_SECONDS", "20"))
    allowed = {
        "create": {201, 409},
        "delete": {204, 404},
        "upsert": {200, 404},
        "search": {200, 404},
        "get": {200, 404},
    }
    seen: Counter[tuple[str, int]] = Counter()
    stop = threading.Event()
    server = ServerProcess(tmp_path / "data", {"ERS_SNAPSHOT_EVERY": 200}).start()

    def hammer(kind: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            while not stop.is_set():
                if kind == "create":
                    r = create(http, name)
                elif kind == "delete":
                    r = http.delete(f"/v1/collections/{name}")
                    time.sleep(rng.uniform(0, 0.05))
                elif kind == "upsert":
                    body = {"items": items(f"{seed}-{rng.integers(1 << 30)}-", 10, int(rng.integers(1 << 30)))}
                    r = http.put(f"/v1/collections/{name}/items", json=body)
                elif kind == "search":
                    r = http.post(f"/v1/collections/{name}/search", json={"vector": vectors(1, seed)[0], "k": 5})
                else:
                    r = http.get(f"/v1/collections/{name}")
                seen[(kind, r.status_code)] += 1

    kinds = ["create", "create", "delete", "upsert", "upsert", "upsert", "search", "search", "get"]
    threads = [threading.Thread(target=hammer, args=(k, n)) for n, k in enumerate(kinds)]
    try:
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        unexpected = {key: n for key, n in seen.items() if key[1] not in allowed[key[0]]}
        assert not unexpected, (unexpected, server.log_tail())
        assert seen[("delete", 204)] > 5 and seen[("upsert", 200)] > 5, seen
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            assert http.delete(f"/v1/collections/{name}").status_code in (204, 404)  # the name is never stuck
            assert create(http, name).status_code == 201
            assert http.put(f"/v1/collections/{name}/items", json={"items": items("last-", 7, 1)}).status_code == 200
        server.kill9()
        server.start()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            assert http.get("/readyz").json() == {"status": "ready", "collections": 1}
            assert http.get(f"/v1/collections/{name}").json()["count"] == 7
        leftovers = [p.name for p in (tmp_path / "data" / "collections").iterdir() if p.name.startswith(".")]
        assert not leftovers, leftovers
    finally:
        stop.set()
        server.stop()
