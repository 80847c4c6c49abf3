"""Sources: a server directory, a JSONL/CSV manifest, or an upload staged under the data dir.

Every source enumerates the same entries in the same order on every run (directory walk sorted,
manifest in line order), so batch ``seq`` numbers are stable and a resumed job skips exactly the
batches already counted. Ids are stable too: the manifest's ``id``, or the file's path relative
to the directory, so re-running a job replaces items instead of adding copies.

Enumeration is cheap (names and manifest lines); file bytes are read later, batch by batch, by
``load`` (with the per-file path re-check), so reading overlaps encoding.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInput
from indexer.jobs.errors import ItemError, SourceInvalid
from indexer.jobs.model import Batch, Entry, Failure, Item, ItemKind
from indexer.jobs.paths import check_source_path, read_file
from indexer.validation import load_json

FIELDS: tuple[ItemKind, ...] = ("path", "text", "vector", "record")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")
JSON_CELLS = ("vector", "record", "payload")  # CSV cells that hold JSON
UPLOAD_FILES = "files"


def resolve(source: dict[str, Any], roots: Sequence[Path]) -> dict[str, Any]:
    """Check a client's ``{type, path}`` at submit time; the stored form holds the real path."""
    kind, raw = source.get("type"), source.get("path")
    if kind not in ("directory", "manifest"):
        raise SourceInvalid("source.type must be 'directory' or 'manifest' (or upload a manifest)")
    if not isinstance(raw, str) or not raw:
        raise SourceInvalid("source.path must be a non-empty string")
    real = check_source_path(raw, roots)
    if kind == "directory" and not real.is_dir():
        raise SourceInvalid(f"'{raw}' is not a directory on the server")
    if kind == "manifest":
        if not real.is_file():
            raise SourceInvalid(f"'{raw}' is not a file on the server")
        if real.suffix.lower() not in MANIFEST_SUFFIXES:
            raise SourceInvalid(f"'{raw}': a manifest must be JSON lines (.jsonl, .ndjson) or .csv")
    return {"type": kind, "path": str(real)}


class Source:
    """Entries of one stored source spec (``resolve``'s output, or an upload's)."""

    def __init__(self, spec: dict[str, Any], roots: Sequence[Path], pattern: str | None = None) -> None:
        self.kind = spec["type"]
        self.path = Path(spec["path"])
        self.pattern = pattern
        # An upload's files may only be read from its own staging directory.
        self.roots = [self.path.parent / UPLOAD_FILES] if self.kind == "upload" else list(roots)

    def entries(self) -> Iterator[Entry]:
        if self.kind == "directory":
            yield from self._walk()
        else:
            yield from self._manifest()

    def count(self) -> int:
        return sum(1 for _ in self.entries())

    def batches(self, size: int, skip: set[int] | None = None) -> Iterator[Batch]:
        chunk: list[Entry] = []
        seq = 0
        for entry in self.entries():
            chunk.append(entry)
            if len(chunk) == size:
                if not skip or seq not in skip:
                    yield Batch(seq, chunk)
                chunk, seq = [], seq + 1
        if chunk and (not skip or seq not in skip):
            yield Batch(seq, chunk)

    # -- directory ---------------------------------------------------------------------------
    def _walk(self) -> Iterator[Entry]:
        if not self.path.is_dir():
            raise SourceInvalid(f"source directory {self.path} is gone")
        # Symlinked directories are not descended into; symlinked files are listed and checked
        # against the roots when read (an escaping one fails with its reason).
        for top, dirs, files in os.walk(self.path, onerror=None, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                full = Path(top) / name
                rel = full.relative_to(self.path).as_posix()
                if self.pattern and not (fnmatch.fnmatch(name, self.pattern) or fnmatch.fnmatch(rel, self.pattern)):
                    continue
                yield Item(rel, "path", full, {"path": rel})

    # -- manifests ---------------------------------------------------------------------------
    def _manifest(self) -> Iterator[Entry]:
        try:
            data = read_file(self.path, [self.path.parent] if self.kind == "upload" else self.roots)
        except ItemError as exc:
            raise SourceInvalid(f"manifest {self.path}: {exc.reason}") from exc
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceInvalid(f"manifest {self.path} is not UTF-8: {exc}") from exc
        if self.path.suffix.lower() == ".csv":
            yield from self._csv(text)
            return
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = load_json(line, f"line {number}")
            except InvalidInput as exc:
                yield Failure(f"line {number}", exc.message)
                continue
            yield self._item(record, f"line {number}")

    def _csv(self, text: str) -> Iterator[Entry]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise SourceInvalid(f"manifest {self.path}: a CSV manifest needs a header row with an 'id' column")
        for number, row in enumerate(reader, 2):
            where = f"line {number}"
            record: dict[str, Any] = {}
            try:
                for key, cell in row.items():
                    if key is None or cell is None or cell == "":
                        continue  # surplus cells, or an empty cell: the field is absent
                    record[key] = load_json(cell, f"{where}: the '{key}' cell") if key in JSON_CELLS else cell
            except InvalidInput as exc:
                yield Failure(str(row.get("id") or where), exc.message)
                continue
            yield self._item(record, where)

    def _item(self, record: Any, where: str) -> Entry:
        if not isinstance(record, dict):
            return Failure(where, "a manifest line must be a JSON object")
        raw_id = record.get("id")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or raw_id == "":
            return Failure(where, "missing field 'id' (a string)")
        item_id = str(raw_id)
        given = [f for f in FIELDS if record.get(f) is not None]
        if len(given) != 1:
            return Failure(item_id, f"give exactly one of {', '.join(FIELDS)} (got {given or 'none'})")
        payload = record.get("payload")
        if payload is not None and not isinstance(payload, dict):
            return Failure(item_id, "payload must be a JSON object")
        kind, value = given[0], record[given[0]]
        if kind == "path":
            if not isinstance(value, str):
                return Failure(item_id, "path must be a string")
            rel = Path(value)
            if ".." in rel.parts or "://" in value or (self.kind == "upload" and rel.is_absolute()):
                return Failure(item_id, f"refused path '{value}': no '..', URLs or (for uploads) absolute paths")
            base = self.path.parent / UPLOAD_FILES if self.kind == "upload" else self.path.parent
            value = base / rel
        elif kind == "text" and not isinstance(value, str):
            return Failure(item_id, "text must be a string")
        elif kind == "record" and not isinstance(value, dict):
            return Failure(item_id, "record must be a JSON object")
        elif kind == "vector" and not isinstance(value, list):
            return Failure(item_id, "vector must be a list of numbers")
        return Item(item_id, kind, value, payload)


def load(entries: list[Entry], roots: Sequence[Path]) -> list[Entry]:
    """Read the files of path items (re-checking each against the roots); a file that cannot be
    read becomes that item's failure."""
    out: list[Entry] = []
    for entry in entries:
        if isinstance(entry, Item) and entry.kind == "path" and isinstance(entry.value, Path):
            try:
                entry = Item(entry.id, "path", read_file(entry.value, roots), entry.payload)
            except ItemError as exc:
                entry = Failure(entry.id, exc.reason)
        out.append(entry)
    return out
