"""The read path of a collection: top-k over its index segments, under the shared index lock.

A query is a vector of one encoder version (default: the active query encoder). Each segment
compatible with that version is searched with its view of the query — the full vector for its own
version, the compatible prefix (renormalised for cosine) for an older one — and the hits are merged
by score; incompatible versions are never compared (``indexer.segments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.collection_replay import ReplayedCollection
from indexer.errors import InvalidInput
from indexer.filters import validate_filter
from indexer.rewritten_views import RewrittenView, build_view
from indexer.segments import Segment, merge_by_score
from indexer.types import FloatArray
from indexer.validation import as_matrix
from indexer.vector_index import prepare


@dataclass(slots=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] | None
    encoder_version: str | None


def search(
    c: ReplayedCollection,
    queries: Any,
    k: int,
    flt: dict[str, Any] | None = None,
    exclude: list[str | None] | None = None,
    version: str | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits per query row; ``exclude[i]`` drops that id from row i (search by id)."""
    if k < 1:
        raise InvalidInput("k must be at least 1")
    cfg = c.config  # one read: a concurrent migration does not change this search's version
    version = version if version is not None else cfg.encoder
    dim = cfg.dim if version == cfg.encoder else c.dim_for(version)
    matrix = as_matrix(queries, dim, "query vector")
    if flt:
        validate_filter(flt)
    extra = 1 if exclude and any(exclude) else 0
    with c.locks.reading():
        allowed = None
        if flt:
            allowed = np.fromiter(c.payload_index.match(flt), dtype=np.int64)
        scores, found = _search_segments(c, matrix, version, k + extra, allowed)
        results: list[list[Hit]] = []
        # One pass over plain lists, one dict lookup per hit (``hit_fields``): this loop runs for every
        # hit served and holds the GIL, which the request handling of every other search waits for.
        fields_of = c.hit_fields.get
        for row, (row_scores, row_ids) in enumerate(zip(scores.tolist(), found.tolist(), strict=True)):
            skip = exclude[row] if exclude else None
            hits = [
                Hit(fields[0], score, fields[1], fields[2])
                for score, int_id in zip(row_scores, row_ids, strict=True)
                if (fields := fields_of(int_id)) is not None and fields[0] != skip
            ]
            results.append(hits[:k])
    return results


def _search_segments(
    c: ReplayedCollection, matrix: FloatArray, version: str | None, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Caller holds ``locks.reading()``. One segment of the query's own version: a plain search."""
    metric = c.config.metric
    segments = list(c.segments.values())
    if len(segments) == 1 and segments[0].key == c.segment_key(version):
        return segments[0].index.search(prepare(matrix, metric), k, allowed)
    parts = []
    for segment in segments:
        if segment.index.size == 0:
            continue
        dims = c.compat.prefix(version, matrix.shape[1], segment.key, segment.dim)
        if dims is None:
            view = _rewritten_view(c, version, segment)
            if view is not None:  # a transform migration: the segment's vectors rewritten into this space
                still = lambda i, key=segment.key: c.segment_key(c.versions.get(i)) == key  # noqa: E731
                parts.append(view.search(prepare(matrix, metric), k, allowed, still))
            continue
        if dims != segment.dim or dims > matrix.shape[1]:
            continue  # incompatible versions are never compared
        mine = allowed
        if allowed is not None:  # the filter's ids in this segment only (exact fallback reconstructs them)
            keys = (c.segment_key(c.versions.get(int(i))) for i in allowed)
            mine = allowed[np.fromiter((key == segment.key for key in keys), dtype=bool, count=len(allowed))]
        # prepare() renormalises the prefix for cosine: the compat view of the query
        parts.append(segment.index.search(prepare(matrix[:, :dims], metric), k, mine))
    if not parts:
        return np.full((len(matrix), k), -np.inf, np.float32), np.full((len(matrix), k), -1, np.int64)
    return merge_by_score(parts, k)


def _rewritten_view(c: ReplayedCollection, version: str | None, segment: Segment) -> RewrittenView | None:
    """The view of ``segment`` for queries of ``version`` (built on first use, e.g. after a restart), or
    None when no transform relates them. Caller holds ``locks.reading()``."""
    view = c.views.get(version, segment.key)
    if view is not None:
        return view
    rewrite = c.compat.rewriter(version, segment.key)
    if rewrite is None:
        return None
    with c.views.lock:
        view = c.views.get(version, segment.key)
        if view is None:
            ids = np.fromiter((n for n, v in c.versions.items() if c.segment_key(v) == segment.key), dtype=np.int64)
            view = build_view(version, segment, ids, rewrite)
            c.views.put(view)
    return view
