"""Closed-loop HTTP load from ``wrk`` (C, one epoll thread) instead of Python threads.

On a 2-core machine the load generator shares the cores with the server it measures. Python's
``http.client`` threads spend ~0.1-0.2 ms of CPU per request (about a fifth of an ERS search), which a
multi-process server then cannot use; ``wrk`` spends a few µs. The request bodies are the same ones
the Python load sends; ``wrk`` checks only the status (non-2xx counts as an error), so the caller
checks the answers' content on a sample first (``verify``).

Install: ``apt-get install wrk`` (Debian; ``bench/setup_chroma.sh`` does it).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from searchlib.data import machine_busy
from searchlib.load import Row
from searchlib.server import Server

MARK = "WRKJSON "
# Requests are formatted once per thread in init(); request() only hands them out. `id` comes from
# setup() so that connections walk the body pool from different places, as the Python load does.
SCRIPT = r"""
local counter = 0
function setup(thread) thread:set("id", counter); counter = counter + 1 end
function init(args)
  local f = assert(io.open(args[1], "rb"))
  reqs = {}
  local headers = {["Content-Type"] = args[3], ["Accept"] = args[3]}
  while true do
    local line = f:read("*l")
    if not line then break end
    reqs[#reqs + 1] = wrk.format("POST", args[2], headers, f:read(tonumber(line)))
  end
  f:close()
  i = (id or 0) * 7919
end
function request()
  i = i + 1
  return reqs[(i % #reqs) + 1]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "status": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_bin() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (or run with --load python)")
    return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(
    port: int, path: str, files: tuple[Path, Path], ctype: str, connections: int, seconds: float
) -> dict[str, Any]:
    script, bodies = files
    command = [wrk_bin(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
               "-s", str(script), f"http://127.0.0.1:{port}", "--", str(bodies), path, ctype]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(MARK) :])
    return result


def wrk_loop(row: Row, port: int, path: str, bodies: list[bytes], ctype: str, seconds: float, warmup: float,
             server: Server) -> Row:  # fmt: skip
    """Like ``searchlib.load.closed_loop``: ``row.concurrency`` keep-alive connections for ``seconds``
    after a ``warmup`` run; adds calls, errors, p50/p99 and CPU (wrk's, the server's, the machine's)."""
    with tempfile.TemporaryDirectory(prefix="ers-wrk-") as tmp:
        script, data = Path(tmp) / "load.lua", Path(tmp) / "bodies"
        script.write_text(SCRIPT)
        with open(data, "wb") as f:
            for body in bodies:
                f.write(b"%d\n" % len(body) + body)
        files = (script, data)
        if warmup > 0:
            _run(port, path, files, ctype, row.concurrency, warmup)
        cpu0, srv0, busy0, t0 = _children_cpu(), server.cpu(), machine_busy(), time.perf_counter()
        result = _run(port, path, files, ctype, row.concurrency, seconds)
        cpu1, srv1, busy1, t1 = _children_cpu(), server.cpu(), machine_busy(), time.perf_counter()
    measured = result["duration_us"] / 1e6
    calls = int(result["requests"])
    errors = int(sum(result[k] for k in ("status", "connect", "read", "write", "timeout")))
    row.seconds += measured
    row.calls += calls
    row.errors += errors
    row.fixed_pct.update({50.0: result["p50_us"] / 1e3, 99.0: result["p99_us"] / 1e3})
    # wrk's start and exit fall outside its own duration but inside these readings: a few ms of 8+ s.
    scale = measured / (t1 - t0) if t1 > t0 else 1.0
    row.client_cpu_s += (cpu1 - cpu0) * scale
    row.server_cpu_s += (srv1 - srv0) * scale
    row.busy_jiffies += int((busy1[0] - busy0[0]) * scale)
    row.total_jiffies += int((busy1[1] - busy0[1]) * scale)
    row.round_qps.append(calls * row.queries_per_call / measured)
    row.tool = "wrk"
    return row
