"""Encoder endpoints: embed raw inputs, verify two faces, cluster a face collection."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, Response

from indexer.clustering import cluster_by_distance
from indexer.errors import InvalidInput, LimitExceeded
from indexer.ingest import encoder_input
from service.deps import CollectionDep, HubDep, SettingsDep
from service.runtime.embedding import bound_encoder, query_vector
from service.schemas import (
    ClusterRequest,
    ClusterResponse,
    EmbedRequest,
    EmbedResponse,
    VerifyRequest,
    VerifyResponse,
)

router = APIRouter(tags=["encoders"])


@router.post("/v1/embed", response_model=EmbedResponse, response_model_exclude_none=True)
async def embed(body: EmbedRequest, hub: HubDep, settings: SettingsDep) -> Response:
    if not body.inputs:
        raise InvalidInput("inputs is empty")
    if len(body.inputs) > settings.max_inputs:
        raise LimitExceeded(f"{len(body.inputs)} inputs; the limit is {settings.max_inputs} (ERS_MAX_INPUTS)")
    spec = hub.spec(body.encoder)
    modality = spec.modality
    values = []
    for i, x in enumerate(body.inputs):
        if not isinstance(x, dict) and modality == "record":
            raise InvalidInput(f"input {i}: this encoder takes records (JSON objects), not strings")
        kind = "record" if isinstance(x, dict) else "text" if modality == "text" else "image"
        values.append(encoder_input(kind, x, modality, settings.max_image_pixels, f"input {i}"))
    results = await hub.embed(body.encoder, values)
    vectors = np.concatenate([r.vectors for r in results]) if results else np.zeros((0, spec.dim))
    out: dict[str, Any] = {"encoder": spec.key, "dim": spec.dim, "vectors": np.ascontiguousarray(vectors, np.float32)}
    if modality == "face":
        out["faces"] = [{"input": i, **face} for i, r in enumerate(results) for face in r.faces]
    # Written straight from the float32 matrix (no per-vector lists, no response-model pass):
    # the schema above still documents it.
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _threshold(hub: HubDep, key: str, given: float | None = None) -> float:
    if given is not None:
        return given
    threshold = hub.spec(key).config.get("threshold")
    if threshold is None:
        raise InvalidInput(f"encoder {key} declares no distance threshold; pass one")
    return float(threshold)


@router.post("/v1/collections/{name}/verify", response_model=VerifyResponse)
async def verify(body: VerifyRequest, collection: CollectionDep, hub: HubDep, settings: SettingsDep) -> dict[str, Any]:
    """Same person or not: Euclidean distance between the most confident face of each image."""
    key = bound_encoder(collection)
    if hub.spec(key).modality != "face":
        raise InvalidInput(f"verify needs a face collection; '{collection.name}' uses {key}")
    a = await query_vector(collection, hub, settings, None, body.image_a)
    b = await query_vector(collection, hub, settings, None, body.image_b)
    distance = float(np.linalg.norm(a - b))
    threshold = _threshold(hub, key)
    return {"same": distance < threshold, "distance": distance, "threshold": threshold, "encoder": key}


@router.post("/v1/collections/{name}/cluster", response_model=ClusterResponse)
async def cluster(body: ClusterRequest, collection: CollectionDep, hub: HubDep) -> dict[str, Any]:
    """Group the collection's faces: items closer than the threshold end up in one cluster."""
    key = bound_encoder(collection)
    threshold = _threshold(hub, key, body.threshold)
    ids, vectors = await anyio.to_thread.run_sync(collection.all_vectors)
    groups = await anyio.to_thread.run_sync(cluster_by_distance, vectors, threshold)
    members = sorted(
        (sorted(ids[i] for i in g) for g in groups if len(g) >= body.min_size), key=lambda m: (-len(m), m[0])
    )
    clustered = sum(len(m) for m in members)
    clusters = [{"size": len(m), "ids": m} for m in members]
    return {"clusters": clusters, "unclustered": len(ids) - clustered, "threshold": threshold}
