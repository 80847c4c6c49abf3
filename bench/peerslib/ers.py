"""ERS through its REST API: one ``ers serve`` subprocess per (data set, index, workers), on loopback.

Per run: the server starts on an empty data directory with ``ERS_TARGET_RECALL`` = the target (ERS's
own tuning picks nprobe / efSearch from it; the bench never sets them), the collection is created
with the index under test, the base is upserted in batches (ids "0".."n-1"), and the bench waits until
the collection serves its final index (all items indexed, no build running, the same index on three
polls 0.5 s apart). Then recall@k through ``/search/batch``, the memory reading, and closed-loop
single queries (``/search``, best of the client concurrencies) and batches (``/search/batch``).

Wire formats (``--wire``): ``json`` sends vectors as JSON lists; ``b64`` as ``vector_b64``
(little-endian float32, base64) in the same JSON bodies; ``msgpack`` sends the same documents as
``application/msgpack`` with vectors as ``bin`` of little-endian float32 bytes, and asks for msgpack
answers (``Accept``); see docs/api_formats.md. A server that does not accept a format fails
the run with its HTTP error, never silently falls back.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson

from peerslib.data import Dataset, recall_at_k
from peerslib.rest import PeerProcess, RestLoad, measure_rest, new_port, row_figures

ERS_BIN = Path(sys.executable).parent / "ers"
WIRES = ("json", "b64", "msgpack")
COLLECTION = "bench"


@dataclass
class ErsOptions:
    k: int
    target: float
    seconds: float
    warmup: float
    concurrencies: list[int]
    batch: int
    batch_concurrency: int
    upsert_batch: int
    wire: str
    load: str  # load generator of the REST rows: "wrk" or "python"
    server_env: dict[str, str] = field(default_factory=dict)


def serve_has_workers() -> bool:
    """Whether this tree's ``ers serve`` takes ``--workers`` (issue 17, part 4)."""
    out = subprocess.run([str(ERS_BIN), "serve", "--help"], capture_output=True, text=True, timeout=60)
    return "--workers" in out.stdout


def _vector_field(wire: str, v: np.ndarray) -> dict[str, Any]:
    if wire == "b64":
        return {"vector_b64": base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()}
    if wire == "msgpack":
        return {"vector": np.ascontiguousarray(v, dtype="<f4").tobytes()}  # a msgpack bin
    return {"vector": v}


def encode(wire: str, doc: dict[str, Any]) -> tuple[bytes, str]:
    """(body, content type) of ``doc`` in ``wire``."""
    if wire == "msgpack":
        return msgpack.packb(doc), "application/msgpack"
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"


def decode(body: bytes) -> Any:
    if body[:1] in (b"{", b"["):
        return orjson.loads(body)
    return msgpack.unpackb(body)


def search_doc(wire: str, q: np.ndarray, k: int) -> dict[str, Any]:
    # Ids and scores only, as the Chroma rows ask for (``include: ["distances"]``).
    return {**_vector_field(wire, q), "k": k, "with_payload": False}


def batch_doc(wire: str, qs: np.ndarray, k: int) -> dict[str, Any]:
    return {"queries": [search_doc(wire, q, k) for q in qs]}


def _results_check(expect: int) -> Any:
    def check(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        try:
            return len(decode(body)["results"]) == expect
        except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            return False

    return check


def tuned_fields(info: dict[str, Any]) -> dict[str, Any]:
    """What ERS's tuning chose and measured, as its collection info reports it (nprobe, efSearch,
    recall: whichever of these the server's version has)."""
    words = ("nprobe", "ef_search", "efsearch", "recall")
    return {k: v for k, v in info.items() if any(w in k.lower() for w in words) and v is not None}


def start_ers(work: Path, workers: int | None, options: ErsOptions) -> PeerProcess:
    """``ers serve`` on a free port; ``workers`` None: the flag is not passed (a tree without it)."""
    port = new_port()
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
    env.update(PYTHONUNBUFFERED="1", ERS_TARGET_RECALL=str(options.target), **options.server_env)
    cmd = [str(ERS_BIN), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return PeerProcess(cmd, port, env, work / "server.log", "/readyz")


def _wait_final(server: PeerProcess, n: int, timeout: float = 1800.0) -> tuple[dict[str, Any], float]:
    """(collection info, monotonic time the final state was first seen): all ``n`` indexed, no build
    running, and the same active index on three polls in a row."""
    started = time.monotonic()
    streak: list[tuple[str, float]] = []
    while True:
        info: dict[str, Any] = orjson.loads(server.request("GET", f"/v1/collections/{COLLECTION}").content)
        now = time.monotonic()
        if info["count"] == n and info["indexed"] == n and not info["building"]:
            if streak and streak[-1][0] != info["active_index"]:
                streak = []
            streak.append((info["active_index"], now))
            if len(streak) >= 3:
                return info, streak[0][1]
        else:
            streak = []
        if now - started > timeout:
            raise RuntimeError(f"ERS collection not ready in {timeout:.0f} s: {info}")
        time.sleep(0.5)


def api_topk(server: PeerProcess, ds: Dataset, options: ErsOptions) -> np.ndarray:
    out = np.full((len(ds.queries), options.k), -1, dtype=np.int64)
    path = f"/v1/collections/{COLLECTION}/search/batch"
    for lo in range(0, len(ds.queries), options.batch):
        body, ctype = encode(options.wire, batch_doc(options.wire, ds.queries[lo : lo + options.batch], options.k))
        for j, hits in enumerate(decode(server.request("POST", path, body, ctype).content)["results"]):
            ids = [int(h["id"]) for h in hits[: options.k]]
            out[lo + j, : len(ids)] = ids
    return out


def run_ers(
    ds: Dataset, index: str, workers: int | None, options: ErsOptions, work: Path, reuse: Path | None = None
) -> dict[str, Any]:
    """One ERS row. ``reuse``: a finished run's work directory, whose data directory this run serves
    (copied) instead of ingesting: the same index and tuned knob, so that worker counts compare at
    equal work; ingest is then not measured, and "ready" is the restart's, start to first answer."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "data", ignore_errors=True)
    server = start_ers(work, workers, options)
    try:
        time.sleep(1.0)  # let start-up settle before the baseline reading
        mem0 = server.memory()
        n, wire = len(ds.base), options.wire
        ingest_s: float | None = None
        if reuse is None:
            doc = {"name": COLLECTION, "dim": ds.dim, "metric": ds.metric, "index": index}
            server.request("POST", "/v1/collections", orjson.dumps(doc))
            started = time.monotonic()
            for lo in range(0, n, options.upsert_batch):
                hi = min(n, lo + options.upsert_batch)
                items = [{"id": str(i), **_vector_field(wire, ds.base[i])} for i in range(lo, hi)]
                body, ctype = encode(wire, {"items": items})
                server.request("PUT", f"/v1/collections/{COLLECTION}/items", body, ctype)
            ingest_s = time.monotonic() - started
        else:  # the same server setup on the finished data directory (the empty one gave the baseline)
            server.stop()
            shutil.rmtree(work / "data")
            shutil.copytree(reuse / "data", work / "data")
            started = time.monotonic()
            server = start_ers(work, workers, options)
        info, final_at = _wait_final(server, n)
        one, ctype = encode(wire, search_doc(wire, ds.queries[0], options.k))
        t = time.monotonic()
        server.request("POST", f"/v1/collections/{COLLECTION}/search", one, ctype)
        ready_s = final_at - started + (time.monotonic() - t)
        recall = recall_at_k(api_topk(server, ds, options), ds.truth, options.k)
        mem1 = server.memory()
        server.wait_idle(max_seconds=60)
        singles = [encode(wire, search_doc(wire, q, options.k))[0] for q in ds.queries]
        nb = options.batch
        blocks = [ds.queries[i : i + nb] for i in range(0, len(ds.queries) - nb + 1, nb)] or [ds.queries]
        batches = [encode(wire, batch_doc(wire, b, options.k))[0] for b in blocks]
        base = f"/v1/collections/{COLLECTION}"
        single_l = RestLoad(server.port, f"{base}/search", singles, ctype, _results_check(options.k))
        batch_l = RestLoad(server.port, f"{base}/search/batch", batches, ctype, _results_check(len(blocks[0])))
        label = f"ERS {index} w{workers or 1}"
        best_single, single_rows = measure_rest(
            f"{label} single", server, single_l, 1, options.concurrencies, options.seconds, options.warmup,
            options.load,
        )  # fmt: skip
        best_batch, _ = measure_rest(
            f"{label} batch", server, batch_l, len(blocks[0]), [options.batch_concurrency], options.seconds,
            options.warmup, options.load,
        )  # fmt: skip
        return {
            "system": "ERS",
            "index": index,
            "workers": workers or 1,
            "wire": wire,
            "info": info,
            "active_index": info["active_index"],
            "tuned": tuned_fields(info),
            "recall": recall,
            "ingest_s": ingest_s,
            "ingest_per_s": None if ingest_s is None else n / ingest_s,
            "served_from": None if reuse is None else reuse.name,
            "ready_s": ready_s,
            "bytes_per_vector": (mem1 - mem0) / n,
            "single": row_figures(best_single),
            "single_by_concurrency": {str(r.concurrency): row_figures(r) for r in single_rows},
            "batch": {**row_figures(best_batch), "batch": len(blocks[0])},
        }
    except Exception as exc:
        raise RuntimeError(f"ERS {index} (workers {workers or 1}, wire {options.wire}): {exc}\n"
                           f"server log tail:\n{server.log_tail(1500)}") from exc  # fmt: skip
    finally:
        server.stop()
