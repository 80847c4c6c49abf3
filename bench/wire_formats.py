"""What each wire form of a vector costs: JSON lists, ``vector_b64`` (base64 float32) and msgpack ``bin``.

    .venv/bin/python bench/wire_formats.py [--dims 384,784 --batch 64 --items 256 --repeat 200]
        [--seconds 4 --rounds 3 --concurrency 2 --n 2000 --before-root DIR]

Table 1, parse cost per request (µs, median of ``--repeat``), in this process, through the service's own
code: a batch search of ``--batch`` queries (``service.wire.parse`` of the body, then the query matrix
the route builds, ``service.routes.search.given_matrix``) and an upsert of ``--items`` items with a small
payload (parse, the route's item conversion, ``request_items`` and ingest's ``plan``: every check an item
passes before it is written). Bodies are encoded before the clock starts; their sizes are shown.

Table 2, end to end: single-query ``POST /search`` on a real ``ers serve`` subprocess (a ``--n``-item,
``--dims``' first dimension, Flat collection, so FAISS costs little and the request path shows):
closed-loop threads (``--concurrency``), one keep-alive connection each, each answer read and parsed
(JSON with orjson, msgpack with msgpack) inside the clock. Rows: JSON lists, ``vector_b64``, msgpack.
With ``--before-root DIR`` (a copy of an earlier tree's ``service``, ``indexer``, ``models``, e.g. from
``git archive``), a second server runs that code (``PYTHONPATH=DIR``) and adds a "before" row with
JSON lists. Rows run interleaved over ``--rounds`` rounds so drift hits them alike; the server's CPU
per call and the cores other processes used ("others": noise) are shown.

Exit status 0 (a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from searchlib.load import Row, WorkerFactory, closed_loop
from searchlib.server import Server, load

from indexer.ingest import Destination, plan
from service import wire
from service.routes.collections import _item
from service.routes.search import given_matrix
from service.runtime.embedding import request_items
from service.schemas import BatchSearchRequest, UpsertRequest

FORMATS = ("json", "b64", "msgpack")
CONTENT_TYPE = {"json": wire.JSON, "b64": wire.JSON, "msgpack": wire.MSGPACK}
NP = orjson.OPT_SERIALIZE_NUMPY  # float32 in shortest repr: parses back to the identical float32


def b64(row: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()


def vector_field(fmt: str, row: np.ndarray) -> dict[str, Any]:
    if fmt == "json":
        return {"vector": row}
    if fmt == "b64":
        return {"vector_b64": b64(row)}
    return {"vector": np.ascontiguousarray(row, dtype="<f4").tobytes()}


def encode(fmt: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb(body) if fmt == "msgpack" else orjson.dumps(body, option=NP)


def search_body(fmt: str, rows: np.ndarray, k: int = 10) -> bytes:
    return encode(fmt, {"queries": [{**vector_field(fmt, r), "k": k} for r in rows]})


def upsert_body(fmt: str, rows: np.ndarray) -> bytes:
    items = [
        {"id": f"item-{n}", **vector_field(fmt, r), "payload": {"n": n, "tag": "bench"}} for n, r in enumerate(rows)
    ]
    return encode(fmt, {"items": items})


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _fixed_dim(dim: int) -> Callable[[str | None], int]:
    return lambda _version: dim


def parse_costs(dims: list[int], batch: int, items: int, repeat: int) -> list[tuple[str, int, str, int, float]]:
    """(operation, dim, format, body bytes, µs per request)."""
    rng = np.random.default_rng(0)
    out = []
    for dim in dims:
        queries = rng.standard_normal((batch, dim)).astype(np.float32)
        stored = rng.standard_normal((items, dim)).astype(np.float32)
        dest = Destination("bench", None, None, _fixed_dim(dim), False, 10_000_000)
        for fmt in FORMATS:
            body = search_body(fmt, queries)
            kind: wire.Format = "msgpack" if fmt == "msgpack" else "json"

            def search(body: bytes = body, kind: wire.Format = kind, dim: int = dim) -> None:
                parsed = wire.parse(BatchSearchRequest, body, kind, "queries")
                assert given_matrix(parsed.queries, dim) is not None

            out.append((f"search batch {batch}", dim, fmt, len(body), median_us(search, repeat)))
        for fmt in FORMATS:
            body = upsert_body(fmt, stored)
            kind = "msgpack" if fmt == "msgpack" else "json"

            def upsert(body: bytes = body, kind: wire.Format = kind, dest: Destination = dest) -> None:
                parsed = wire.parse(UpsertRequest, body, kind, "items")
                planned = plan(request_items([_item(i) for i in parsed.items]), dest)
                assert not planned.failures

            out.append((f"upsert {items}", dim, fmt, len(body), median_us(upsert, max(10, repeat // 4))))
    return out


def search_worker(port: int, fmt: str, bodies: list[bytes]) -> WorkerFactory:
    """One keep-alive connection per thread; the answer is read and parsed in its format."""
    headers = {"content-type": CONTENT_TYPE[fmt], "accept": CONTENT_TYPE[fmt]}
    loads: Callable[[bytes], Any] = msgpack.unpackb if fmt == "msgpack" else orjson.loads

    def factory(_: int) -> Callable[[int], bool]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def call(i: int) -> bool:
            conn.request("POST", "/v1/collections/bench/search", body=bodies[i % len(bodies)], headers=headers)
            resp = conn.getresponse()
            data = loads(resp.read())
            return resp.status == 200 and len(data["results"]) == 10

        return call

    return factory


def end_to_end(args: argparse.Namespace, workdir: Path) -> list[Row]:
    dim = args.dims[0]
    rng = np.random.default_rng(1)
    data = rng.standard_normal((args.n, dim)).astype(np.float32)
    queries = rng.standard_normal((512, dim)).astype(np.float32)
    for label in ("after", "before"):
        (workdir / label).mkdir()
    servers: dict[str, Server] = {"after": Server(workdir / "after" / "data", {})}
    if args.before_root:
        servers["before"] = Server(workdir / "before" / "data", {"PYTHONPATH": str(args.before_root)})
    try:
        for server in servers.values():
            load(server, "bench", "Flat", data, 256)
            server.wait_idle()
        plans: list[tuple[Row, Server, WorkerFactory]] = []
        for label, server in servers.items():
            for fmt in ("json",) if label == "before" else FORMATS:
                bodies = [encode(fmt, {**vector_field(fmt, q), "k": 10}) for q in queries]
                row = Row(f"{label}: {fmt}", "http", 1, args.concurrency)
                plans.append((row, server, search_worker(server.port, fmt, bodies)))
        for _ in range(args.rounds):
            for row, server, factory in plans:
                closed_loop(row, factory, args.seconds, args.warmup, server)
        return [row for row, _, _ in plans]
    finally:
        for server in servers.values():
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=lambda s: [int(d) for d in s.split(",")], default=[384, 784])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--n", type=int, default=2000, help="items in the end-to-end collection")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--before-root", type=Path, default=None)
    parser.add_argument("--skip-parse", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    if not args.skip_parse:
        print(f"\nParse cost per request (µs, median of {args.repeat}; upserts of {max(10, args.repeat // 4)})")
        print(f"{'operation':<18}{'dim':>5}  {'format':<8}{'body bytes':>12}{'µs':>10}{'vs json':>9}")
        rows = parse_costs(args.dims, args.batch, args.items, args.repeat)
        base = {(op, dim): us for op, dim, fmt, _, us in rows if fmt == "json"}
        for op, dim, fmt, size, us in rows:
            print(f"{op:<18}{dim:>5}  {fmt:<8}{size:>12,}{us:>10,.0f}{base[(op, dim)] / us:>8.1f}x")
    if not args.skip_server:
        workdir = Path(tempfile.mkdtemp(prefix="ers-wire-"))
        try:
            rows_e2e = end_to_end(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\nEnd to end: POST /search, one {args.dims[0]}-d query, k=10, {args.n} items (Flat), "
              f"{args.concurrency} closed-loop clients, {args.rounds} x {args.seconds:g} s")  # fmt: skip
        print(
            f"{'row':<18}{'QPS':>8}{'rounds':>22}{'p50 ms':>8}{'p99 ms':>8}{'srv ms/call':>12}{'others':>8}{'err':>5}"
        )
        for row in rows_e2e:
            rounds = "/".join(f"{q:.0f}" for q in row.round_qps)
            server_ms = row.per_call_ms(row.server_cpu_s)
            print(f"{row.name:<18}{row.qps:>8,.0f}{rounds:>22}{row.pct(50):>8.2f}{row.pct(99):>8.2f}"
                  f"{server_ms:>12.3f}{row.other_cores:>8.2f}{row.errors:>5}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
