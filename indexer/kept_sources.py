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
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from indexer.errors import LimitExceeded
from indexer.item_files import ItemFiles

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


class KeptSources(ItemFiles):
    def replace(self, ids: Sequence[str], sources: Sequence[KeptSource | None]) -> None:
        """Keep ``sources[i]`` for ``ids[i]`` durably; None drops the id's kept source (its new vector
        came from elsewhere, so the old input no longer describes it)."""
        for item_id, source in zip(ids, sources, strict=True):
            if source is not None and len(source.data) > MAX_SOURCE_BYTES:
                raise LimitExceeded(f"item '{item_id}': its input is {len(source.data)} bytes; kept sources "
                                    f"are limited to {MAX_SOURCE_BYTES}")  # fmt: skip
        self.write(
            [(i, None, b"") if s is None else (i, {"kind": s.kind}, s.data) for i, s in zip(ids, sources, strict=True)]
        )

    def delete(self, ids: Sequence[str]) -> None:
        self.replace(ids, [None] * len(ids))

    def get(self, item_id: str) -> KeptSource | None:
        """The kept input of ``item_id``; None when there is none (or the file is not intact)."""
        found = self.read(item_id)
        if found is None or found[0].get("kind") not in KINDS:
            return None
        return KeptSource(found[0]["kind"], found[1])
