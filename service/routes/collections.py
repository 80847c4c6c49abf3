"""Collection and item endpoints."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from indexer.collection import Collection
from indexer.errors import InvalidInput, ItemNotFound, LimitExceeded
from indexer.validation import check_payload, load_json
from service import wire
from service.deps import CollectionDep, HubDep, ManagerDep, SettingsDep
from service.runtime.embedding import prepare_upsert, request_items
from service.schemas import (
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    DeleteResponse,
    ItemIn,
    ItemOut,
    UpsertRequest,
    UpsertResponse,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MULTIPART_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/UpsertRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
                        "id": {"type": "array", "items": {"type": "string"}, "description": "default: file name"},
                        "payload": {"type": "string", "description": "JSON object applied to every file"},
                    },
                }
            },
        }
    }
}


def describe(collection: Collection) -> dict[str, Any]:
    cfg = collection.config
    return {
        "name": cfg.name,
        "dim": cfg.dim,
        "metric": cfg.metric,
        "encoder": cfg.encoder,
        "index": cfg.index,
        "created_at": cfg.created_at,
        "keep_sources": cfg.keep_sources,
        **{k: v for k, v in collection.stats().items() if k != "log_offset"},
    }


@router.post("", status_code=201, response_model=CollectionInfo)
def create_collection(body: CollectionCreate, manager: ManagerDep, hub: HubDep) -> dict[str, Any]:
    dim, metric = body.dim, body.metric
    if body.encoder is not None:
        spec = hub.spec(body.encoder)  # 422 naming `ers zoo pull` when it is not there
        if dim is not None and dim != spec.dim:
            raise InvalidInput(f"dim {dim} does not match encoder {spec.key}, which makes {spec.dim}-d vectors")
        dim, metric = spec.dim, metric or spec.metric
        if body.keep_sources and spec.modality == "face":
            raise InvalidInput("keep_sources is not available for face encoders (one image gives several items)")
    if dim is None:
        raise InvalidInput("dim is required for a collection without an encoder")
    collection = manager.create(body.name, dim, metric or "cosine", body.encoder, body.index, body.keep_sources)
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


ITEM_FIELDS = ("vector", "vector_b64", "text", "image", "record")


async def _items_from_request(request: Request) -> list[dict[str, Any]]:
    fmt = wire.body_format(request, multipart=True)
    if fmt == "multipart":
        form = await request.form()
        files = [f for f in form.getlist("file") if not isinstance(f, str)]
        if not files:
            raise InvalidInput("multipart upload needs one or more 'file' parts")
        ids = [str(i) for i in form.getlist("id")]
        if ids and len(ids) != len(files):
            raise InvalidInput(f"{len(ids)} 'id' parts for {len(files)} files")
        payload = None
        if "payload" in form:
            payload = load_json(str(form["payload"]), "payload")
            check_payload(payload)  # once for every file (ingest checks each item's again)
        items = []
        for n, upload in enumerate(files):
            items.append({"id": ids[n] if ids else upload.filename or f"upload-{n}", "image": await upload.read(),
                          "payload": payload})  # fmt: skip
        return items
    body = await wire.read(request, UpsertRequest, fmt, "items")
    return [_item(item) for item in body.items]


def _item(item: ItemIn) -> dict[str, Any]:
    """A request item for ``request_items``: a ``vector_b64`` (or msgpack ``bin``) becomes its float32
    ``vector``, which ingest checks like a list (dimension of its version, finite)."""
    given = [f for f in ITEM_FIELDS if getattr(item, f) is not None]
    if len(given) != 1:
        raise InvalidInput(f"item '{item.id}': give exactly one of vector, vector_b64, text, image or record")
    out = item.model_dump(exclude={"vector_b64"})
    if item.vector_b64 is not None:
        out["vector"] = wire.floats_of(item.vector_b64, f"item '{item.id}': vector")
    return out


@router.put(
    "/{name}/items", response_model=UpsertResponse, response_model_exclude_none=True, openapi_extra=MULTIPART_DOC
)
async def upsert_items(request: Request, collection: CollectionDep, settings: SettingsDep, hub: HubDep) -> Response:
    items = await _items_from_request(request)
    if not items:
        raise InvalidInput("items is empty")
    if len(items) > settings.max_batch:
        raise LimitExceeded(f"{len(items)} items in one request; the limit is {settings.max_batch} (ERS_MAX_BATCH)")
    prepared = await prepare_upsert(collection, hub, settings, request_items(items))
    rows, n = prepared.rows, 0
    if rows.ids:
        sources = rows.sources if collection.sources is not None else None
        n = await anyio.to_thread.run_sync(
            lambda: collection.upsert(
                rows.ids, rows.vectors, rows.payloads, rows.versions, sources, thumbnails=rows.thumbnails
            )
        )
    return wire.respond(request, {"upserted": n, **({"skipped": prepared.skipped} if prepared.skipped else {})})


@router.get("/{name}/items/{item_id:path}", response_model=ItemOut, response_model_exclude_unset=True)
def get_item(item_id: str, collection: CollectionDep, with_vector: bool = Query(False)) -> dict[str, Any]:
    item = collection.get(item_id, with_vector=with_vector)
    out: dict[str, Any] = {"id": item.id, "payload": item.payload, "encoder_version": item.encoder_version}
    if with_vector and item.vector is not None:
        out["vector"] = item.vector.tolist()
    return out


@router.delete("/{name}/items/{item_id:path}", response_model=DeleteResponse)
def delete_item(item_id: str, collection: CollectionDep) -> dict[str, Any]:
    if collection.delete([item_id]) == 0:
        raise ItemNotFound(collection.name, item_id)
    return {"deleted": 1}
