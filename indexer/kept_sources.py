"""Kept sources: the raw input of each item a collection embedded itself (``keep_sources``), so a
background backfill can re-encode it with a newer encoder after a migration.

One file per item under ``<collection dir>/sources/<hh>/<sha256 of the id>``: a JSON header line
(id, kind, sha256 and length of the data) and the data — UTF-8 text, the image's bytes as uploaded, or
a record as canonical JSON. Item ids are client strings, so only their hash names a file; the header's
id and digest are checked on read (a torn or foreign file reads as missing, never as someone else's
input). A batch is published at once by ``models.core.durable.publish_files``: each file replaced
atomically, each touched directory synced once, nothing changed when a write fails. The collection
calls ``replace`` under its writer lock, before the write is logged, so an acknowledged item always
has its source; deleting the collection directory deletes them all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from indexer.errors import LimitExceeded
from models.core.durable import FileData, publish_files

SourceKind = Literal["text", "image", "record"]
KINDS: tuple[str, ...] = ("text", "image", "record")
MAX_SOURCE_BYTES = 64 * 1024 * 1024  # one item's raw input; request bodies are smaller than this anyway
SOURCES_DIR = "sources"


@dataclass(frozen=True)
class KeptSource:
    kind: SourceKind
    data: bytes

    @classmethod
    def of(cls, value: Any) -> KeptSource | None:
        """From an encoder input (text, image bytes, record dict), so that ``value()`` gives it back;
        None for anything else (nothing is kept)."""
        if isinstance(value, bytes):
            return cls("image", value)
        if isinstance(value, dict):
            return cls.record(value)
        if isinstance(value, str):
            return cls("text", value.encode("utf-8"))
        return None

    def to_json(self) -> list[str]:
        return [self.kind, base64.b64encode(self.data).decode()]

    @classmethod
    def from_json(cls, doc: Any) -> KeptSource | None:
        if not isinstance(doc, list) or len(doc) != 2 or doc[0] not in KINDS:
            return None
        return cls(doc[0], base64.b64decode(doc[1]))

    @classmethod
    def record(cls, value: dict[str, Any] | str) -> KeptSource:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        return cls("record", text.encode("utf-8"))

    def value(self) -> Any:
        """The encoder input again: text, image bytes, or the record dict."""
        if self.kind == "text":
            return self.data.decode("utf-8")
        if self.kind == "record":
            return json.loads(self.data)
        return self.data


class KeptSources:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_of(self, item_id: str) -> Path:
        digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / digest

    def replace(self, ids: Sequence[str], sources: Sequence[KeptSource | None]) -> None:
        """Keep ``sources[i]`` for ``ids[i]`` durably; None drops the id's kept source (its new vector
        came from elsewhere, so the old input no longer describes it)."""
        for item_id, source in zip(ids, sources, strict=True):
            if source is not None and len(source.data) > MAX_SOURCE_BYTES:
                raise LimitExceeded(f"item '{item_id}': its input is {len(source.data)} bytes; kept sources "
                                    f"are limited to {MAX_SOURCE_BYTES}")  # fmt: skip
        changes: list[tuple[Path, FileData | None]] = []
        for item_id, source in zip(ids, sources, strict=True):
            if source is None:
                changes.append((self.path_of(item_id), None))
                continue
            header = {"id": item_id, "kind": source.kind, "sha256": hashlib.sha256(source.data).hexdigest(),
                      "bytes": len(source.data)}  # fmt: skip
            changes.append((self.path_of(item_id), (json.dumps(header).encode() + b"\n", source.data)))
        publish_files(changes)

    def delete(self, ids: Sequence[str]) -> None:
        self.replace(ids, [None] * len(ids))

    def get(self, item_id: str) -> KeptSource | None:
        """The kept input of ``item_id``; None when there is none (or the file is not intact)."""
        try:
            raw = self.path_of(item_id).read_bytes()
        except FileNotFoundError:
            return None
        head, sep, data = raw.partition(b"\n")
        try:
            header = json.loads(head) if sep else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if (
            not isinstance(header, dict)
            or header.get("id") != item_id
            or header.get("kind") not in KINDS
            or header.get("bytes") != len(data)
            or header.get("sha256") != hashlib.sha256(data).hexdigest()
        ):
            return None
        return KeptSource(header["kind"], data)

    def count(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(1 for p in self.directory.glob("*/*") if not p.name.startswith("."))
