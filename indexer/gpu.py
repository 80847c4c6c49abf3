"""Optional GPU search replicas, chosen automatically when a faiss-gpu build sees a GPU.

The CPU index stays the master (writes, snapshots, filtered searches: GPU indexes take no id
selectors). A GPU copy serves unfiltered searches while it is current; writes make it stale and it
is re-cloned at most once per ``refresh_s``, so a write-heavy collection simply keeps searching on
the CPU. Results are identical either way, only faster.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any

import faiss

log = logging.getLogger(__name__)
MIN_GPU_VECTORS = 10_000  # below this a PCIe round trip costs more than a CPU scan


@lru_cache(maxsize=1)
def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except RuntimeError:
        return 0


@lru_cache(maxsize=1)
def _resources() -> Any:
    return faiss.StandardGpuResources()


class GpuReplica:
    def __init__(self, refresh_s: float = 1.0) -> None:
        self.enabled = gpu_count() > 0
        self.refresh_s = refresh_s
        self._index: Any = None
        self._version = -1
        self._last_clone = 0.0
        self._lock = threading.Lock()
        self._unsupported = False

    def get(self, cpu_index: faiss.Index, version: int) -> Any:
        """A GPU index equal to ``cpu_index`` at ``version``, or None (use the CPU).

        Call with the collection's read lock held: the CPU index cannot change during the clone.
        """
        if not self.enabled or self._unsupported or cpu_index.ntotal < MIN_GPU_VECTORS:
            return None
        if self._version == version:
            return self._index
        if time.monotonic() - self._last_clone < self.refresh_s or not self._lock.acquire(blocking=False):
            return None
        try:
            self._last_clone = time.monotonic()
            self._index = faiss.index_cpu_to_gpu(_resources(), 0, cpu_index)
            self._version = version
            return self._index
        except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU version
            log.info("index type has no GPU version (%s); searching on the CPU", exc)
            self._unsupported = True
            return None
        finally:
            self._lock.release()
