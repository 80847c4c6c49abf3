"""Single-query REST search QPS of ``ers serve --workers 1`` against ``--workers W`` over one data directory.

    .venv/bin/python bench/workers_qps.py --n 60000 --dim 784 --concurrency 8 --seconds 10

The collection is loaded once (by the single process), its index built and snapshotted; then each
configuration serves the same data directory in turn (1, W, then 1 again to show drift on a shared
machine) and ``concurrency`` closed-loop clients, one keep-alive connection each, send one query per
request. Each connection is accepted by one process; the split of connections is printed with the QPS
(``X-ERS-Worker``), since the kernel decides it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from searchlib.data import machine_info, make_data, proc_cpu_seconds
from searchlib.load import Row, WorkerFactory, closed_loop
from searchlib.server import Server, load
from searchlib.wrk import wrk_bin, wrk_loop

NAME = "bench"


def search_worker(port: int, bodies: list[bytes], k: int, served: collections.Counter[str]) -> WorkerFactory:
    """One keep-alive connection per thread; counts which process accepted it."""

    def factory(_: int) -> Callable[[int], bool]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = [True]

        def call(i: int) -> bool:
            conn.request("POST", f"/v1/collections/{NAME}/search", body=bodies[i % len(bodies)],
                         headers={"content-type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            data = orjson.loads(resp.read())
            if first[0]:
                served[str(resp.getheader("x-ers-worker") or "single").split(" ")[0]] += 1
                first[0] = False
            return resp.status == 200 and len(data["results"]) == k

        return call

    return factory


def wait_index(server: Server, n: int, timeout: float = 600.0) -> dict[str, object]:
    started = time.monotonic()
    while True:
        info: dict[str, object] = server.call("GET", f"/v1/collections/{NAME}")
        if info["active_index"] != "Flat" and not info["building"] and info["count"] == n:
            return info
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"index not built in {timeout:.0f} s: {info}")
        time.sleep(0.5)


def wait_reader(server: Server, body: bytes, timeout: float = 120.0) -> None:
    """Until a fresh connection is answered by a reader (it started and loaded the snapshot)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", f"/v1/collections/{NAME}/search", body=body,
                     headers={"content-type": "application/json", "connection": "close"})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if (resp.getheader("x-ers-worker") or "").startswith("reader"):
            return
        time.sleep(0.1)
    raise RuntimeError("no reader answered")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor's writer and readers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += process_tree(int(child))
    return found


class ServerTree(Server):
    """CPU of the whole ``ers serve`` process tree, not only of the supervisor."""

    def cpu(self) -> float:
        total = 0.0
        for pid in process_tree(self.proc.pid):
            with contextlib.suppress(OSError):  # gone meanwhile
                total += proc_cpu_seconds(pid)
        return total


def measure(data_dir: Path, workers: int, bodies: list[bytes], args: argparse.Namespace) -> dict[str, object]:
    server = ServerTree(data_dir, {"ERS_WORKERS": str(workers)})
    try:
        if workers > 1:
            wait_reader(server, bodies[0])
        served: collections.Counter[str] = collections.Counter()
        row = Row(f"workers={workers}", "http", 1, args.concurrency)
        factory = search_worker(server.port, bodies, args.k, served)
        if args.load == "wrk":  # answers checked from Python first; wrk itself sees only the status
            check = factory(0)
            if not all(check(i) for i in range(50)):
                raise RuntimeError("wrong answers before the wrk run")
            wrk_loop(row, server.port, f"/v1/collections/{NAME}/search", bodies, "application/json", args.seconds,
                     args.warmup, server)  # fmt: skip
        else:
            closed_loop(row, factory, args.seconds, args.warmup, server)
        return {
            "server_cores": round(row.server_cpu_s / row.seconds, 2),
            "client_cores": round(row.client_cpu_s / row.seconds, 2),
            "other_cores": round(row.other_cores, 2),  # other processes on the machine: noise
            "server_cpu_ms_per_query": round(row.per_call_ms(row.server_cpu_s), 3),
            "workers": workers,
            "qps": round(row.qps, 1),
            "p50_ms": round(row.pct(50), 2),
            "p99_ms": round(row.pct(99), 2),
            "errors": row.errors,
            "connections_by_process": dict(served),
            "load": row.tool,
            "machine_busy": round(row.machine_busy, 3),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--index", default="IVF256,Flat", help="the collection's index spec")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk",
                        help="load generator: wrk (C; apt-get install wrk) or Python threads")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    if args.load == "wrk":
        wrk_bin()  # a clear error before loading anything when it is missing
    work = args.work or Path(tempfile.mkdtemp(prefix="ers-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    data, queries = make_data(args.n, args.dim, clusters=100, spread=0.3, queries=1000, seed=0)
    bodies = [orjson.dumps({"vector": q.tolist(), "k": args.k}) for q in queries]
    server = Server(data_dir, {"ERS_WORKERS": "1"})
    try:
        seconds = load(server, NAME, args.index, data, 1000)
        info = wait_index(server, args.n)
        print(f"loaded {args.n} x {args.dim} in {seconds:.0f} s: {info['active_index']} nprobe {info['nprobe']}")
    finally:
        server.stop()  # its final snapshot is what every configuration below opens
    rows = [measure(data_dir, w, bodies, args) for w in (1, args.workers, 1)]
    print(json.dumps({"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                     indent=1))  # fmt: skip
    first, multi, last = rows
    base = (float(first["qps"]) + float(last["qps"])) / 2  # type: ignore[arg-type]
    print(f"--workers {args.workers}: {float(multi['qps']) / base:.2f}x --workers 1")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
