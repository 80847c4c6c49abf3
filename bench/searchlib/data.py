"""Benchmark data, recall, and readings of the machine (from /proc)."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import faiss
import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` L2-normalised points: a random unit centre plus Gaussian noise, sigma ``spread`` per dimension."""
    labels = rng.integers(0, len(centers), n)
    x = centers[labels] + rng.standard_normal((n, centers.shape[1]), dtype=np.float32) * np.float32(spread)
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def make_data(n: int, dim: int, clusters: int, spread: float, queries: int, seed: int) -> tuple[np.ndarray, ...]:
    """(stored vectors, fresh queries from the same distribution)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return clustered(rng, centers, n, spread), clustered(rng, centers, queries, spread)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


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


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


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


def build_ivf(spec: str, nprobe: int, data: np.ndarray, threads: int) -> faiss.Index:
    """The index ``auto`` chose, built the way the server builds it (ids native, hash-table direct map)."""
    faiss.omp_set_num_threads(threads)
    index = faiss.index_factory(data.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.train(data)
    index.add_with_ids(data, np.arange(len(data), dtype=np.int64))
    faiss.omp_set_num_threads(1)
    ivf.nprobe = nprobe
    return index
