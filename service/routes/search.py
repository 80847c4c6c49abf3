"""Search endpoints: one query, or many answered with one FAISS call per distinct filter."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from indexer.collection import Collection, Hit
from indexer.errors import InvalidInput, LimitExceeded
from indexer.validation import as_matrix
from service.deps import CollectionDep, SettingsDep
from service.schemas import BatchSearchRequest, BatchSearchResponse, SearchRequest, SearchResponse
from service.settings import Settings

router = APIRouter(prefix="/v1/collections", tags=["search"])


def _hits(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"id": h.id, "score": h.score, "payload": h.payload, "encoder_version": h.encoder_version} for h in hits]


def _run(collection: Collection, queries: list[SearchRequest], settings: Settings) -> list[list[Hit]]:
    for q in queries:
        if q.k > settings.max_k:
            raise LimitExceeded(f"k={q.k} is over the limit of {settings.max_k} (ERS_MAX_K)")
    vectors = []
    for i, q in enumerate(queries):
        if q.vector is not None:
            if not q.vector:
                raise InvalidInput(f"query {i}: vector is empty")
            vectors.append(as_matrix(q.vector, collection.config.dim, f"query {i} vector")[0])
        else:
            assert q.id is not None
            vectors.append(collection.vector_of(q.id))
    # Group queries that share a filter: each group is one FAISS call at the group's largest k.
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(json.dumps(q.filter, sort_keys=True), []).append(i)
    out: list[list[Hit]] = [[] for _ in queries]
    for rows in groups.values():
        first = queries[rows[0]]
        k = max(queries[r].k for r in rows)
        found = collection.search(
            np.stack([vectors[r] for r in rows]), k, first.filter, exclude=[queries[r].id for r in rows]
        )
        for r, hits in zip(rows, found, strict=True):
            out[r] = hits[: queries[r].k]
    return out


@router.post("/{name}/search", response_model=SearchResponse)
def search(body: SearchRequest, collection: CollectionDep, settings: SettingsDep) -> dict[str, Any]:
    started = time.perf_counter()
    hits = _run(collection, [body], settings)[0]
    return {"results": _hits(hits), "took_ms": round((time.perf_counter() - started) * 1e3, 3)}


@router.post("/{name}/search/batch", response_model=BatchSearchResponse)
def search_batch(body: BatchSearchRequest, collection: CollectionDep, settings: SettingsDep) -> dict[str, Any]:
    if not body.queries:
        raise InvalidInput("queries is empty")
    if len(body.queries) > settings.max_queries:
        raise LimitExceeded(
            f"{len(body.queries)} queries in one request; the limit is {settings.max_queries} (ERS_MAX_QUERIES)"
        )
    started = time.perf_counter()
    results = _run(collection, body.queries, settings)
    return {"results": [_hits(h) for h in results], "took_ms": round((time.perf_counter() - started) * 1e3, 3)}
