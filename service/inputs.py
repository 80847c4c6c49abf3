"""Turn raw inputs (text, base64 or uploaded images) into vectors with a collection's encoder."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.collection import Collection
from indexer.errors import InvalidInput
from models.images import check_image
from service.encoders import EncoderHub
from service.settings import Settings

FACE_SEPARATOR = "#face"


def decode_base64_image(value: str, what: str) -> bytes:
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: image is not valid base64") from exc


def raw_input(text: str | None, image: str | bytes | None, modality: str, what: str, settings: Settings) -> Any:
    """The encoder input for a text or image field, checked against the encoder's modality."""
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


def bound_encoder(collection: Collection) -> str:
    if collection.config.encoder is None:
        raise InvalidInput(f"collection '{collection.name}' has no encoder: send vectors, or create it with an encoder")
    return collection.config.encoder


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
    raw_rows: list[int] = []
    raw_inputs: list[Any] = []
    for row, item in enumerate(items):
        given = [f for f in ("vector", "text", "image") if item.get(f) is not None]
        if len(given) != 1:
            raise InvalidInput(f"item '{item['id']}': give exactly one of vector, text or image")
        if item.get("vector") is not None:
            continue
        key = bound_encoder(collection)
        modality = hub.spec(key).modality
        raw_inputs.append(raw_input(item.get("text"), item.get("image"), modality, f"item '{item['id']}'", settings))
        raw_rows.append(row)
    embedded = {}
    if raw_inputs:
        key = bound_encoder(collection)
        results = await hub.embed(key, raw_inputs)
        embedded = dict(zip(raw_rows, results, strict=True))
    for row, item in enumerate(items):
        payload, version = item.get("payload"), item.get("encoder_version")
        if row not in embedded:
            out.ids.append(item["id"])
            out.vectors.append(np.asarray(item["vector"], dtype=np.float64))
            out.payloads.append(payload)
            out.versions.append(version or collection.config.encoder)
            continue
        result = embedded[row]
        key = bound_encoder(collection)
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


async def query_vector(
    collection: Collection, hub: EncoderHub, settings: Settings, text: str | None, image: str | bytes | None
) -> np.ndarray:
    """One query vector from text or an image (a face collection uses the most confident face)."""
    key = bound_encoder(collection)
    modality = hub.spec(key).modality
    value = raw_input(text, image, modality, "query", settings)
    result = (await hub.embed(key, [value]))[0]
    if len(result.vectors) == 0:
        raise InvalidInput("query: no face found in the image")
    best = int(np.argmax([f["score"] for f in result.faces])) if result.faces else 0
    return np.asarray(result.vectors[best], dtype=np.float32)
