"""Search benchmark: in-process FAISS vs the ERS REST API, on the same data, in one run.

    .venv/bin/python bench/search.py [--n 100000 --dim 128 --seconds 10 --concurrency 2 ...]

Data: ``--n`` float32 vectors of ``--dim`` dimensions drawn around ``--clusters`` Gaussian centres
(like embeddings of items in categories), L2-normalised, seeded. Queries are fresh draws from the
same distribution, never the stored vectors themselves.

Table 1, exact search (metric cosine, ``Flat`` index):
  in-process ``IndexIDMap2(IndexFlatIP)`` with ``faiss.omp_set_num_threads(1)`` in every worker
  thread (the server default, ERS_THREADS=1) vs ``POST /search`` and ``POST /search/batch`` on a
  real ``ers serve`` subprocess, single queries and batches of ``--batch`` queries, both at the same
  concurrency: ``--concurrency`` closed-loop threads (in-process: FAISS calls; API: one persistent
  keep-alive ``http.client`` connection per thread). The four rows run in ``--rounds`` interleaved
  rounds so that drift and other processes' load hit both sides of a ratio alike.
Table 1b: ``GET /healthz`` (HTTP + framework cost of a request, with http.client and httpx clients),
  ``/search`` on a 100-item collection (the whole request path with FAISS cost ~0), and an in-process
  reference batch with FAISS's BLAS threshold lowered.
Table 2, ``auto`` after it switched to IVF (ERS_AUTO_INDEX_THRESHOLD on the server env): recall@10
  against exact ground truth computed here, single-query QPS vs the exact collection, the in-process
  IVF (same spec and nprobe) for reference, and (informational) the batch endpoint on ``auto``.

Request bodies are encoded before the clock starts (orjson, float32 shortest repr, which parses
back to the identical float32); every response is read and parsed with orjson inside the clock.
The benchmark process and the server share the machine: on a small box the client threads take
CPU from the server, so every row also reports the server's and this process's CPU time per call
and the cores used by other processes ("others": noise from whatever else runs on the machine).

Exit status 0 whether the targets pass or fail (it is a benchmark, not a test); 1 if it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from indexer.threads import BLAS_THRESHOLD_MAX as BLAS_THRESHOLD

console = Console(width=176)
ERS_BIN = Path(sys.executable).parent / "ers"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NP = orjson.OPT_SERIALIZE_NUMPY

# -- data ---------------------------------------------------------------------------------------


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` L2-normalised points: a random unit centre plus Gaussian noise, sigma ``spread`` per dimension."""
    labels = rng.integers(0, len(centers), n)
    x = centers[labels] + rng.standard_normal((n, centers.shape[1]), dtype=np.float32) * np.float32(spread)
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def make_data(n: int, dim: int, clusters: int, spread: float, queries: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return clustered(rng, centers, n, spread), clustered(rng, centers, queries, spread)


# -- machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, env_extra: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir.parent / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
        env.update(env_extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.env_extra = env_extra
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(ERS_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120.0)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ers serve exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ers serve not ready in 60 s; log:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {"content-type": "application/json"} if body is not None else None
        r = self.http.request(method, path, content=body, headers=headers)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return orjson.loads(r.content) if r.content else None

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def wait_idle(self, max_seconds: float = 120.0, window: float = 1.0, busy: float = 0.05) -> float:
        """Wait until the server burns < ``busy`` of one core over ``window`` (snapshots, builds done)."""
        started = time.monotonic()
        while time.monotonic() - started < max_seconds:
            before = self.cpu()
            time.sleep(window)
            if self.cpu() - before < busy * window:
                break
        return time.monotonic() - started

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def load(server: Server, name: str, index: str, data: np.ndarray, batch: int) -> float:
    dim = data.shape[1]
    server.call("POST", "/v1/collections", orjson.dumps({"name": name, "dim": dim, "metric": "cosine", "index": index}))
    started = time.perf_counter()
    for lo in range(0, len(data), batch):
        items = [{"id": str(i), "vector": data[i]} for i in range(lo, min(len(data), lo + batch))]
        server.call("PUT", f"/v1/collections/{name}/items", orjson.dumps({"items": items}, option=NP))
    return time.perf_counter() - started


# -- closed-loop load generator -------------------------------------------------------------------


@dataclass
class Row:
    """One measured line; ``closed_loop`` adds to it, so several short rounds make one row."""

    name: str
    path: str  # "in-process" | "api" | "http"
    queries_per_call: int
    seconds: float = 0.0
    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_s: float = 0.0  # CPU of this benchmark process (in-process rows: the FAISS work)
    server_cpu_s: float = 0.0  # CPU of the server process
    busy_jiffies: int = 0  # whole machine, any process
    total_jiffies: int = 0
    round_qps: list[float] = field(default_factory=list)

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


def closed_loop(
    row: Row, factory: WorkerFactory, concurrency: int, seconds: float, warmup: float, server: Server
) -> Row:
    """``concurrency`` threads call back to back; calls that start in the window after ``warmup`` count."""
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


# -- workers --------------------------------------------------------------------------------------


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


def httpx_worker(port: int, path: str) -> WorkerFactory:
    def factory(_: int) -> Callable[[int], bool]:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def call(i: int) -> bool:
            r = client.get(path)
            orjson.loads(r.content)
            return r.status_code == 200

        return call

    return factory


# -- recall ----------------------------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


def api_topk(server: Server, name: str, queries: np.ndarray, k: int, batch: int) -> np.ndarray:
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for lo in range(0, len(queries), batch):
        body = orjson.dumps({"queries": [{"vector": q, "k": k} for q in queries[lo : lo + batch]]}, option=NP)
        res = server.call("POST", f"/v1/collections/{name}/search/batch", body)["results"]
        for j, hits in enumerate(res):
            ids = [int(h["id"]) for h in hits[:k]]
            out[lo + j, : len(ids)] = ids
    return out


# -- report ----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"


def fmt(x: float, digits: int = 0) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def new_table(title: str, caption: str = "") -> Table:
    return Table(
        title=title,
        caption=caption or None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        title_style="bold",
        caption_style="",
    )


def perf_table(title: str, rows: list[tuple[Row, Row | None, float | None]], caption: str = "") -> Table:
    table = new_table(title, caption)
    table.add_column("row", no_wrap=True)
    cols = ("q/call", "calls/s", "queries/s", "p50 ms", "p99 ms", "srv CPU/call", "bench CPU/call", "busy", "others")
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("API/in-proc", justify="right", no_wrap=True)
    table.add_column("per round", justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    for row, base, target in rows:
        ratio_text = rounds_text = target_text = ""
        if base is not None and base.qps:
            ratio = row.qps / base.qps
            per_round = [a / b for a, b in zip(row.round_qps, base.round_qps, strict=False) if b]
            ratio_text = f"{ratio:.2f}"
            rounds_text = f"{min(per_round):.2f}-{max(per_round):.2f}" if len(per_round) > 1 else ""
            target_text = "" if target is None else f">= {target:.2f} {verdict(ratio >= target)}"
        table.add_row(
            row.name + (f" [red]({row.errors} errors)[/]" if row.errors else ""),
            str(row.queries_per_call),
            fmt(row.calls_per_s),
            fmt(row.qps),
            fmt(row.pct(50), 2),
            fmt(row.pct(99), 2),
            f"{row.per_call_ms(row.server_cpu_s):.2f} ms",
            f"{row.per_call_ms(row.client_cpu_s):.2f} ms",
            f"{100 * row.machine_busy:.0f}%",
            f"{row.other_cores:.2f}",
            ratio_text,
            rounds_text,
            target_text,
        )
    return table


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="stored vectors (default 100000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters in the data")
    p.add_argument("--spread", type=float, default=0.12, help="per-dimension noise sigma around a unit centre")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per main row (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds the seconds are split into")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each round")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="client threads (default: cores)")
    p.add_argument("--batch", type=int, default=32, help="queries per batch call")
    p.add_argument("--query-pool", type=int, default=2048, help="distinct fresh queries cycled through")
    p.add_argument("--recall-queries", type=int, default=1000)
    p.add_argument("--upsert-batch", type=int, default=1000)
    p.add_argument("--auto-threshold", type=int, default=20_000, help="ERS_AUTO_INDEX_THRESHOLD for the server")
    p.add_argument("--target-ratio", type=float, default=0.80, help="API / in-process target (single and batch)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--target-speedup", type=float, default=10.0, help="auto API QPS / exact API QPS target")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server, repeatable (e.g. OMP_NUM_THREADS=1); for experiments",
    )
    p.add_argument("--skip-auto", action="store_true", help="table 1 only")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--keep", action="store_true", help="keep the throwaway data directory and server log")
    args = p.parse_args(argv)
    if args.query_pool < max(args.batch, args.recall_queries):
        p.error("--query-pool must be at least --batch and --recall-queries")
    return args


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def wait_for_auto(server: Server, name: str, n: int, timeout: float = 300.0) -> dict[str, Any]:
    started = time.monotonic()
    while True:
        info: dict[str, Any] = server.call("GET", f"/v1/collections/{name}")
        if info["active_index"] != "Flat" and not info["building"] and info["count"] == n:
            return info
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{name}: auto index did not switch in {timeout:.0f} s: {info}")
        time.sleep(0.5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    conc, k, nb = args.concurrency, args.k, args.batch
    info = machine_info()
    command = ".venv/bin/python bench/search.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
    console.rule("[bold]ERS search benchmark")
    console.print(f"command: {command}")
    console.print(f"date:    {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    console.print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['mem_gib']} GiB RAM, Linux {info['kernel']}; "
        f"Python {info['python']}, faiss {info['faiss']}, numpy {info['numpy']}"
    )
    console.print(
        f"data:    {args.n:,} x {args.dim} float32, {args.clusters} Gaussian clusters (sigma {args.spread}), "
        f"L2-normalised, seed {args.seed}; {args.query_pool} fresh queries from the same distribution; k={k}"
    )
    console.print(
        f"load:    {conc} closed-loop threads on every row; main rows: {args.seconds:g} s measured in {args.rounds} "
        f"interleaved rounds, {args.warmup:g} s warm-up each; API client: http.client, one keep-alive connection "
        "per thread, bodies pre-encoded, responses parsed (orjson)"
    )

    t = time.perf_counter()
    data, queries = make_data(args.n, args.dim, args.clusters, args.spread, args.query_pool, args.seed)
    faiss.omp_set_num_threads(1)
    # The same FAISS settings as the server (indexer.threads), so both sides run the same kernels.
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    flat.add_with_ids(data, np.arange(args.n, dtype=np.int64))
    singles = [queries[i : i + 1] for i in range(len(queries))]
    blocks = [queries[i : i + nb] for i in range(0, len(queries) - nb + 1, nb)]
    single_bodies = [orjson.dumps({"vector": q, "k": k}, option=NP) for q in queries]
    batch_bodies = [orjson.dumps({"queries": [{"vector": q, "k": k} for q in b]}, option=NP) for b in blocks]
    console.print(f"prepared data, in-process index and request bodies in {time.perf_counter() - t:.1f} s")

    tmp = Path(tempfile.mkdtemp(prefix="ers-bench-", dir="/tmp"))
    server_env = {"ERS_AUTO_INDEX_THRESHOLD": str(args.auto_threshold)}
    for kv in args.server_env:
        key, _, value = kv.partition("=")
        server_env[key] = value
    results: dict[str, Any] = {"command": command, "machine": info, "args": {**vars(args), "json": str(args.json)}}
    server: Server | None = None
    try:
        server = Server(tmp / "data", server_env)
        srv = server
        console.print(f"server:  ers serve on 127.0.0.1:{server.port}, env {server_env}, data in {tmp}")
        # auto first: its IVF builds in the background while the exact collection loads.
        if not args.skip_auto:
            secs = load(server, "bench_auto", "auto", data, args.upsert_batch)
            console.print(f"loaded {args.n:,} items into bench_auto (index auto) in {secs:.1f} s")
        secs = load(server, "bench_flat", "Flat", data, args.upsert_batch)
        console.print(f"loaded {args.n:,} items into bench_flat (index Flat) in {secs:.1f} s")
        load(server, "bench_tiny", "Flat", data[:100], args.upsert_batch)
        auto_info: dict[str, Any] = {}
        if not args.skip_auto:
            t = time.perf_counter()
            auto_info = wait_for_auto(server, "bench_auto", args.n)
            console.print(
                f"bench_auto serves {auto_info['active_index']} (nprobe {auto_info['nprobe']}), "
                f"waited {time.perf_counter() - t:.1f} s after the loads"
            )
        console.print(f"server idle after {server.wait_idle():.1f} s (background snapshots done)")
        b0, c0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        b1 = machine_busy()
        others = (b1[0] - b0[0]) / CLK_TCK / (time.monotonic() - c0)
        results["idle_machine_busy_cores"] = others
        if others > 0.1:
            console.print(
                f"[bold yellow]warning:[/] other processes use {others:.2f} cores before the measurements; "
                "the numbers below are disturbed (see the 'others' column)"
            )
        flat_info = server.call("GET", "/v1/collections/bench_flat")
        if flat_info["active_index"] != "Flat" or flat_info["count"] != args.n:
            raise RuntimeError(f"bench_flat is not an exact index over {args.n} items: {flat_info}")

        def interleaved(pairs: list[tuple[Row, WorkerFactory]], seconds: float) -> None:
            for r in range(args.rounds):
                for row, factory in pairs:
                    console.print(f"  round {r + 1}/{args.rounds}: {row.name}")
                    closed_loop(row, factory, conc, seconds / args.rounds, args.warmup, srv)

        def once(row: Row, factory: WorkerFactory, seconds: float) -> Row:
            console.print(f"  {row.name}")
            return closed_loop(row, factory, conc, seconds, args.warmup, srv)

        # -- table 1 -------------------------------------------------------------------------
        port = server.port
        base = "/v1/collections"
        ip_single = Row("in-process Flat, single", "in-process", 1)
        api_single = Row("REST /search, single", "api", 1)
        ip_batch = Row(f"in-process Flat, batch {nb}", "in-process", nb)
        api_batch = Row(f"REST /search/batch {nb}", "api", nb)
        interleaved(
            [
                (ip_single, faiss_worker(flat, singles, k)),
                (api_single, http_worker(port, "POST", f"{base}/bench_flat/search", single_bodies, k)),
                (ip_batch, faiss_worker(flat, blocks, k)),
                (api_batch, http_worker(port, "POST", f"{base}/bench_flat/search/batch", batch_bodies, nb)),
            ],
            args.seconds,
        )
        short = max(1.0, args.seconds / 4)
        extra = [
            once(
                Row("REST GET /healthz (http.client)", "http", 1),
                http_worker(port, "GET", "/healthz", None, None),
                short,
            ),
            once(Row("REST GET /healthz (httpx)", "http", 1), httpx_worker(port, "/healthz"), short),
            once(
                Row("REST /search, 100-item coll.", "api", 1),
                http_worker(port, "POST", f"{base}/bench_tiny/search", single_bodies, k),
                short,
            ),
            once(
                Row(f"REST /search/batch {nb}, 100-item", "api", nb),
                http_worker(port, "POST", f"{base}/bench_tiny/search/batch", batch_bodies, nb),
                short,
            ),
        ]
        # Reference, not a target: with FAISS's default BLAS threshold (128000 = nq * dim), batches of 32
        # are scanned query by query; ERS lowers it (indexer.threads.BLAS_THRESHOLD) for both sides above.
        default_threshold = 128_000
        faiss.cvar.distance_compute_blas_threshold = default_threshold
        try:
            extra.append(
                once(
                    Row(f"in-process Flat, batch {nb}, no BLAS*", "in-process", nb),
                    faiss_worker(flat, blocks, k),
                    short,
                )
            )
        finally:
            faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
        results["faiss_blas_threshold_default"] = default_threshold
        t1_rows: list[tuple[Row, Row | None, float | None]] = [
            (ip_single, None, None),
            (api_single, ip_single, args.target_ratio),
            (ip_batch, None, None),
            (api_batch, ip_batch, args.target_ratio),
        ]
        results["table1"] = [r.summary() for r, _, _ in t1_rows]
        results["table1_overhead"] = [r.summary() for r in extra]
        results["table1_ratios"] = {"single": api_single.qps / ip_single.qps, "batch": api_batch.qps / ip_batch.qps}

        # -- table 2 -------------------------------------------------------------------------
        t2: dict[str, Any] = {}
        if not args.skip_auto:
            rq = queries[: args.recall_queries]
            _, truth = flat.search(rq, k)  # exact: inner product of normalised vectors = cosine
            t2["recall_auto"] = recall_at_k(api_topk(server, "bench_auto", rq, k, nb), truth, k)
            t2["recall_flat"] = recall_at_k(api_topk(server, "bench_flat", rq, k, nb), truth, k)
            # In-process reference: the spec and nprobe the server reports, built the way the server builds it.
            spec, nprobe = auto_info["active_index"], int(auto_info["nprobe"] or 1)
            t = time.perf_counter()
            faiss.omp_set_num_threads(conc)
            ivf_index = faiss.index_factory(args.dim, spec, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(ivf_index)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            ivf_index.train(data)
            ivf_index.add_with_ids(data, np.arange(args.n, dtype=np.int64))
            faiss.omp_set_num_threads(1)
            ivf.nprobe = nprobe
            t2["ivf_build_seconds"] = time.perf_counter() - t
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            _, ivf_found = ivf_index.search(rq, k, params=params)
            t2["recall_ivf_inprocess"] = recall_at_k(ivf_found, truth, k)
            api_auto = Row(f"REST /search, auto ({spec}/{nprobe})", "api", 1)
            ip_ivf = Row(f"in-process {spec}/{nprobe}, single", "in-process", 1)
            interleaved(
                [
                    (api_auto, http_worker(port, "POST", f"{base}/bench_auto/search", single_bodies, k)),
                    (ip_ivf, faiss_worker(ivf_index, singles, k, params)),
                ],
                args.seconds,
            )
            # Informational: the same IVF index behind /search/batch, where per-request overhead is shared.
            api_auto_batch = once(
                Row(f"REST /search/batch {nb}, auto", "api", nb),
                http_worker(port, "POST", f"{base}/bench_auto/search/batch", batch_bodies, nb),
                short,
            )
            t2.update(
                active_index=spec,
                nprobe=nprobe,
                recall_queries=len(rq),
                speedup_api=api_auto.qps / api_single.qps,
                speedup_inprocess=ip_ivf.qps / ip_single.qps,
                speedup_api_batch=api_auto_batch.qps / api_batch.qps,
                rows=[r.summary() for r in (api_auto, ip_ivf, api_auto_batch)],
            )
            results["table2"] = t2

        # -- report --------------------------------------------------------------------------
        console.rule("[bold]results")
        console.print(
            perf_table(
                f"Table 1 - exact search (Flat, cosine), {args.n:,} x {args.dim}, k={k}, concurrency {conc}",
                t1_rows,
                f"in-process: IndexIDMap2(IndexFlatIP), {conc} threads, faiss.omp_set_num_threads(1) in each; "
                f"API: {conc} http.client threads, keep-alive.\n"
                "API/in-proc = queries/s ratio (per round: the range over the interleaved rounds). "
                "srv CPU/call: server process CPU time per call; bench CPU/call: this process (in-process rows: "
                f"the FAISS work; API rows: the client); busy: all {info['cores']} cores, any process;\n"
                "others: cores used by other processes (noise, should be ~0).",
            )
        )
        console.print(
            perf_table(
                f"Table 1b - where API time goes (same server, same concurrency, {short:g} s each)",
                [(r, None, None) for r in extra],
                "/healthz: HTTP + uvicorn + FastAPI/middleware only. 100-item collection: the whole /search "
                "path (JSON, validation, locks, response) with FAISS cost ~0.\n"
                f"* in-process reference with FAISS's default distance_compute_blas_threshold "
                f"(ERS sets {BLAS_THRESHOLD}; default {default_threshold}: BLAS only when queries*dim >= it).",
            )
        )
        if t2:
            table = new_table(
                f"Table 2 - auto after the switch ({t2['active_index']}, nprobe {t2['nprobe']}), "
                f"ERS_AUTO_INDEX_THRESHOLD={args.auto_threshold}, concurrency {conc}",
                f"recall@{k}: {len(rq)} fresh queries vs exact top-{k} computed here (faiss IndexFlatIP, ids 1:1), "
                "results fetched through /search/batch.\nspeed-up: single-query queries/s through the API, "
                "auto vs the exact collection of table 1, same run.",
            )
            table.add_column("measure", no_wrap=True)
            table.add_column("value", justify="right", no_wrap=True)
            table.add_column("target", no_wrap=True)
            ok_recall = t2["recall_auto"] >= args.target_recall
            ok_speed = t2["speedup_api"] >= args.target_speedup
            table.add_row(
                f"recall@{k}, REST, bench_auto",
                f"{t2['recall_auto']:.4f}",
                f">= {args.target_recall:.2f} {verdict(ok_recall)}",
            )
            table.add_row(f"recall@{k}, REST, bench_flat (sanity: exact)", f"{t2['recall_flat']:.4f}", "")
            table.add_row(
                f"recall@{k}, in-process {t2['active_index']} nprobe {t2['nprobe']}",
                f"{t2['recall_ivf_inprocess']:.4f}",
                "",
            )
            table.add_row("queries/s, REST single, bench_flat (exact)", fmt(api_single.qps), "")
            table.add_row("queries/s, REST single, bench_auto", fmt(api_auto.qps), "")
            table.add_row(
                "speed-up auto / exact, REST",
                f"{t2['speedup_api']:.1f}x",
                f">= {args.target_speedup:g}x {verdict(ok_speed)}",
            )
            table.add_row("queries/s, in-process single, Flat", fmt(ip_single.qps), "")
            table.add_row(f"queries/s, in-process single, {t2['active_index']}/{t2['nprobe']}", fmt(ip_ivf.qps), "")
            table.add_row("speed-up IVF / Flat, in-process", f"{t2['speedup_inprocess']:.1f}x", "")
            table.add_row("REST / in-process, IVF single", f"{api_auto.qps / ip_ivf.qps:.2f}", "")
            table.add_row(f"queries/s, REST batch {nb}, bench_flat (table 1)", fmt(api_batch.qps), "")
            table.add_row(f"queries/s, REST batch {nb}, bench_auto", fmt(api_auto_batch.qps), "")
            table.add_row(f"speed-up auto / exact, REST batch {nb} (info)", f"{t2['speedup_api_batch']:.1f}x", "")
            console.print(table)
            console.print(
                perf_table(
                    "Table 2b - the rows behind table 2",
                    [
                        (api_single, None, None),
                        (api_auto, ip_ivf, None),
                        (ip_single, None, None),
                        (ip_ivf, None, None),
                        (api_auto_batch, None, None),
                    ],
                )
            )
        return results
    except Exception:
        if server is not None:
            console.print(f"[yellow]server log tail:[/]\n{server.log_tail(2000)}")
        raise
    finally:
        if server is not None:
            server.stop()
            if server.proc.returncode not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM
                console.print(f"[yellow]server exited with {server.proc.returncode}; log tail:[/]\n{server.log_tail()}")
        if args.keep:
            console.print(f"kept {tmp} (server log: {tmp / 'server.log'})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _sigterm_as_exit():
            results = run(args)
    except Exception:
        console.print("[bold red]benchmark could not run:[/]")
        console.print(traceback.format_exc())
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
