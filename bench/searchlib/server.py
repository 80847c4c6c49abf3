"""The server under test: a real ``ers serve`` subprocess on a free port, loaded over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import orjson

from searchlib.data import proc_cpu_seconds

ERS_BIN = Path(sys.executable).parent / "ers"
NP = orjson.OPT_SERIALIZE_NUMPY


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
        env["ERS_WORKERS"] = "1"  # one process unless a bench asks for more: cpu() measures its pid only
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
    """Create collection ``name`` and upsert ``data`` (ids "0".."n-1") in batches; returns seconds."""
    dim = data.shape[1]
    server.call("POST", "/v1/collections", orjson.dumps({"name": name, "dim": dim, "metric": "cosine", "index": index}))
    started = time.perf_counter()
    for lo in range(0, len(data), batch):
        items = [{"id": str(i), "vector": data[i]} for i in range(lo, min(len(data), lo + batch))]
        server.call("PUT", f"/v1/collections/{name}/items", orjson.dumps({"items": items}, option=NP))
    return time.perf_counter() - started


def wait_for_auto(server: Server, name: str, n: int, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until ``auto`` serves an approximate index over all ``n`` items, with no build running."""
    started = time.monotonic()
    while True:
        info: dict[str, Any] = server.call("GET", f"/v1/collections/{name}")
        if info["active_index"] != "Flat" and not info["building"] and info["count"] == n:
            return info
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{name}: auto index did not switch in {timeout:.0f} s: {info}")
        time.sleep(0.5)


def api_topk(server: Server, name: str, queries: np.ndarray, k: int, batch: int) -> np.ndarray:
    """Top-``k`` ids (as ints) for every query, fetched through ``/search/batch``."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for lo in range(0, len(queries), batch):
        body = orjson.dumps({"queries": [{"vector": q, "k": k} for q in queries[lo : lo + batch]]}, option=NP)
        res = server.call("POST", f"/v1/collections/{name}/search/batch", body)["results"]
        for j, hits in enumerate(res):
            ids = [int(h["id"]) for h in hits[:k]]
            out[lo + j, : len(ids)] = ids
    return out


def server_snapshot(data_dir: Path, collection: str, spec: str, n: int) -> faiss.Index | None:
    """The FAISS index the server published for ``collection`` if it is ``spec`` over ``n`` vectors."""
    meta_path = data_dir / "collections" / collection / "snapshot.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == spec:
            index = faiss.read_index(str(meta_path.parent / meta["file"]))
            if index.ntotal == n:
                return index
    return None
