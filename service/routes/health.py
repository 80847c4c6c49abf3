"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from indexer.store.base import unreachable_reason
from service.deps import ManagerDep, MetricsDep, require_api_key

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(manager: ManagerDep) -> JSONResponse:
    # not ready is an answer of this probe, not an error: the body says why
    reason = unreachable_reason(manager.store)
    if reason is not None:
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "collections": len(manager.list())})


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_api_key)])
def metrics(manager: ManagerDep, registry: MetricsDep) -> PlainTextResponse:
    gauges = []
    for c in manager.list():
        gauges.append(("ers_collection_items", "Items per collection.", {"collection": c.name}, float(c.count)))
        gauges.append(
            (
                "ers_collection_indexed_vectors",
                "Vectors in the FAISS index.",
                {"collection": c.name},
                float(c.index.size),
            )
        )
    text = registry.render(gauges)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
