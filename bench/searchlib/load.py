"""Closed-loop load: ``concurrency`` threads call back to back for a fixed window; a ``Row``
accumulates calls, latencies and CPU (this process, the server, the whole machine) over rounds."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import orjson

from searchlib.data import CLK_TCK, machine_busy
from searchlib.server import Server


@dataclass
class Row:
    """One measured line; ``closed_loop`` adds to it, so several short rounds make one row."""

    name: str
    path: str  # "in-process" | "api" | "http"
    queries_per_call: int
    concurrency: int  # closed-loop threads driving this row
    seconds: float = 0.0
    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_s: float = 0.0  # CPU of this benchmark process (in-process rows: the FAISS work)
    server_cpu_s: float = 0.0  # CPU of the server process
    busy_jiffies: int = 0  # whole machine, any process
    total_jiffies: int = 0
    round_qps: list[float] = field(default_factory=list)
    fixed_pct: dict[float, float] = field(default_factory=dict)  # percentiles a tool reported (wrk), no samples
    tool: str = "python"  # what generated the load: "python" threads or "wrk"

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def qps(self) -> float:
        return self.calls_per_s * self.queries_per_call

    @property
    def machine_busy(self) -> float:
        return self.busy_jiffies / self.total_jiffies if self.total_jiffies else float("nan")

    @property
    def other_cores(self) -> float:
        """Cores used by processes other than this one and the server during the row (noise)."""
        if not self.seconds:
            return float("nan")
        return max(0.0, self.busy_jiffies / CLK_TCK - self.client_cpu_s - self.server_cpu_s) / self.seconds

    def pct(self, p: float) -> float:
        if p in self.fixed_pct:
            return self.fixed_pct[p]
        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else float("nan")

    def per_call_ms(self, cpu_s: float) -> float:
        return 1e3 * cpu_s / self.calls if self.calls else float("nan")

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(
            calls_per_s=self.calls_per_s,
            qps=self.qps,
            p50_ms=self.pct(50),
            p99_ms=self.pct(99),
            machine_busy=self.machine_busy,
            other_cores=self.other_cores,
            client_cpu_ms_per_call=self.per_call_ms(self.client_cpu_s),
            server_cpu_ms_per_call=self.per_call_ms(self.server_cpu_s),
        )
        return out


# A worker factory is called once in each load thread (so per-thread state such as a connection or
# the OpenMP thread count is set in that thread) and returns the call to repeat: call(i) -> ok.
WorkerFactory = Callable[[int], Callable[[int], bool]]


def closed_loop(row: Row, factory: WorkerFactory, seconds: float, warmup: float, server: Server) -> Row:
    """``row.concurrency`` threads call back to back; calls that start in the window after ``warmup`` count."""
    concurrency = row.concurrency
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    window: dict[str, float] = {}
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    counts = [0] * concurrency
    errors = [0] * concurrency
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            call = factory(t)
        except BaseException as exc:
            failures.append(exc)
            ready.abort()
            raise
        ready.wait()
        go.wait()
        start, end = window["start"], window["end"]
        i = t * 7919 + len(row.latencies_ms)  # threads (and rounds) walk the query pool from different places
        lat = per_thread[t]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            ok = call(i)
            t1 = time.perf_counter()
            i += 1
            if t0 >= start:
                lat.append((t1 - t0) * 1e3)
                counts[t] += 1
                errors[t] += not ok

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError(f"{row.name}: a worker failed to start: {failures[:1]}") from None
    now = time.perf_counter()
    window["start"], window["end"] = now + warmup, now + warmup + seconds
    go.set()
    time.sleep(max(0.0, window["start"] - time.perf_counter()))
    cpu0, srv0, busy0 = time.process_time(), server.cpu(), machine_busy()
    time.sleep(max(0.0, window["end"] - time.perf_counter()))
    cpu1, srv1, busy1 = time.process_time(), server.cpu(), machine_busy()
    for th in threads:
        th.join()
    calls = sum(counts)
    row.seconds += seconds
    row.calls += calls
    row.errors += sum(errors)
    row.latencies_ms += [x for lat in per_thread for x in lat]
    row.client_cpu_s += cpu1 - cpu0
    row.server_cpu_s += srv1 - srv0
    row.busy_jiffies += busy1[0] - busy0[0]
    row.total_jiffies += busy1[1] - busy0[1]
    row.round_qps.append(calls * row.queries_per_call / seconds)
    return row


def faiss_worker(index: faiss.Index, blocks: list[np.ndarray], k: int, params: Any = None) -> WorkerFactory:
    def factory(_: int) -> Callable[[int], bool]:
        # OpenMP's thread count is per calling thread: set it in this one, as the server intends (ERS_THREADS=1).
        faiss.omp_set_num_threads(1)

        def call(i: int) -> bool:
            _, ids = index.search(blocks[i % len(blocks)], k, params=params)
            return bool(ids[0, 0] >= 0)

        return call

    return factory


def http_worker(port: int, method: str, path: str, bodies: list[bytes] | None, expect: int | None) -> WorkerFactory:
    """One keep-alive ``http.client`` connection per thread; checks status and result count."""

    def factory(_: int) -> Callable[[int], bool]:
        headers = {"content-type": "application/json"}
        state: dict[str, http.client.HTTPConnection] = {}

        def connect() -> http.client.HTTPConnection:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state["conn"] = conn
            return conn

        connect()

        def call(i: int) -> bool:
            conn = state["conn"]
            try:
                if bodies is None:
                    conn.request(method, path)
                else:
                    conn.request(method, path, body=bodies[i % len(bodies)], headers=headers)
                resp = conn.getresponse()
                data = orjson.loads(resp.read())
            except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
                conn.close()
                connect()
                return False
            if resp.status != 200:
                return False
            return expect is None or len(data["results"]) == expect

        return call

    return factory
