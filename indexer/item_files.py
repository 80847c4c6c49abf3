"""One file per item beside a collection, for what belongs to an item but not to its vector: kept
sources (``indexer.kept_sources``) and thumbnails (``indexer.thumbnails``).

A file lives at ``<directory>/<hh>/<sha256 of the id>`` (ids are client strings, so only their hash
names a file) and holds a JSON header line — the id, the data's length and sha256, plus the owner's
own fields — then the data. ``read`` checks the id, length and digest, so a torn or foreign file reads
as missing, never as another item's. ``write`` publishes a batch at once with
``models.core.durable.publish_files`` (each file replaced atomically, each directory synced once).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.core.durable import FileData, publish_files


class ItemFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_of(self, item_id: str) -> Path:
        digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / digest

    def write(self, entries: Sequence[tuple[str, dict[str, Any] | None, bytes]]) -> None:
        """``(id, fields, data)`` per item; ``fields`` None drops the item's file."""
        changes: list[tuple[Path, FileData | None]] = []
        for item_id, fields, data in entries:
            if fields is None:
                changes.append((self.path_of(item_id), None))
                continue
            header = {"id": item_id, **fields, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            changes.append((self.path_of(item_id), (json.dumps(header).encode() + b"\n", data)))
        publish_files(changes)

    def read(self, item_id: str) -> tuple[dict[str, Any], bytes] | None:
        """The header and data of ``item_id``'s file; None when there is none or it is not intact."""
        try:
            raw = self.path_of(item_id).read_bytes()
        except FileNotFoundError:
            return None
        head, sep, data = raw.partition(b"\n")
        try:
            header = json.loads(head) if sep else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if (
            not isinstance(header, dict)
            or header.get("id") != item_id
            or header.get("bytes") != len(data)
            or header.get("sha256") != hashlib.sha256(data).hexdigest()
        ):
            return None
        return header, data

    def count(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(1 for p in self.directory.glob("*/*") if not p.name.startswith("."))
