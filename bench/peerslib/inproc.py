"""hnswlib and faiss HNSW in-process: the ceiling for the same data and recall.

Each library runs in a subprocess of its own (this file as a script): hnswlib from the peers venv
(``bench/setup_chroma.sh``; it is no dependency of ERS), faiss from ERS's venv. A subprocess per run
keeps the memory reading clean: bytes per vector = the process's RSS after the build minus before it
(the data arrays are loaded before the first reading), divided by n.

The script imports only numpy and the library. It reads ``base.npy``, ``queries.npy`` and
``truth.npy`` from a directory and prints one JSON object:

* build with every core (hnswlib ``add_items(num_threads=cores)``, faiss OpenMP), M and efConstruction
  as given; ingest rate = n / build seconds;
* ef: the smallest of ``EF_STEPS`` (>= k) whose recall@k over all queries reaches the target;
* time to ready = build seconds + the first query at that ef;
* single queries: one thread, one query per call, back to back for ``seconds`` (the issue's
  "1 thread" row), with per-call latency; batches: ``batch`` queries per call on every core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EF_STEPS = (10, 12, 14, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)
M, EF_CONSTRUCTION = 16, 200


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


class _Hnswlib:
    def __init__(self, dim: int, metric: str, n: int, cores: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=dim)  # cosine: unit vectors
        self.index.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION, random_seed=100)
        self.cores = cores
        self.version = str(getattr(hnswlib, "__version__", "0.8.0"))

    def build(self, base: np.ndarray) -> None:
        self.index.add_items(base, np.arange(len(base)), num_threads=self.cores)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        return np.asarray(self.index.knn_query(q, k=k, num_threads=threads)[0])


class _FaissHnsw:
    def __init__(self, dim: int, metric: str, n: int, cores: int) -> None:
        import faiss

        self.faiss = faiss
        kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(dim, M, kind)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.cores = cores
        self.version = str(faiss.__version__)

    def build(self, base: np.ndarray) -> None:
        self.faiss.omp_set_num_threads(self.cores)
        self.index.add(base)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, q: np.ndarray, k: int, threads: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(threads)
        return np.asarray(self.index.search(q, k)[1])


def _timed_loop(call: Any, calls: list[np.ndarray], seconds: float) -> tuple[int, list[float]]:
    """Back-to-back calls for ``seconds`` after a short warm-up; (calls made, latencies in ms)."""
    for block in calls[: min(len(calls), 20)]:
        call(block)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        call(calls[i % len(calls)])
        lat.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return i, lat


def measure(lib: str, folder: Path, metric: str, k: int, target: float, seconds: float, batch: int) -> dict[str, Any]:
    base = np.load(folder / "base.npy")
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    cores = len(os.sched_getaffinity(0))
    n, dim = base.shape
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = (_Hnswlib if lib == "hnswlib" else _FaissHnsw)(dim, metric, n, cores)
    index.build(base)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    sweep: dict[int, float] = {}
    chosen = None
    for ef in (e for e in EF_STEPS if e >= k):
        index.set_ef(ef)
        sweep[ef] = _recall(index.search(queries, k, cores), truth, k)
        if sweep[ef] >= target:
            chosen = ef
            break
    chosen = chosen or max(sweep)
    index.set_ef(chosen)
    t1 = time.perf_counter()
    index.search(queries[:1], k, 1)
    ready_s = build_s + (time.perf_counter() - t1)
    singles = [queries[i : i + 1] for i in range(len(queries))]
    calls, lat = _timed_loop(lambda q: index.search(q, k, 1), singles, seconds)
    blocks = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)] or [queries]
    bcalls, blat = _timed_loop(lambda q: index.search(q, k, cores), blocks, seconds)
    return {
        "library": lib,
        "version": index.version,
        "params": f"M {M}, efConstruction {EF_CONSTRUCTION}, ef {chosen}",
        "ef": chosen,
        "ef_sweep": {str(e): r for e, r in sweep.items()},
        "recall": sweep[chosen],
        "n": n,
        "cores": cores,
        "build_s": build_s,
        "ingest_per_s": n / build_s,
        "ready_s": ready_s,
        "bytes_per_vector": (rss1 - rss0) / n,
        "single": {
            "qps": calls / seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "threads": 1,
        },
        "batch": {
            "qps": bcalls * len(blocks[0]) / seconds,
            "p50_ms": float(np.percentile(blat, 50)),
            "p99_ms": float(np.percentile(blat, 99)),
            "threads": cores,
            "batch": len(blocks[0]),
        },
    }


def run_inproc(
    python: Path, lib: str, folder: Path, metric: str, k: int, target: float, seconds: float, batch: int
) -> dict[str, Any]:
    """This file as a script under ``python``; its JSON result."""
    cmd = [str(python), __file__, lib, str(folder), metric, str(k), str(target), str(seconds), str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} in-process run failed ({python}):\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def save_arrays(folder: Path, base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth)


if __name__ == "__main__":
    lib_, folder_, metric_, k_, target_, seconds_, batch_ = sys.argv[1:8]
    if lib_ not in ("hnswlib", "faiss"):
        raise SystemExit(f"unknown library '{lib_}' (hnswlib, faiss)")
    out = measure(lib_, Path(folder_), metric_, int(k_), float(target_), float(seconds_), int(batch_))
    print(json.dumps(out))
