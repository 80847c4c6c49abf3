"""Collections, items, search, embeddings, faces and health: the operations of REST API v1 that
read and write data (written once for both clients; see ``service.client.call``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.client.call import Call, nothing, operation, segment
from service.client.inputs import OCTET, FilePart, Image, NewItem, Query, compact, image_text, query_json, wire_json
from service.client.types import (
    BatchSearchResult,
    Clusters,
    Collection,
    Embeddings,
    Health,
    Item,
    SearchResult,
    UpsertResult,
    Verification,
)

COLLECTIONS = "/v1/collections"


def _collection(name: str, rest: str = "") -> str:
    return f"{COLLECTIONS}/{segment(name)}{rest}"


def _collections(body: Any) -> list[Collection]:
    return [Collection.model_validate(c) for c in body["collections"]]


def _deleted(body: Any) -> int:
    return int(body["deleted"])


class DataOperations:
    # -- collections -----------------------------------------------------------------------------
    @operation
    def create_collection(
        self,
        name: str,
        dim: int | None = None,
        *,
        metric: str | None = None,
        encoder: str | None = None,
        index: str = "auto",
        keep_sources: bool = False,
    ) -> Call[Collection]:
        """Create a collection of ``dim``-d vectors, or one bound to ``encoder`` (name@version: its dim
        and metric by default), which then takes raw text, images or records. ``index``: "auto" or a
        FAISS factory string. ``keep_sources``: keep raw inputs for a later background backfill."""
        fields = {"name": name, "dim": dim, "metric": metric, "encoder": encoder, "index": index}
        body = compact({**fields, "keep_sources": keep_sources or None})
        return Call("POST", COLLECTIONS, Collection.model_validate, json=body)

    @operation
    def list_collections(self) -> Call[list[Collection]]:
        return Call("GET", COLLECTIONS, _collections)

    @operation
    def get_collection(self, name: str) -> Call[Collection]:
        return Call("GET", _collection(name), Collection.model_validate)

    @operation
    def delete_collection(self, name: str) -> Call[None]:
        """Delete a collection and all its items."""
        return Call("DELETE", _collection(name), nothing)

    # -- items -----------------------------------------------------------------------------------
    @operation
    def upsert(self, collection: str, items: Sequence[NewItem | Mapping[str, Any]]) -> Call[UpsertResult]:
        """Insert or replace items (``NewItem`` or mappings of the API's fields; images as bytes or
        base64). A batch is atomic: a rejected one writes nothing."""
        body = {"items": [wire_json(item) for item in items]}
        return Call("PUT", _collection(collection, "/items"), UpsertResult.model_validate, json=body)

    @operation
    def upsert_files(
        self,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        ids: Sequence[str] | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Call[UpsertResult]:
        """Upload image files ``(file name, bytes)`` as a multipart form; ids default to the file
        names, and ``payload`` goes on every item."""
        parts: list[FilePart] = [("file", (name, data, OCTET)) for name, data in files]
        form: dict[str, Any] = {"id": list(ids)} if ids is not None else {}
        if payload is not None:
            form["payload"] = json.dumps(dict(payload))
        path = _collection(collection, "/items")
        return Call("PUT", path, UpsertResult.model_validate, data=form or None, files=parts)

    @operation
    def get_item(self, collection: str, item_id: str, *, with_vector: bool = False) -> Call[Item]:
        """An item's payload and ``encoder_version`` (and its vector, bit-exact as stored, when asked)."""
        params = {"with_vector": "true"} if with_vector else None
        path = _collection(collection, f"/items/{segment(item_id)}")
        return Call("GET", path, Item.model_validate, params=params)

    @operation
    def delete_item(self, collection: str, item_id: str) -> Call[int]:
        """Delete one item; returns the number deleted (1; a missing item raises ``NotFound``)."""
        return Call("DELETE", _collection(collection, f"/items/{segment(item_id)}"), _deleted)

    # -- search ----------------------------------------------------------------------------------
    @operation
    def search(
        self,
        collection: str,
        *,
        vector: Sequence[float] | None = None,
        id: str | None = None,
        text: str | None = None,
        image: Image | None = None,
        record: Mapping[str, Any] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> Call[SearchResult]:
        """The ``k`` best items for exactly one of ``vector``, ``id`` (a stored item's vector; the
        item is left out), ``text``, ``image`` or ``record``; ``filter`` narrows by payload."""
        query = Query(vector=vector, id=id, text=text, image=image, record=record, k=k, filter=filter)
        return Call("POST", _collection(collection, "/search"), SearchResult.model_validate, json=query.to_json())

    @operation
    def search_batch(self, collection: str, queries: Sequence[Query | Mapping[str, Any]]) -> Call[BatchSearchResult]:
        """Several queries in one request: ``results[i]`` answers ``queries[i]``."""
        body = {"queries": [query_json(q) for q in queries]}
        return Call("POST", _collection(collection, "/search/batch"), BatchSearchResult.model_validate, json=body)

    # -- encoders and faces ----------------------------------------------------------------------
    @operation
    def embed(self, encoder: str, inputs: Sequence[str | bytes | Mapping[str, Any]]) -> Call[Embeddings]:
        """Vectors from an encoder (name@version): texts, images (bytes or base64) or records."""
        values = [image_text(x) if isinstance(x, bytes) else x if isinstance(x, str) else dict(x) for x in inputs]
        return Call("POST", "/v1/embed", Embeddings.model_validate, json={"encoder": encoder, "inputs": values})

    @operation
    def verify(self, collection: str, image_a: Image, image_b: Image) -> Call[Verification]:
        """Face collections: are the most confident faces of two images the same person?"""
        body = {"image_a": image_text(image_a), "image_b": image_text(image_b)}
        return Call("POST", _collection(collection, "/verify"), Verification.model_validate, json=body)

    @operation
    def cluster(self, collection: str, *, threshold: float | None = None, min_size: int = 2) -> Call[Clusters]:
        """Face collections: groups of items closer than ``threshold`` (default: the encoder's)."""
        body = compact({"threshold": threshold, "min_size": min_size})
        return Call("POST", _collection(collection, "/cluster"), Clusters.model_validate, json=body)

    # -- health ----------------------------------------------------------------------------------
    @operation
    def healthz(self) -> Call[Health]:
        """Liveness: the process answers."""
        return Call("GET", "/healthz", Health.model_validate)

    @operation
    def readyz(self) -> Call[Health]:
        """Readiness: the metadata store is reachable (``Unavailable`` when it is not)."""
        return Call("GET", "/readyz", Health.model_validate)
