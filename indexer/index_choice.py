"""Which FAISS index ``auto`` builds for a collection segment: by size, dimension and a memory budget.

The rule, in order (``n`` live vectors of ``dim`` float32, budget ``B`` bytes for this segment's index):

1. **Exact (``Flat``)** while ``n < auto_threshold`` (``ERS_AUTO_INDEX_THRESHOLD``, 20,000 by default).
   A scan of 20k x 384 floats takes about a millisecond per query on one core, is exact (recall 1.0),
   needs no training and deletes for real; a graph or a trained index would only add build time.
2. **HNSW (``HNSW32,Flat``)** when its estimated resident size fits the budget:
   ``n * (4*dim + 8*M*1.05 + 60)`` bytes (the float32 vectors, the level-0 links of 2*M int32 and the
   few upper levels, plus the id map). On CPU it is the fastest index at a given recall (issue 17:
   HNSW32 gave 0.988 at 1.8x the QPS of IVF512,Flat at 0.999 on Fashion-MNIST), and its one knob,
   ``efSearch``, is tuned to the target recall. It cannot delete: deletes are tombstones that the
   search filters out, and the policy rebuilds once they pass ``tombstone_ratio``.
3. **IVF with 8-bit scalar quantisation plus exact re-ranking (``IVF{nlist},SQ8``)** when HNSW does
   not fit but the codes do: ``n * (dim + 64)`` bytes (one byte per dimension, the list ids, the
   id -> list map, and the ids of the exact-vector file). The search fetches ``RERANK_SQ8 * k``
   candidates from the codes and re-scores them with the exact float32 vectors, read from an
   append-only file that is memory-mapped, not loaded (``indexer.exact_vectors``): the pages the
   re-ranking touches sit in the reclaimable page cache, so the resident cost stays about a quarter
   of flat's and the answer is scored exactly. ``nprobe`` is tuned to the target recall.
4. **IVF with product quantisation (``IVF{nlist},PQ{m}``)**, again re-ranked, when even SQ8 does not
   fit: ``m`` is the largest divisor of ``dim`` (at most ``dim/2``) whose codes fit. Below ``PQ4`` a
   warning is logged and ``PQ4``-sized codes are used anyway: the budget is then too small to serve
   the collection from memory at all.

``nlist`` is about ``4*sqrt(n)`` (a power of two, the FAISS wiki's rule) and never so large that a
list trains on fewer than 39 points. The budget is per segment index; ``ERS_MEMORY_BUDGET=0`` means
half the machine's physical memory. The policy re-applies this rule as a segment grows, so a
segment moves Flat -> HNSW -> IVF-SQ8 as it crosses each line.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf", "other"]
HNSW_M = 32
RERANK_SQ8 = 4  # candidates per result re-scored exactly: SQ8 ranks are close to exact ones
RERANK_PQ = 10  # PQ codes rank worse: re-score more of them
FLAT_BYTES_EXTRA = 48  # IDMap2's id array (8) and reverse hash map (~40) per vector
HNSW_BYTES_EXTRA = 60  # level array, offsets and the IDMap2 maps per vector
IVF_BYTES_EXTRA = 64  # list ids (8), the hash-table direct map (~48) and the exact file's id (8)


@dataclass(frozen=True)
class IndexChoice:
    spec: str  # FAISS factory string
    kind: IndexKind
    rerank: int = 0  # candidates per result re-scored with exact vectors (0: none)
    reason: str = ""


def physical_memory_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def effective_budget(setting: int) -> int:
    """``ERS_MEMORY_BUDGET`` in bytes; 0 means half of physical memory."""
    if setting < 0:
        raise ValueError(f"memory budget must be >= 0 bytes, got {setting}")
    return setting if setting > 0 else physical_memory_bytes() // 2


def ivf_nlist(n: int) -> int:
    """About 4*sqrt(n) lists (a power of two), at least 39 training points per list."""
    by_rule = round(math.log2(4 * math.sqrt(max(n, 1))))
    by_training = math.floor(math.log2(max(n, 1) / 39))
    return int(2 ** max(4, min(16, by_rule, by_training)))


def flat_bytes(n: int, dim: int) -> int:
    return n * (4 * dim + FLAT_BYTES_EXTRA)


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    return int(n * (4 * dim + 8 * m * 1.05 + HNSW_BYTES_EXTRA))


def ivf_bytes(n: int, dim: int, code_bytes: int) -> int:
    return n * (code_bytes + IVF_BYTES_EXTRA) + ivf_nlist(n) * dim * 4


def choose_index(n: int, dim: int, budget: int, auto_threshold: int) -> IndexChoice:
    """The index ``auto`` builds for ``n`` vectors of ``dim`` under ``budget`` bytes (see the module doc)."""
    if n < auto_threshold:
        return IndexChoice("Flat", "flat", reason=f"{n} < threshold {auto_threshold}: an exact scan is cheap")
    need = hnsw_bytes(n, dim)
    if need <= budget:
        return IndexChoice(f"HNSW{HNSW_M},Flat", "hnsw", reason=f"graph ~{need} B fits budget {budget} B")
    nlist = ivf_nlist(n)
    sq8 = ivf_bytes(n, dim, dim)
    if sq8 <= budget:
        why = f"HNSW ~{need} B > budget {budget} B; SQ8 codes ~{sq8} B fit"
        return IndexChoice(f"IVF{nlist},SQ8", "ivf", rerank=RERANK_SQ8, reason=why)
    divisors = [m for m in range(dim // 2, 3, -1) if dim % m == 0]
    fitting = [m for m in divisors if ivf_bytes(n, dim, m) <= budget]
    if fitting:
        m = fitting[0]
        why = f"SQ8 ~{sq8} B > budget {budget} B; PQ{m} codes fit"
    else:
        m = divisors[-1] if divisors else 0
        why = f"even the smallest PQ codes exceed budget {budget} B"
        log.warning("index choice for %d x %d: %s", n, dim, why)
    if m == 0:  # a prime or tiny dim: no PQ split; SQ8 is the smallest code we can build
        return IndexChoice(f"IVF{nlist},SQ8", "ivf", rerank=RERANK_SQ8, reason=why + "; no PQ split of dim")
    return IndexChoice(f"IVF{nlist},PQ{m}", "ivf", rerank=RERANK_PQ, reason=why)


def kind_of(spec: str) -> IndexKind:
    if spec == "Flat":
        return "flat"
    if spec.startswith("HNSW"):
        return "hnsw"
    if spec.startswith("IVF"):
        return "ivf"
    return "other"
