"""The API's side of the ingest path: request items and queries through ``indexer.ingest`` and the
encoder hub.

What is the service's here, and why it is not in ``indexer.ingest``: the hub (async, batched across
requests, cached) and the HTTP contract. An upsert request is atomic, so the first failed item
refuses it (``ingest.refusal``: 422, or 413 for an image over the pixel limit, naming the item and
the same reason a job records), except a face photo without a face, reported under ``skipped``;
and a query picks its tower and its most confident face. Everything else (modality checks,
decoding, face rows, NaN output, kept sources) is ingest's, shared with every job runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.ingest import NO_FACE, Destination, Item, ItemKind, Rows, encoder_input, no_encoder, plan, refusal, rows_of
from models.core.spec import EncoderSpec
from service.runtime.encoders import EncoderHub
from service.settings import Settings

# Query kind -> the tower role that embeds it in a multi-tower model (see ``query_encoder_key``).
# Two-tower record models: a collection bound to the item tower embeds record queries with the query tower.
QUERY_TOWER_ROLES = {"text": "text", "image": "image", "record": "query"}
FIELDS: tuple[ItemKind, ...] = ("vector", "text", "image", "record")


def bound_encoder(collection: Collection, encoder: str | None = None) -> str:
    """The encoder that embeds for ``collection``: ``encoder`` when the caller pinned it, else the active one."""
    encoder = encoder or collection.config.encoder
    if encoder is None:
        raise InvalidInput(no_encoder(collection.name))
    return encoder


def request_items(items: list[dict[str, Any]]) -> list[Item]:
    """Upsert request items as ingest items (a base64 image is decoded by ingest, once)."""
    out = []
    for item in items:
        item_id = item["id"]
        given = [f for f in FIELDS if item.get(f) is not None]
        if len(given) != 1:
            raise InvalidInput(f"item '{item_id}': give exactly one of vector, text, image or record")
        kind, value = given[0], item[given[0]]
        out.append(Item(item_id, kind, value, item.get("payload"), item.get("encoder_version")))
    return out


@dataclass
class Prepared:
    rows: Rows
    skipped: list[dict[str, str]] = field(default_factory=list)  # face photos without a face


async def prepare_upsert(collection: Collection, hub: EncoderHub, settings: Settings, items: list[Item]) -> Prepared:
    """The rows of one upsert request, all raw inputs embedded in one call to the hub; the first
    failed item refuses the request, checked before any encoding where it can be."""
    pinned = collection.config.encoder  # read once: a migration mid-request must not relabel vectors
    key = bound_encoder(collection, pinned) if any(i.kind != "vector" for i in items) else pinned
    dest = Destination(
        collection=collection.name,
        encoder=key,
        modality=hub.spec(key).modality if key is not None else None,
        dim_of=collection.dim_for,
        keep_sources=collection.sources is not None,
        max_pixels=settings.max_image_pixels,
    )
    planned = plan(items, dest)
    if planned.failures:
        raise refusal(planned.failures[min(planned.failures)])
    embedded = []
    if planned.inputs and key is not None:
        embedded = await hub.embed(key, list(planned.inputs.values()), each=True)
    rows = rows_of(items, planned, embedded, dest)
    refused = [f for f in rows.failures if f.reason != NO_FACE]
    if refused:
        raise refusal(refused[0])
    return Prepared(rows, [f.to_json() for f in rows.failures])


def query_encoder_key(spec: EncoderSpec, kind: str) -> str:
    """The encoder that embeds a ``kind`` query ("text", "image"...) for a collection bound to ``spec``.

    A multi-tower model (two-branch image–text, two-tower records) names its towers in
    ``spec.config["towers"]``, role -> key: a collection bound to the gallery tower answers a query of
    another kind with that kind's tower. Everything else embeds queries with the bound encoder itself.
    """
    towers = spec.config.get("towers")
    role = QUERY_TOWER_ROLES.get(kind)
    if isinstance(towers, dict) and role is not None and isinstance(towers.get(role), str):
        return str(towers[role])
    return spec.key


async def query_vector(
    collection: Collection,
    hub: EncoderHub,
    settings: Settings,
    text: str | None,
    image: str | bytes | None,
    record: dict[str, Any] | None = None,
) -> np.ndarray:
    """One query vector from text, an image (a face collection uses the most confident face) or a record."""
    bound = hub.spec(bound_encoder(collection))
    kind, value = ("record", record) if record is not None else ("text", text) if text is not None else ("image", image)
    key = query_encoder_key(bound, kind)
    spec = bound if key == bound.key else hub.spec(key)
    if spec.dim != bound.dim:
        raise InvalidInput(f"query: encoder {key} gives {spec.dim}-d vectors but {bound.key} (this collection's) "
                           f"gives {bound.dim}-d; they are not towers of one model")  # fmt: skip
    value = encoder_input(kind, value, spec.modality, settings.max_image_pixels, "query")
    result = (await hub.embed(key, [value]))[0]
    if len(result.vectors) == 0:
        raise InvalidInput(f"query: {NO_FACE} in the image")
    best = int(np.argmax([f["score"] for f in result.faces])) if result.faces else 0
    return np.asarray(result.vectors[best], dtype=np.float32)
