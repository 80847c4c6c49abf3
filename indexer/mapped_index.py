"""A published snapshot searched straight from its file (mmap), plus the rows that came after it.

Readers of ``ers serve --workers N`` serve search from the snapshots the writer publishes. Copying a
snapshot into each reader's heap costs one more copy of every vector per reader; mapping the file
(``faiss.IO_FLAG_MMAP_IFC``) lets every process share one copy in the page cache. FAISS maps the
vector storage of flat codes (``IndexFlat`` and the storage of ``IndexHNSWFlat``); the HNSW graph and
the id map are still read into the heap (~70 bytes per vector at M=32 against 4 x dim for a vector).

A mapped index is read-only: FAISS aborts the process on an ``add`` into mapped storage, so this class
never calls one on it. The log records after the snapshot go elsewhere:

- new rows go to ``overlay``, a small exact index in the heap (ids only grow, so a new row is never
  one of the snapshot's);
- removed rows of the snapshot become tombstones (``dead``, excluded inside the graph walk, as for
  any HNSW index); removed overlay rows leave the overlay.

A search merges the snapshot's top-k and the overlay's. The overlay grows with the writes since the
snapshot; the reader switches to the writer's next snapshot once it holds more than
``OVERLAY_SWITCH_ROWS`` (``indexer.reader``).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexer.segments import merge_by_score
from indexer.types import FloatArray, Metric
from indexer.vector_index import FLAT, VectorIndex

OVERLAY_SWITCH_ROWS = 2_000
MAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def maybe_mappable(spec: str) -> bool:
    """Whether a snapshot of ``spec`` is worth opening mapped (checked again on the index: ``mappable``)."""
    return spec == FLAT or (spec.startswith("HNSW") and not any(q in spec for q in ("PQ", "SQ", "IVF")))


def mappable(index: faiss.Index) -> bool:
    """Whether FAISS maps this index's vectors from its file: an id map over flat codes or HNSW-Flat."""
    if not isinstance(index, faiss.IndexIDMap2):
        return False
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        return True
    return isinstance(inner, faiss.IndexFlat)


class MappedIndex(VectorIndex):
    """``VectorIndex``'s search API over a mapped snapshot file plus an in-heap overlay."""

    def __init__(self, dim: int, metric: Metric, spec: str, index: faiss.Index, dead: list[int]) -> None:
        super().__init__(dim, metric, spec, index=index)
        self.dead = set(dead)
        self.snapshot_dead = len(self.dead)  # the snapshot's own tombstones; the tail adds to ``dead``
        self.overlay = VectorIndex(dim, metric, FLAT)
        ids = faiss.vector_to_array(index.id_map)  # type: ignore[attr-defined]
        self._base_ids = np.sort(ids.astype(np.int64))

    @classmethod
    def open(cls, path: Path, dim: int, metric: Metric, spec: str, dead: list[int]) -> MappedIndex | None:
        """The snapshot at ``path`` mapped, or None when FAISS would copy it anyway (IVF, PQ, SQ)."""
        index = faiss.read_index(str(path), MAP_FLAGS)
        if not mappable(index):
            return None
        return cls(dim, metric, spec, index, dead)

    def _in_base(self, int_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._base_ids, int_ids)
        pos = np.clip(pos, 0, max(0, len(self._base_ids) - 1))
        return self._base_ids[pos] == int_ids if len(self._base_ids) else np.zeros(len(int_ids), dtype=bool)

    @property
    def size(self) -> int:
        return int(self.index.ntotal) - len(self.dead) + self.overlay.size

    @property
    def overlay_rows(self) -> int:
        return self.overlay.size

    def train(self, prepared: FloatArray) -> None:
        raise RuntimeError("a mapped snapshot is read-only")

    def add(self, int_ids: np.ndarray, prepared: FloatArray, to_exact: bool = True) -> None:
        ids = np.ascontiguousarray(int_ids, dtype=np.int64)
        if len(ids):
            self.version += 1
            self.overlay.add(ids, prepared)

    def remove(self, int_ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(int_ids, dtype=np.int64)
        if not len(ids):
            return
        self.version += 1
        base = self._in_base(ids)
        self.dead.update(int(i) for i in ids[base])
        self.overlay.remove(ids[~base])

    def search(self, queries: FloatArray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        base_allowed = overlay_allowed = allowed
        if allowed is not None:
            in_base = self._in_base(np.asarray(allowed, dtype=np.int64))
            base_allowed, overlay_allowed = allowed[in_base], allowed[~in_base]
            if self.dead:  # the exact fallback of a filtered search must not bring a tombstone back
                base_allowed = base_allowed[~np.isin(base_allowed, np.fromiter(self.dead, dtype=np.int64))]
        parts = [super().search(queries, k, base_allowed)]
        if self.overlay.size:
            parts.append(self.overlay.search(queries, k, overlay_allowed))
        return merge_by_score(parts, k)

    def reconstruct(self, int_ids: np.ndarray) -> FloatArray:
        ids = np.ascontiguousarray(int_ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        base = self._in_base(ids)
        if base.any():
            out[base] = super().reconstruct(ids[base])
        if (~base).any():
            out[~base] = self.overlay.reconstruct(ids[~base])
        return out

    def compact(self) -> None:
        return  # nothing to give back: the snapshot's vectors are the file's pages

    def serialize(self) -> bytes:
        raise RuntimeError("a mapped snapshot is read-only; the writer publishes snapshots")
