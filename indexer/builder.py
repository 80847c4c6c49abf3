"""Build an index and tune its search breadth to the target recall by measurement.

Which index ``auto`` builds is ``indexer.index_choice``'s rule. Here the index is trained, filled and
tuned: ``efSearch`` for HNSW, ``nprobe`` for IVF, each set to the smallest value whose recall@10
reaches ``target_recall`` + ``FRESH_MARGIN`` on held-out queries, so the measured recall lands just above it
(within about +0.02: the steps are fine and the estimate's noise over 500 queries is ~0.005) rather
than a doubled safety margin.

Held-out queries: before tuning, a sample of the collection's own vectors is held out of the index;
they are the queries, their exact top-10 among the other vectors is the truth, and they are added
once the knob is set. They were never in the index, so they are not trivially found (leave-one-out on
stored vectors is optimistic, most for HNSW, where the stored query sits in the graph linked to its
own neighbours). The remaining bias: they follow the stored vectors' distribution; queries from
another distribution (short text queries against long passages) can score lower, and the collection
grows by up to ``rebuild_growth``-fold before the next re-tune.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexer.exact_vectors import ExactVectors
from indexer.index_choice import IndexChoice, kind_of
from indexer.types import FloatArray, Metric
from indexer.vector_index import VectorIndex, faiss_metric

log = logging.getLogger(__name__)
# Steps about 1.2x apart: recall moves by well under 0.02 from one to the next near the usual targets.
NPROBE_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256,
                320, 384, 512, 768, 1024, 2048, 4096)  # fmt: skip
EF_STEPS = (10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512,
            768, 1024)  # fmt: skip
TUNE_QUERIES = 500
# Fresh queries score below held-out stored vectors at the same knob: measured 0.004-0.017 lower
# (bench/index_choice.py at 50k/200k; 0.013 on held-out MiniLM texts in bench/peers.py, which a 0.01
# margin left at 0.948 for a 0.95 target). Tuning aims this much above the target so that fresh queries
# land on it rather than under it; measured_recall stays the held-out figure. The band: +0.02.
FRESH_MARGIN = 0.02
TUNE_K = 10
ADD_CHUNK = 65_536


def min_train_points(spec: str, dim: int, metric: Metric) -> int:
    """Vectors needed before ``spec`` can be trained well (39 per IVF list, 256 per PQ code)."""
    probe = VectorIndex(dim, metric, spec)
    if probe.is_trained:
        return 0
    ivf = probe.ivf
    need = 39 * int(ivf.nlist) if ivf is not None else 1000
    return max(need, 256)


def build_index(
    dim: int,
    metric: Metric,
    choice: IndexChoice | str,
    int_ids: np.ndarray,
    prepared: FloatArray,
    target_recall: float,
    seed: int = 0,
    directory: Path | None = None,
) -> VectorIndex:
    """Train, fill and tune ``choice`` over ``prepared`` (already normalised for cosine). A re-ranked
    choice writes its exact-vector file into ``directory``."""
    if isinstance(choice, str):
        choice = IndexChoice(choice, kind_of(choice))
    index = VectorIndex(dim, metric, choice.spec)
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        ivf = index.ivf
        cap = 64 * int(ivf.nlist) if ivf is not None else 100_000  # FAISS wants >= 39 per list
        sample = prepared[rng.choice(len(prepared), min(cap, len(prepared)), replace=False)]
        index.train(np.ascontiguousarray(sample))
    if choice.rerank:
        if directory is None:
            raise ValueError(f"{choice.spec} with re-ranking needs a directory for its exact vectors")
        if len(int_ids) > 1 and not np.all(int_ids[1:] > int_ids[:-1]):
            order = np.argsort(int_ids, kind="stable")  # ascending ids: lookups need no order array
            int_ids, prepared = int_ids[order], prepared[order]
        exact = ExactVectors.create(directory, dim)
        exact.append(int_ids, prepared)
        index.attach_exact(exact, choice.rerank)
    tunable = index.ivf is not None or index.hnsw is not None
    held = min(TUNE_QUERIES, len(prepared) // 5)
    if not tunable or held < 10:
        index.add(int_ids, prepared, to_exact=False)
        index.compact()
        return index
    held_out = np.zeros(len(prepared), dtype=bool)
    held_out[rng.choice(len(prepared), held, replace=False)] = True
    _add_rows(index, int_ids, prepared, np.flatnonzero(~held_out))
    queries = np.ascontiguousarray(prepared[held_out])
    truth = _truth_without(queries, prepared, held_out, int_ids, index.metric)
    tune(index, queries, truth, min(0.999, target_recall + FRESH_MARGIN))
    _add_rows(index, int_ids, prepared, np.flatnonzero(held_out))
    index.compact()
    return index


def _add_rows(index: VectorIndex, int_ids: np.ndarray, prepared: FloatArray, rows: np.ndarray) -> None:
    """Add ``rows`` in chunks: no second copy of a large collection in memory."""
    for start in range(0, len(rows), ADD_CHUNK):
        part = rows[start : start + ADD_CHUNK]
        index.add(int_ids[part], np.ascontiguousarray(prepared[part]), to_exact=False)


def _truth_without(
    queries: FloatArray, prepared: FloatArray, held_out: np.ndarray, int_ids: np.ndarray, metric: Metric
) -> np.ndarray:
    """Exact top-``TUNE_K`` ids of each query among the vectors not held out. Searched over all the
    vectors with room for the held-out ones (each query finds itself first), then filtered."""
    k = min(TUNE_K, int((~held_out).sum()))
    extra = min(len(prepared), k + 40)
    _, pos = faiss.knn(queries, prepared, extra, metric=faiss_metric(metric))
    rows = []
    for row in pos:
        kept = [p for p in row.tolist() if p >= 0 and not held_out[p]][:k]
        if len(kept) < k:  # more than 40 held-out vectors crowd the top: search the rest exactly
            rest = np.flatnonzero(~held_out)
            _, sub = faiss.knn(queries, np.ascontiguousarray(prepared[rest]), k, metric=faiss_metric(metric))
            return np.asarray(int_ids[rest[sub]])
        rows.append(kept)
    return np.asarray(int_ids[np.asarray(rows, dtype=np.int64)])


def tune(index: VectorIndex, queries: FloatArray, truth_ids: np.ndarray, target: float) -> None:
    """Set the smallest efSearch/nprobe whose recall@k of ``queries`` (not in the index) against
    ``truth_ids`` (their exact top-k ids) reaches ``target``; records the recall measured there in
    ``index.measured_recall``."""
    k = truth_ids.shape[1]

    def recall_at(value: int) -> float:
        setter(value)
        _, found = index.search(queries, k)
        pairs = zip(found.tolist(), truth_ids.tolist(), strict=True)
        return sum(len(set(f) & set(t)) for f, t in pairs) / truth_ids.size

    setter: Callable[[int], None]
    if index.hnsw is not None:
        steps, setter, knob = list(EF_STEPS), index.set_ef_search, "efSearch"
    else:
        assert index.ivf is not None
        nlist = int(index.ivf.nlist)
        steps, setter, knob = [s for s in NPROBE_STEPS if s < nlist] + [nlist], index.set_nprobe, "nprobe"
    # Recall grows with the knob: bisect for the first step that reaches the target (~5 measurements).
    lo, hi = 0, len(steps) - 1
    measured: dict[int, float] = {}
    while lo < hi:
        mid = (lo + hi) // 2
        measured[mid] = recall_at(steps[mid])
        if measured[mid] >= target:
            hi = mid
        else:
            lo = mid + 1
    value = steps[lo]
    recall = measured[lo] if lo in measured else recall_at(value)
    # Then every integer between the step below and this one: a jump of nprobe 8 -> 10 can be 0.03.
    below = steps[lo - 1] + 1 if lo > 0 else value
    while below < value and recall >= target:
        mid = (below + value) // 2
        at_mid = recall_at(mid)
        if at_mid >= target:
            value, recall = mid, at_mid
        else:
            below = mid + 1
    setter(value)
    index.measured_recall = recall
    if recall < target:
        log.warning("%s: recall@%d %.3f at the largest %s=%d is below the target %.2f",
                    index.spec, k, recall, knob, value, target)  # fmt: skip
    log.info("%s: %s=%d measures recall@%d %.3f on %d held-out queries (target %.2f)",
             index.spec, knob, value, k, recall, len(queries), target)  # fmt: skip
