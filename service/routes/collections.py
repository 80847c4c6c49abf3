"""Collection and item endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from indexer.collection import Collection
from indexer.errors import InvalidInput, ItemNotFound, LimitExceeded
from service.deps import CollectionDep, ManagerDep, SettingsDep
from service.schemas import (
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    DeleteResponse,
    ItemOut,
    UpsertRequest,
    UpsertResponse,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def describe(collection: Collection) -> dict[str, object]:
    cfg = collection.config
    return {
        "name": cfg.name,
        "dim": cfg.dim,
        "metric": cfg.metric,
        "encoder": cfg.encoder,
        "index": cfg.index,
        "created_at": cfg.created_at,
        **{k: v for k, v in collection.stats().items() if k != "log_offset"},
    }


@router.post("", status_code=201, response_model=CollectionInfo)
def create_collection(body: CollectionCreate, manager: ManagerDep) -> dict[str, Any]:
    if body.dim is None:
        raise InvalidInput("dim is required for a collection without an encoder")
    collection = manager.create(body.name, body.dim, body.metric, body.encoder, body.index)
    return describe(collection)


@router.get("", response_model=CollectionList)
def list_collections(manager: ManagerDep) -> dict[str, Any]:
    return {"collections": [describe(c) for c in manager.list()]}


@router.get("/{name}", response_model=CollectionInfo)
def get_collection(collection: CollectionDep) -> dict[str, Any]:
    return describe(collection)


@router.delete("/{name}", status_code=204)
def delete_collection(name: str, manager: ManagerDep) -> Response:
    manager.delete(name)
    return Response(status_code=204)


@router.put("/{name}/items", response_model=UpsertResponse)
def upsert_items(body: UpsertRequest, collection: CollectionDep, settings: SettingsDep) -> dict[str, Any]:
    if not body.items:
        raise InvalidInput("items is empty")
    if len(body.items) > settings.max_batch:
        raise LimitExceeded(
            f"{len(body.items)} items in one request; the limit is {settings.max_batch} (ERS_MAX_BATCH)"
        )
    dim = collection.config.dim
    for item in body.items:
        if len(item.vector) != dim:
            raise InvalidInput(f"item '{item.id}': vector has dimension {len(item.vector)}, collection expects {dim}")
    n = collection.upsert(
        [item.id for item in body.items],
        [item.vector for item in body.items],
        [item.payload for item in body.items],
        [item.encoder_version or collection.config.encoder for item in body.items],
    )
    return {"upserted": n}


@router.get("/{name}/items/{item_id}", response_model=ItemOut, response_model_exclude_unset=True)
def get_item(item_id: str, collection: CollectionDep, with_vector: bool = Query(False)) -> dict[str, Any]:
    item = collection.get(item_id, with_vector=with_vector)
    out: dict[str, object] = {"id": item.id, "payload": item.payload, "encoder_version": item.encoder_version}
    if with_vector and item.vector is not None:
        out["vector"] = item.vector.tolist()
    return out


@router.delete("/{name}/items/{item_id}", response_model=DeleteResponse)
def delete_item(item_id: str, collection: CollectionDep) -> dict[str, Any]:
    if collection.delete([item_id]) == 0:
        raise ItemNotFound(collection.name, item_id)
    return {"deleted": 1}
