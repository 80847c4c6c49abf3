"""Turn raw inputs (text, base64 or uploaded images) into vectors with a collection's encoder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.ingest import decode_base64_image
from models.core.images import check_image
from models.core.spec import EncoderSpec
from service.runtime.encoders import EncoderHub
from service.settings import Settings

FACE_SEPARATOR = "#face"
# Query kind -> the tower role that embeds it in a multi-tower model (see ``query_encoder_key``).
# Two-tower record models: a collection bound to the item tower embeds record queries with the query tower.
QUERY_TOWER_ROLES = {"text": "text", "image": "image", "record": "query"}


def raw_input(
    text: str | None,
    image: str | bytes | None,
    modality: str,
    what: str,
    settings: Settings,
    record: dict[str, Any] | None = None,
) -> Any:
    """The encoder input for a text, image or record field, checked against the encoder's modality."""
    if record is not None:
        if modality != "record":
            raise InvalidInput(f"{what}: this collection's encoder takes {modality} input, not records")
        # Canonical JSON text: the record encoder parses it, and the embedding cache keys on it.
        return json.dumps(record, sort_keys=True, separators=(",", ":"))
    if text is not None:
        if modality != "text":
            raise InvalidInput(f"{what}: this collection's encoder takes {modality} input, not text")
        return text
    assert image is not None
    if modality not in ("image", "face"):
        raise InvalidInput(f"{what}: this collection's encoder takes {modality} input, not images")
    data = decode_base64_image(image, what) if isinstance(image, str) else image
    check_image(data, settings.max_image_pixels)
    return data


def bound_encoder(collection: Collection, encoder: str | None = None) -> str:
    """The encoder that embeds for ``collection``: ``encoder`` when the caller pinned it, else the active one."""
    encoder = encoder or collection.config.encoder
    if encoder is None:
        raise InvalidInput(f"collection '{collection.name}' has no encoder: send vectors, or create it with an encoder")
    return encoder


@dataclass
class Prepared:
    ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    payloads: list[dict[str, Any] | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


async def prepare_items(
    collection: Collection, hub: EncoderHub, settings: Settings, items: list[dict[str, Any]]
) -> Prepared:
    """Vectors for upsert: given ones as they are; raw inputs embedded in one call to the hub.

    Face encoders give one item per detected face: ``{id}#face{n}``, with the box in the payload.
    """
    out = Prepared()
    pinned = collection.config.encoder  # read once: a migration mid-request must not relabel vectors
    raw_rows: list[int] = []
    raw_inputs: list[Any] = []
    for row, item in enumerate(items):
        given = [f for f in ("vector", "text", "image", "record") if item.get(f) is not None]
        if len(given) != 1:
            raise InvalidInput(f"item '{item['id']}': give exactly one of vector, text, image or record")
        if item.get("vector") is not None:
            continue
        key = bound_encoder(collection, pinned)
        modality = hub.spec(key).modality
        what = f"item '{item['id']}'"
        raw_inputs.append(raw_input(item.get("text"), item.get("image"), modality, what, settings, item.get("record")))
        raw_rows.append(row)
    embedded = {}
    if raw_inputs:
        key = bound_encoder(collection, pinned)
        results = await hub.embed(key, raw_inputs)
        embedded = dict(zip(raw_rows, results, strict=True))
    for row, item in enumerate(items):
        payload, version = item.get("payload"), item.get("encoder_version")
        if row not in embedded:
            out.ids.append(item["id"])
            out.vectors.append(np.asarray(item["vector"], dtype=np.float64))
            out.payloads.append(payload)
            out.versions.append(version or pinned)
            continue
        result = embedded[row]
        key = bound_encoder(collection, pinned)
        if not result.faces:
            if hub.spec(key).modality == "face":
                out.skipped.append({"id": item["id"], "reason": "no face found"})
                continue
            out.ids.append(item["id"])
            out.vectors.append(result.vectors[0])
            out.payloads.append(payload)
            out.versions.append(key)
            continue
        for n, (vector, face) in enumerate(zip(result.vectors, result.faces, strict=True)):
            out.ids.append(f"{item['id']}{FACE_SEPARATOR}{n}")
            out.vectors.append(vector)
            out.payloads.append({**(payload or {}), "source_id": item["id"], "face": face})
            out.versions.append(key)
    return out


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
    kind = "record" if record is not None else "text" if text is not None else "image"
    key = query_encoder_key(bound, kind)
    spec = bound if key == bound.key else hub.spec(key)
    if spec.dim != bound.dim:
        raise InvalidInput(f"query: encoder {key} gives {spec.dim}-d vectors but {bound.key} (this collection's) "
                           f"gives {bound.dim}-d; they are not towers of one model")  # fmt: skip
    modality = spec.modality
    value = raw_input(text, image, modality, "query", settings, record)
    result = (await hub.embed(key, [value]))[0]
    if len(result.vectors) == 0:
        raise InvalidInput("query: no face found in the image")
    best = int(np.argmax([f["score"] for f in result.faces])) if result.faces else 0
    return np.asarray(result.vectors[best], dtype=np.float32)
