"""What the client sends: items, queries and job uploads, turned into the API's JSON and multipart parts.

Images may be given as raw bytes (a file's content) or as base64 text; bytes are base64-encoded here,
because the JSON API takes base64.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Image = bytes | str  # raw image bytes, or already base64-encoded text
FilePart = tuple[str, tuple[str, bytes, str]]  # httpx's ("field", (filename, content, content type))
OCTET = "application/octet-stream"


def image_text(image: Image) -> str:
    """An image as the JSON API takes it: base64 text."""
    return base64.b64encode(image).decode() if isinstance(image, bytes) else image


def compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that were given (None means "not given": the server's default applies)."""
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class NewItem:
    """An item to upsert: an ``id`` and exactly one of ``vector``, ``text``, ``image`` or ``record``
    (the raw ones are embedded by the collection's encoder)."""

    id: str
    vector: Sequence[float] | None = None
    text: str | None = None
    image: Image | None = None
    record: Mapping[str, Any] | None = None
    payload: Mapping[str, Any] | None = None
    encoder_version: str | None = None  # name@version that made the vector; default: the collection's

    def to_json(self) -> dict[str, Any]:
        return wire_json(self)


def wire_json(item: NewItem | Mapping[str, Any]) -> dict[str, Any]:
    """An item or a query (a ``NewItem`` or a mapping of the API's fields) as its JSON object."""
    body = compact(item.__dict__ if isinstance(item, NewItem) else item)
    vector: Any = body.get("vector")
    if hasattr(vector, "tolist"):  # a numpy row: its float32 values are not JSON
        body["vector"] = vector.tolist()
    elif isinstance(vector, tuple):
        body["vector"] = list(vector)
    if "image" in body:
        body["image"] = image_text(body["image"])
    for key in ("record", "payload", "filter"):
        if isinstance(body.get(key), Mapping):
            body[key] = dict(body[key])
    return body


@dataclass
class Query:
    """One search: exactly one of ``vector``, ``id`` (a stored item's vector; the item is left out),
    ``text``, ``image`` or ``record``, the ``k`` best, and an optional payload ``filter``
    (``{"color": "red"}``, ``{"tag": {"in": [...]}}``, ``{"price": {"gte": 10, "lt": 20}}``)."""

    vector: Sequence[float] | None = None
    id: str | None = None
    text: str | None = None
    image: Image | None = None
    record: Mapping[str, Any] | None = None
    k: int = 10
    filter: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return wire_json(self.__dict__)


def query_json(query: Query | Mapping[str, Any]) -> dict[str, Any]:
    """A query (a ``Query`` or a plain mapping with the API's fields) as its JSON object."""
    return query.to_json() if isinstance(query, Query) else wire_json(query)


@dataclass
class Upload:
    """A job upload: a manifest (.jsonl or .csv) and the files its ``path`` column names."""

    manifest_name: str
    manifest: bytes
    files: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return "text/csv" if self.manifest_name.lower().endswith(".csv") else "application/x-ndjson"

    def parts(self) -> list[FilePart]:
        parts: list[FilePart] = [("manifest", (self.manifest_name, self.manifest, self.content_type))]
        return parts + [("file", (name, data, OCTET)) for name, data in self.files]

    @classmethod
    def from_path(cls, source: Path) -> Upload:
        """A local directory (a manifest is made: ids are relative paths, payload ``{path}``) or a
        local manifest; every file it names is sent under a unique upload name (two folders may hold
        files of the same name). A CSV manifest is sent as it is: its paths must name files sent beside it."""
        if source.is_dir():
            lines, files = [], []
            paths = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
            for n, path in enumerate(paths):
                rel = path.relative_to(source).as_posix()
                name = f"{n:06d}-{path.name}"
                lines.append(json.dumps({"id": rel, "path": name, "payload": {"path": rel}}))
                files.append((name, path.read_bytes()))
            return cls("manifest.jsonl", "\n".join(lines).encode(), files)
        data = source.read_bytes()
        if source.suffix.lower() == ".csv":
            return cls(source.name, data)
        lines, files = [], []
        for n, line in enumerate(data.decode().splitlines()):
            record = json.loads(line) if line.strip() else None
            named = record.get("path") if isinstance(record, dict) else None
            if isinstance(record, dict) and isinstance(named, str) and (source.parent / named).is_file():
                record["path"] = f"{n:06d}-{os.path.basename(named)}"
                files.append((record["path"], (source.parent / named).read_bytes()))
                line = json.dumps(record)
            lines.append(line)
        return cls(source.name, "\n".join(lines).encode(), files)
