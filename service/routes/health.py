"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from indexer.store.base import unreachable_reason
from service.deps import AuthenticatedDep, ManagerDep, MetricsDep, require_api_key

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(manager: ManagerDep, authenticated: AuthenticatedDep) -> JSONResponse:
    # not ready is an answer of this probe, not an error: the body says why
    reason = unreachable_reason(manager.store)
    if reason is not None:
        body: dict[str, Any] = {"status": "unavailable", "reason": reason}
    else:
        body = {"status": "ready", "collections": len(manager.list())}
        # Ready even with quarantined collections: the others serve, and a failing probe would take
        # them all out of rotation. With a key, the body names each one and why.
        quarantined = manager.quarantined()
        if quarantined:
            body["quarantined"] = quarantined
    status = 200 if reason is None else 503
    # without a key (when keys are set) a probe learns the status and nothing else
    return JSONResponse(body if authenticated else {"status": body["status"]}, status_code=status)


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
    for name in manager.quarantined():
        gauges.append(
            (
                "ers_collection_quarantined",
                "1 for a collection that cannot be loaded (it answers 503; see /readyz and `ers doctor`).",
                {"collection": name},
                1.0,
            )
        )
    text = registry.render(gauges)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
