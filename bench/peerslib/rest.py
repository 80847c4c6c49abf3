"""What the REST peers share: a server subprocess measured as a process tree, and closed-loop HTTP load.

Memory is the proportional set size (PSS, ``/proc/PID/smaps_rollup``) summed over the server's process
tree: for one process it is its RSS less its share of pages mapped by others (shared libraries), and
for several processes mapping the same index file (``ers serve --workers N``) each shared page counts
once, not once per process. CPU is summed over the tree too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from searchlib.data import proc_cpu_seconds
from searchlib.load import Row, WorkerFactory, closed_loop
from searchlib.server import Server, free_port
from searchlib.wrk import wrk_loop

Check = Callable[[int, bytes], bool]  # (HTTP status, response body) -> the answer is right


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def pss_bytes(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class PeerProcess(Server):
    """A server subprocess on a free loopback port, ready when ``ready_path`` answers 200.

    A ``searchlib.server.Server`` so that ``searchlib.load.closed_loop`` drives and measures it and it
    shares ``log_tail()`` and ``stop()``; only starting differs (no ``super().__init__()``, which would
    start ``ers serve`` its own way), and CPU and memory are read over the whole process tree."""

    def __init__(
        self,
        command: list[str],
        port: int,
        env: dict[str, str],
        log_path: Path,
        ready_path: str,
        timeout: float = 120.0,
    ) -> None:
        self.port = port
        self.data_dir = log_path.parent
        self.log_path = log_path
        self.env_extra = env
        self.command = command
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if self.http.get(ready_path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} not ready in {timeout:.0f} s; log:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> float:
        total = 0.0
        for pid in tree_pids(self.proc.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += proc_cpu_seconds(pid)
        return total

    def memory(self) -> int:
        return pss_bytes(self.proc.pid)

    def stop(self) -> None:
        # The whole session (reader processes included), not only the parent.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        super().stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        headers = {"content-type": ctype, "accept": ctype} if body is not None else None
        r = self.http.request(method, path, content=body, headers=headers)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r


def new_port() -> int:
    return free_port()


def http_worker(port: int, path: str, bodies: list[bytes], ctype: str, check: Check) -> WorkerFactory:
    """One keep-alive ``http.client`` connection per load thread; every answer is read and checked."""

    def factory(_: int) -> Callable[[int], bool]:
        headers = {"content-type": ctype, "accept": ctype}
        state: dict[str, http.client.HTTPConnection] = {}

        def connect() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state["conn"] = conn

        connect()

        def call(i: int) -> bool:
            conn = state["conn"]
            try:
                conn.request("POST", path, body=bodies[i % len(bodies)], headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                connect()
                return False
            return check(resp.status, data)

        return call

    return factory


@dataclass
class RestLoad:
    """What one load row sends: POST ``bodies`` (round robin) to ``path``; ``check`` judges an answer."""

    port: int
    path: str
    bodies: list[bytes]
    ctype: str
    check: Check


def measure_rest(
    name: str, server: Server, load: RestLoad, queries_per_call: int, concurrencies: list[int], seconds: float,
    warmup: float, tool: str,
) -> tuple[Row, list[Row]]:  # fmt: skip
    """One closed-loop row per concurrency, driven by ``tool`` ("wrk" or "python");
    (the row with the most queries/s, all rows). Under wrk, 50 answers are checked from Python first."""
    factory = http_worker(load.port, load.path, load.bodies, load.ctype, load.check)
    rows = []
    for c in concurrencies:
        row = Row(name, "api", queries_per_call, c)
        if tool == "wrk":
            call = factory(0)
            bad = sum(not call(i) for i in range(min(50, len(load.bodies))))
            if bad:
                raise RuntimeError(f"{name}: {bad} of the first 50 answers are wrong")
            wrk_loop(row, load.port, load.path, load.bodies, load.ctype, seconds, warmup, server)
        else:
            closed_loop(row, factory, seconds, warmup, server)
        rows.append(row)
    return max(rows, key=lambda r: r.qps), rows


def row_figures(row: Row) -> dict[str, Any]:
    return {
        "qps": row.qps,
        "p50_ms": row.pct(50),
        "p99_ms": row.pct(99),
        "concurrency": row.concurrency,
        "errors": row.errors,
        "calls": row.calls,
        "server_cpu_ms_per_call": row.per_call_ms(row.server_cpu_s),
        "other_cores": row.other_cores,
        "client_cpu_ms_per_call": row.per_call_ms(row.client_cpu_s),
        "load": row.tool,
    }
