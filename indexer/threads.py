"""FAISS threading and BLAS choice, per process.

OpenMP's thread count is a per-thread setting, so setting it once at start-up only reaches the
thread that did it, and every worker thread still ran FAISS with all cores (measured: an exact
search cost 9.3 ms of CPU instead of 2.4 under concurrency). Each FAISS call site calls
``ensure_faiss_threads()`` first. FAISS's bundled OpenBLAS is the OpenMP build (libopenblaso), so
its matrix products follow the same per-thread count: no separate BLAS thread pool spins.

FAISS scores a flat index query by query, or with one matrix product (BLAS) when
``queries * dim >= faiss.cvar.distance_compute_blas_threshold`` (one global). Measured on one core
(flat, 10k-100k vectors, dims 128-1280), BLAS is cheaper per query from 4 queries per call on, at
every dim (128-d: 2.2 ms/query scanning, 1.8 at 4, 1.2 at 8, 0.8 at 16, 0.55 at 32) and 2.6-3x
dearer for a single query. So the threshold is ``BLAS_MIN_QUERIES * dim``, for the largest dim
this process serves (smaller dims then need proportionally more queries per call), capped at
``BLAS_THRESHOLD_MAX`` so that a 128-d batch of 32 keeps BLAS whatever else is served. Only single
queries of dim >= the cap take the BLAS path alone.
"""

from __future__ import annotations

import threading

import faiss

BLAS_MIN_QUERIES = 4
BLAS_THRESHOLD_MAX = 4096

_local = threading.local()
_wanted = 1
_lock = threading.Lock()
_max_dim = 0


def blas_threshold(max_dim: int) -> int:
    """The threshold ERS uses when ``max_dim`` is the largest dim served (0: none yet)."""
    if max_dim <= 0:
        return BLAS_THRESHOLD_MAX
    return min(BLAS_THRESHOLD_MAX, BLAS_MIN_QUERIES * max_dim)


def note_dim(dim: int) -> None:
    """Called for every index this process builds or loads. The threshold only ever rises (a dim
    once served may be served again); a change can send a call already running on another thread
    down the other path once, which changes scores by float rounding only."""
    global _max_dim
    with _lock:
        if dim > _max_dim:
            _max_dim = dim
            faiss.cvar.distance_compute_blas_threshold = blas_threshold(_max_dim)


def set_faiss_threads(n: int) -> None:
    global _wanted
    _wanted = max(1, int(n))
    with _lock:
        faiss.cvar.distance_compute_blas_threshold = blas_threshold(_max_dim)
    ensure_faiss_threads()


def ensure_faiss_threads() -> None:
    if getattr(_local, "threads", None) != _wanted:
        faiss.omp_set_num_threads(_wanted)
        _local.threads = _wanted
