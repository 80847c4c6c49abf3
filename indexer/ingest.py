"""Raw items -> encoder inputs -> rows to write (with their kept sources), for the API and every job runner."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from indexer.collection import Collection
from indexer.errors import InvalidInput
from indexer.kept_sources import KeptSource


def decode_base64_image(value: str, what: str) -> bytes:
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: image is not valid base64") from exc


def kept_sources_of(
    collection: Collection, items: list[dict[str, Any]], ids: list[str], versions: list[str | None]
) -> list[KeptSource | None] | None:
    """Per upserted row, the raw input it was embedded from (None for a vector the client sent);
    None altogether when the collection keeps no sources."""
    if collection.sources is None:
        return None
    by_id = {item["id"]: item for item in items}  # the last occurrence wins, as in the upsert itself
    out: list[KeptSource | None] = []
    for item_id in ids:
        item = by_id.get(item_id) or {}
        if item.get("text") is not None:
            out.append(KeptSource("text", str(item["text"]).encode("utf-8")))
        elif item.get("record") is not None:
            out.append(KeptSource.record(item["record"]))
        elif item.get("image") is not None:
            image = item["image"]
            data = image if isinstance(image, bytes) else decode_base64_image(str(image), f"item '{item_id}'")
            out.append(KeptSource("image", data))
        else:
            out.append(None)
    assert len(out) == len(versions)
    return out
