"""Rewritten views: a segment's stored vectors mapped into another encoder's space (derived data).

A ``transform`` migration (``indexer.upgrade.bridging``) switches a collection to a new encoder whose
vectors cannot be compared with the old ones, with a fitted map old -> new (FCT, Ramanujan et al. 2022).
The old segment is then searched through its *view*: an exact index over the map applied to its stored
vectors. The stored vectors, the log and the old segment stay exactly as they were, so a rollback only
switches the query encoder back. A view is derived data like every index: built when first needed
(eagerly by the migration, lazily after a restart), never logged, and dropped with the collection.

Items that leave the segment later (deleted, rewritten or moved by a backfill) are skipped at search time;
items written into the old segment after the build (a rollback's restore, vectors labelled with the old
version) are added as their log records are applied (``ViewCache.extend``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from indexer.segments import Segment
from indexer.types import FloatArray

Rewrite = Callable[[np.ndarray], np.ndarray]  # (n, d_segment) stored vectors -> (n, d_query) unit rows
CHUNK = 65_536  # vectors rewritten at once (bounds the extra memory of a build)
OVERFETCH = 2  # candidates per wanted hit, to make up for items that left the segment since the build


@dataclass
class RewrittenView:
    query_version: str | None
    segment_key: str | None
    index: Any  # faiss.IndexIDMap2 over IndexFlatIP: exact, as the map's output is not worth re-clustering
    built_from: int  # items of the segment when it was built

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def extend(self, int_ids: np.ndarray, vectors: np.ndarray, rewrite: Rewrite) -> None:
        """Items written into the segment after the build (a restore moving items back, or vectors labelled
        with the old version): the view follows its segment like an index follows the log."""
        mapped = np.ascontiguousarray(rewrite(vectors), dtype=np.float32)
        if self.index.d != mapped.shape[1]:  # the placeholder of an empty segment
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(mapped.shape[1]))
        self.index.add_with_ids(mapped, np.ascontiguousarray(int_ids, dtype=np.int64))

    def search(self, queries: FloatArray, k: int, allowed: np.ndarray | None,
               still_in_segment: Callable[[int], bool]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top-``k`` (scores, ids) per row among items still in the segment (ids -1 pad)."""
        n = len(queries)
        out_scores, out_ids = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        if self.size == 0:
            return out_scores, out_ids
        params = None
        if allowed is not None:
            if not len(allowed):
                return out_scores, out_ids
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        want = min(self.size, k * OVERFETCH + 8)
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), want, params=params)
        del params  # the selector had to outlive the search (FAISS keeps a raw pointer)
        for row in range(n):
            kept = [(s, i) for s, i in zip(scores[row], ids[row], strict=True) if i >= 0 and still_in_segment(int(i))]
            for col, (s, i) in enumerate(kept[:k]):
                out_scores[row, col], out_ids[row, col] = s, i
        return out_scores, out_ids


def segment_vectors(segment: Segment, int_ids: np.ndarray) -> FloatArray:
    """The segment's stored vectors for ``int_ids`` as its index holds them (exact for flat, HNSW and
    IVF-Flat; decoded for PQ/SQ, which the view then inherits)."""
    return segment.index.reconstruct(int_ids)


def build_view(query_version: str | None, segment: Segment, int_ids: np.ndarray, rewrite: Rewrite,
               progress: Callable[[int, int], None] | None = None) -> RewrittenView:  # fmt: skip
    """The view of ``segment``'s items ``int_ids`` under ``rewrite``, chunk by chunk."""
    index: Any = None
    for start in range(0, len(int_ids), CHUNK):
        ids = np.ascontiguousarray(int_ids[start : start + CHUNK], dtype=np.int64)
        mapped = np.ascontiguousarray(rewrite(segment_vectors(segment, ids)), dtype=np.float32)  # (c, d_query)
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(mapped.shape[1]))
        index.add_with_ids(mapped, ids)
        if progress is not None:
            progress(min(start + CHUNK, len(int_ids)), len(int_ids))
    if index is None:  # an empty segment: a 1-d placeholder that finds nothing
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(1))
    return RewrittenView(query_version, segment.key, index, len(int_ids))


class ViewCache:
    """A collection's views, by (query version, segment key); one build at a time per collection."""

    def __init__(self) -> None:
        self.views: dict[tuple[str | None, str | None], RewrittenView] = {}
        self.lock = threading.Lock()

    def get(self, query_version: str | None, segment_key: str | None) -> RewrittenView | None:
        return self.views.get((query_version, segment_key))

    def put(self, view: RewrittenView) -> None:
        self.views[(view.query_version, view.segment_key)] = view

    def extend(self, segment_key: str | None, int_ids: np.ndarray, vectors: np.ndarray,
               rewriter: Callable[[str | None, str | None], Rewrite | None]) -> None:  # fmt: skip
        """Add rows just applied to ``segment_key`` to its views (caller holds the index lock)."""
        for (query_version, key), view in self.views.items():
            rewrite = rewriter(query_version, key) if key == segment_key and len(int_ids) else None
            if rewrite is not None:
                view.extend(int_ids, vectors, rewrite)

    def invalidate(self, segment_key: str | None = None) -> None:
        with self.lock:
            for key in [k for k in self.views if segment_key is None or k[1] == segment_key]:
                del self.views[key]

    def describe(self) -> list[dict[str, Any]]:
        return [{"query_version": q, "segment": s, "vectors": v.size} for (q, s), v in self.views.items()]
