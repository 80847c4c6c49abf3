"""The Chroma server (PyPI ``chromadb`` 1.5.9, Rust core, hnswlib) through its REST API v2.

``chroma run --path DIR --host 127.0.0.1 --port P`` from the peers venv (``bench/setup_chroma.sh``),
telemetry off. The bench speaks plain HTTP, doing what Chroma's own Python client does:

* create: ``POST .../collections`` with ``configuration.hnsw.space`` (l2 or cosine), Chroma's
  defaults otherwise (max_neighbors 16, ef_construction 100);
* ingest: ``POST .../collections/{id}/add`` in batches of the server's ``max_batch_size``
  (``/pre-flight-checks``), embeddings as base64 little-endian float32 when the server says it
  supports that (as the client does), else JSON lists;
* search: ``POST .../collections/{id}/query`` with ``query_embeddings`` (JSON lists, as the client
  sends them), ``n_results`` k, ``include: ["distances"]``; one query per call, or ``batch`` per call;
* ef: ``PUT .../collections/{id}`` with ``new_configuration.hnsw.ef_search``, then a restart of the
  server (a running server keeps the ef it loaded the index with); the smallest of ``EF_STEPS``
  whose recall@k reaches the target (bisection) is kept for the measurements.

Ready = ``.../count`` reports all n and a query answers (at Chroma's default ef_search 100: its
recall is ``recall_at_ready``), timed from the first ``add``. Memory: the measured server (fresh,
index loaded from disk, queried) minus the first server's reading before the collection existed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from peerslib.data import Dataset, recall_at_k
from peerslib.rest import PeerProcess, RestLoad, measure_rest, new_port, row_figures

ROOT = Path(__file__).resolve().parents[2]
CHROMA_VENV = ROOT / ".bench-venvs" / "chroma"
SETUP_HINT = "run `bash bench/setup_chroma.sh` first (builds .bench-venvs/chroma: chromadb 1.5.9, hnswlib 0.8.0)"
DB = "/api/v2/tenants/default_tenant/databases/default_database"
EF_STEPS = (10, 12, 14, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)
NAME = "bench"
DEFAULT_EF = 100  # Chroma's ef_search when none is configured


def smallest_reaching(ladder: list[int], target: float, recall_at: Any) -> int:
    """The smallest ef of ``ladder`` whose recall reaches ``target`` (bisection: recall grows with ef);
    the largest when none does."""
    lo, hi, found = 0, len(ladder) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if recall_at(ladder[mid]) >= target:
            found, hi = mid, mid - 1
        else:
            lo = mid + 1
    return ladder[len(ladder) - 1 if found is None else found]


def chroma_bin(venv: Path = CHROMA_VENV) -> Path:
    path = venv / "bin" / "chroma"
    if not path.exists():
        raise RuntimeError(f"no Chroma in {venv}: {SETUP_HINT}")
    return path


def package_version(venv: Path = CHROMA_VENV) -> str:
    probe = "import importlib.metadata as m; print(m.version('chromadb'))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "unknown"


def start_chroma(work: Path, venv: Path = CHROMA_VENV) -> PeerProcess:
    port = new_port()
    cmd = [str(chroma_bin(venv)), "run", "--path", str(work / "db"), "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False", CHROMA_TELEMETRY="False")
    return PeerProcess(cmd, port, env, work / "chroma.log", "/api/v2/heartbeat")


def _ids_check(expect: int, k: int) -> Any:
    def check(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        try:
            ids = orjson.loads(body)["ids"]
        except (ValueError, KeyError, TypeError):
            return False
        return len(ids) == expect and all(len(row) == k for row in ids)

    return check


def _query_body(qs: np.ndarray, k: int) -> bytes:
    doc = {"query_embeddings": qs, "n_results": k, "include": ["distances"]}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _topk(server: PeerProcess, coll: str, queries: np.ndarray, k: int, batch: int) -> np.ndarray:
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for lo in range(0, len(queries), batch):
        r = server.request("POST", f"{coll}/query", _query_body(queries[lo : lo + batch], k))
        for j, ids in enumerate(orjson.loads(r.content)["ids"]):
            out[lo + j, : len(ids)] = [int(i) for i in ids]
    return out


def run_chroma(
    ds: Dataset, k: int, target: float, seconds: float, warmup: float, concurrencies: list[int], batch: int,
    batch_concurrency: int, work: Path, load: str,
) -> dict[str, Any]:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    server = start_chroma(work)
    try:
        server_version = orjson.loads(server.request("GET", "/api/v2/version").content)
        checks = orjson.loads(server.request("GET", "/api/v2/pre-flight-checks").content)
        time.sleep(1.0)
        mem0 = server.memory()
        space = "l2" if ds.metric == "l2" else "cosine"
        doc = {"name": NAME, "configuration": {"hnsw": {"space": space}}, "get_or_create": False}
        created = orjson.loads(server.request("POST", f"{DB}/collections", orjson.dumps(doc)).content)
        coll = f"{DB}/collections/{created['id']}"
        n, step = len(ds.base), int(checks.get("max_batch_size", 1000))
        b64 = bool(checks.get("supports_base64_encoding", False))
        started = time.monotonic()
        for lo in range(0, n, step):
            block = np.ascontiguousarray(ds.base[lo : lo + step], dtype="<f4")
            vecs: Any = [base64.b64encode(v.tobytes()).decode() for v in block] if b64 else block
            body = {"ids": [str(i) for i in range(lo, lo + len(block))], "embeddings": vecs}
            server.request("POST", f"{coll}/add", orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
        ingest_s = time.monotonic() - started
        while int(orjson.loads(server.request("GET", f"{coll}/count").content)) < n:
            time.sleep(0.1)
        server.request("POST", f"{coll}/query", _query_body(ds.queries[:1], k))
        ready_s = time.monotonic() - started
        recall_default = recall_at_k(_topk(server, coll, ds.queries, k, batch), ds.truth, k)
        # A changed ef_search reaches the running server's loaded index only after a restart (checked
        # on 1.5.9: recall stays put until then), so every ef tried is set, then the server restarted.
        sweep: dict[int, float] = {}
        current = {"ef": DEFAULT_EF}

        def recall_at(ef: int) -> float:
            nonlocal server
            update = {"new_configuration": {"hnsw": {"ef_search": ef}}}
            server.request("PUT", coll, orjson.dumps(update))
            server.stop()
            server = start_chroma(work)
            current["ef"] = ef
            sweep[ef] = recall_at_k(_topk(server, coll, ds.queries, k, batch), ds.truth, k)
            return sweep[ef]

        ladder = [e for e in EF_STEPS if e >= k]
        chosen = smallest_reaching(ladder, target, recall_at)
        if current["ef"] != chosen:
            recall_at(chosen)
        recall = sweep[chosen]
        mem1 = server.memory()
        server.wait_idle(max_seconds=60)
        singles = [_query_body(ds.queries[i : i + 1], k) for i in range(len(ds.queries))]
        blocks = [ds.queries[i : i + batch] for i in range(0, len(ds.queries) - batch + 1, batch)] or [ds.queries]
        path, ctype = f"{coll}/query", "application/json"
        single_l = RestLoad(server.port, path, singles, ctype, _ids_check(1, k))
        bodies = [_query_body(b, k) for b in blocks]
        batch_l = RestLoad(server.port, path, bodies, ctype, _ids_check(len(blocks[0]), k))
        best_single, rows = measure_rest("Chroma single", server, single_l, 1, concurrencies, seconds, warmup, load)
        best_batch, _ = measure_rest(
            "Chroma batch", server, batch_l, len(blocks[0]), [batch_concurrency], seconds, warmup, load
        )
        return {
            "system": "Chroma",
            "version": package_version(),
            "server_version": server_version,
            "params": f"max_neighbors 16, ef_construction 100 (defaults), ef_search {chosen}",
            "ef": chosen,
            "ef_sweep": {str(e): r for e, r in sweep.items()},
            "recall": recall,
            "recall_at_ready": recall_default,
            "ingest_s": ingest_s,
            "ingest_per_s": n / ingest_s,
            "ingest_encoding": "base64" if b64 else "json lists",
            "ready_s": ready_s,
            "bytes_per_vector": (mem1 - mem0) / n,
            "single": row_figures(best_single),
            "single_by_concurrency": {str(r.concurrency): row_figures(r) for r in rows},
            "batch": {**row_figures(best_batch), "batch": len(blocks[0])},
        }
    except Exception as exc:
        raise RuntimeError(f"Chroma: {exc}\nlog tail:\n{server.log_tail(1500)}") from exc
    finally:
        server.stop()
