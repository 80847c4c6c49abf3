"""A FAISS index keyed by int64 ids, with one scoring convention: higher is better.

- ``cosine``: vectors are L2-normalised on the way in, inner product; score = cosine similarity.
- ``ip``: inner product as given.
- ``l2``: FAISS returns squared Euclidean distance; score = its negation (``-||q - x||^2``).

IVF indexes take ids natively (a hash-table direct map makes ``remove_ids``/``reconstruct`` work);
every other index sits inside ``IndexIDMap2``. Indexes that cannot delete (HNSW) keep tombstones
that a selector excludes at search time (inside the graph walk, so ``k`` live results still come
back) until the policy rebuilds past ``tombstone_ratio``.

A quantised index built by ``auto`` carries ``exact`` (``indexer.exact_vectors``): the search asks the
codes for ``rerank * k`` candidates and re-scores them with the exact vectors, and ``reconstruct``
returns exact vectors too.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from indexer.errors import InvalidInput
from indexer.exact_vectors import ExactVectors
from indexer.gpu import GpuReplica
from indexer.threads import ensure_faiss_threads, note_dim
from indexer.types import FloatArray, Metric

log = logging.getLogger(__name__)
FLAT = "Flat"
RERANK_ROWS = 256  # queries re-ranked at a time: bounds the gathered (rows, candidates, dim) block


def faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def prepare(vectors: FloatArray, metric: Metric) -> FloatArray:
    """The vectors as FAISS should see them (a normalised copy for cosine)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        out = out.copy()
        faiss.normalize_L2(out)
    return out


def validate_spec(dim: int, spec: str, metric: Metric) -> None:
    """Raise InvalidInput unless ``spec`` is ``auto`` or a FAISS factory string valid for ``dim``."""
    if spec == "auto":
        return
    if not spec.isascii() or not spec.isprintable():  # FAISS's factory takes ASCII text only
        raise InvalidInput(f"invalid FAISS index spec {spec!a}: printable ASCII only")
    if "IDMap" in spec:
        raise InvalidInput("index spec must not contain IDMap: ids are managed by ERS")
    try:
        faiss.index_factory(dim, spec, faiss_metric(metric))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise InvalidInput(f"invalid FAISS index spec '{spec}' for dim {dim}: {first}") from exc


# FAISS's default efConstruction is 40; Chroma and Qdrant build with 100, hnswlib's README with 200.
# Measured (100k MiniLM texts, HNSW32, recall@10 0.97, one thread): 40 needs efSearch 56 for 5,770
# queries/s, 100 needs 48 for 6,840 (+18%) at 1.7x the build time; the build runs once, searches forever.
HNSW_EF_CONSTRUCTION = 100


class VectorIndex:
    def __init__(self, dim: int, metric: Metric, spec: str, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.metric = metric
        self.spec = spec
        self.dead: set[int] = set()
        self.exact: ExactVectors | None = None  # set with ``attach_exact`` (re-ranked quantised indexes)
        self.rerank = 0  # candidates per result re-scored exactly
        self.measured_recall: float | None = 1.0 if spec == FLAT else None  # set by tuning (builder)
        note_dim(dim)
        fresh = index is None
        if index is None:
            index = faiss.index_factory(dim, spec, faiss_metric(metric))
            ivf = self._ivf(index)
            if ivf is not None:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            else:
                index = faiss.IndexIDMap2(index)
        self.index = index
        self._ivf_index = self._ivf(index)  # looked up once: extract_index_ivf raises on non-IVF
        self._hnsw_index = self._hnsw(index)
        if fresh and self._hnsw_index is not None:
            self._hnsw_index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self.version = 0  # bumped by every mutation; tells the GPU replica when it is stale
        self.gpu = GpuReplica()

    @staticmethod
    def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
        try:
            return faiss.extract_index_ivf(index)
        except RuntimeError:
            return None

    @staticmethod
    def _hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        return inner if isinstance(inner, faiss.IndexHNSW) else None

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        return self._ivf_index

    @property
    def hnsw(self) -> faiss.IndexHNSW | None:
        return self._hnsw_index

    @property
    def ef_search(self) -> int | None:
        hnsw = self.hnsw
        return int(hnsw.hnsw.efSearch) if hnsw is not None else None

    def set_ef_search(self, ef: int) -> None:
        hnsw = self.hnsw
        if hnsw is not None:
            hnsw.hnsw.efSearch = int(ef)
            self.version += 1

    def attach_exact(self, exact: ExactVectors, rerank: int) -> None:
        """Re-score ``rerank * k`` candidates with ``exact`` (which must hold every vector added)."""
        if rerank < 1:
            raise ValueError(f"rerank must be >= 1, got {rerank}")
        self.exact = exact
        self.rerank = rerank

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def is_exact(self) -> bool:
        return self.spec == FLAT

    @property
    def size(self) -> int:
        """Live vectors (tombstoned ones excluded)."""
        return int(self.index.ntotal) - len(self.dead)

    @property
    def nprobe(self) -> int | None:
        ivf = self.ivf
        return int(ivf.nprobe) if ivf is not None else None

    def set_nprobe(self, nprobe: int) -> None:
        ivf = self.ivf
        if ivf is not None:
            ivf.nprobe = int(nprobe)
            self.version += 1

    def train(self, prepared: FloatArray) -> None:
        ensure_faiss_threads()
        self.index.train(prepared)

    def add(self, int_ids: np.ndarray, prepared: FloatArray, to_exact: bool = True) -> None:
        """Add vectors; ``to_exact=False`` when the exact file already holds them (a build)."""
        if len(int_ids):
            ensure_faiss_threads()
            self.version += 1
            if self.exact is not None and to_exact:
                self.exact.append(int_ids, prepared)
            self.index.add_with_ids(prepared, np.ascontiguousarray(int_ids, dtype=np.int64))

    def remove(self, int_ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(int_ids, dtype=np.int64)
        if not len(ids):
            return
        self.version += 1
        # An IVF hash-table direct map only accepts an id array; IDMap2 takes any selector.
        selector = faiss.IDSelectorArray(ids) if self.ivf is not None else faiss.IDSelectorBatch(ids)
        try:
            self.index.remove_ids(selector)
        except RuntimeError:
            # e.g. HNSW: cannot delete; hide the ids until the next rebuild.
            self.dead.update(int(i) for i in ids)

    def _params(self, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        ivf = self.ivf
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(ivf.nprobe))  # type: ignore[call-arg]
        hnsw = self.hnsw
        if hnsw is not None and selector is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(hnsw.hnsw.efSearch))  # type: ignore[attr-defined]
        return faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]

    def search(self, queries: FloatArray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ids -1 pad missing results.

        ``allowed`` restricts the search to those ids. An approximate index may find fewer than
        ``k`` allowed ids in the cells it probes; then the allowed vectors are scored exactly, so
        ``k`` results come back whenever ``k`` exist.
        """
        ensure_faiss_threads()
        selector: faiss.IDSelector | None = None
        dead_batch = None  # must outlive the search: IDSelectorNot keeps only a raw pointer to it
        if allowed is not None:
            if not len(allowed):
                return _empty(len(queries), k)
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        elif self.dead:
            dead_batch = faiss.IDSelectorBatch(np.fromiter(self.dead, dtype=np.int64))
            selector = faiss.IDSelectorNot(dead_batch)
        kk = min(k, max(1, int(self.index.ntotal)))
        fetch = min(kk * max(1, self.rerank), max(1, int(self.index.ntotal)))
        gpu = self.gpu.get(self.index, self.version) if selector is None else None
        if gpu is not None:
            distances, ids = gpu.search(queries, fetch)
        else:
            distances, ids = self.index.search(queries, fetch, params=self._params(selector))
        if self.exact is not None:
            distances, ids = self._rerank(queries, ids, kk)
        if kk < k:
            pad_d, pad_i = _empty(len(queries), k - kk)
            distances, ids = np.hstack([distances, pad_d]), np.hstack([ids, pad_i])
        scores = -distances if self.metric == "l2" else distances
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        if allowed is not None and not self.is_exact:
            # Per row, so a query's answer does not depend on the other queries of the call
            # (concurrent searches are merged into one call).
            short = (ids >= 0).sum(axis=1) < min(k, len(allowed))
            if short.any():
                scores[short], ids[short] = self._exact_subset(queries[short], k, allowed)
        return scores, ids

    def _rerank(self, queries: FloatArray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of the candidates ``ids``, scored with the exact vectors (FAISS's
        convention: distances, smaller is better for l2, larger for inner product)."""
        parts = [self._rerank_rows(queries[s : s + RERANK_ROWS], ids[s : s + RERANK_ROWS], k)
                 for s in range(0, len(queries), RERANK_ROWS)]  # fmt: skip
        if not parts:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        return np.vstack([d for d, _ in parts]), np.vstack([i for _, i in parts])

    def _rerank_rows(self, queries: FloatArray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.exact is not None
        vectors, found = self.exact.gather(ids)  # (rows, candidates, dim): bounded by RERANK_ROWS
        if self.metric == "l2":
            diff = vectors - queries[:, None, :]
            dist = np.where(found, np.einsum("qcd,qcd->qc", diff, diff), np.inf)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        else:
            dist = np.where(found, np.einsum("qcd,qd->qc", vectors, queries), -np.inf)
            order = np.argsort(-dist, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(dist, order, axis=1).astype(np.float32)
        top_ids = np.where(np.take_along_axis(found, order, axis=1), np.take_along_axis(ids, order, axis=1), -1)
        return top, top_ids

    def _exact_subset(self, queries: FloatArray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.reconstruct(allowed)
        distances, pos = faiss.knn(queries, vectors, min(k, len(allowed)), metric=faiss_metric(self.metric))
        ids = np.where(pos >= 0, allowed[np.clip(pos, 0, None)], -1)
        scores = -distances if self.metric == "l2" else distances
        if ids.shape[1] < k:
            pad_d, pad_i = _empty(len(queries), k - ids.shape[1])
            scores, ids = np.hstack([scores, pad_d]), np.hstack([ids, pad_i])
        return scores.astype(np.float32), ids

    def reconstruct(self, int_ids: np.ndarray) -> FloatArray:
        """Stored vectors for ``int_ids`` (exact for flat, HNSW, IVF-Flat and re-ranked indexes; decoded
        for a PQ/SQ index without exact vectors)."""
        if not len(int_ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.exact is not None:
            vectors, found = self.exact.gather(np.ascontiguousarray(int_ids, dtype=np.int64))
            if not found.all():
                raise KeyError(f"ids not in the exact vectors: {np.asarray(int_ids)[~found][:5].tolist()}")
            return vectors
        return np.asarray(self.index.reconstruct_batch(np.ascontiguousarray(int_ids, dtype=np.int64)), dtype=np.float32)

    def compact(self) -> None:
        """Drop the spare capacity FAISS's inverted lists grow by (one entry at a time, doubling):
        a round trip through the serialised form leaves each list exactly as long as it is."""
        if self.ivf is None:
            return
        nprobe = self.nprobe
        self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
        self._ivf_index = self._ivf(self.index)
        if nprobe is not None:
            self.set_nprobe(nprobe)
        self.version += 1

    def serialize(self) -> bytes:
        return bytes(faiss.serialize_index(self.index))

    @classmethod
    def deserialize(cls, dim: int, metric: Metric, spec: str, data: bytes, dead: list[int]) -> VectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        out = cls(dim, metric, spec, index=index)
        out.dead = set(dead)
        return out


def _empty(rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, k), -np.inf, dtype=np.float32), np.full((rows, k), -1, dtype=np.int64)
