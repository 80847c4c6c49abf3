"""What a reader process (``indexer.reader``) reads of a data directory another process owns, without
writing a byte of it: the metadata store opened read-only, and a collection's log read from a position on.

The owner appends a record (fsynced) before it applies it to the store, and the store records the
offset it has applied in the same transaction as the items; a reader reads the log only up to that
offset, so every record it applies is complete, durable and already in the store (an id it returns
can always be read back from the store).
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

from indexer.store.base import MetadataStore
from indexer.store.sqlite import SqliteStore
from indexer.wal import HEADER, MAGIC, segment_bases, segment_name


class LogTruncated(Exception):
    """The records a reader needs next were dropped by the owner (old segments go after snapshots):
    the reader reloads the collection from the newest snapshot and the store."""


class ReadOnlySqliteStore(SqliteStore):
    """The SQLite store opened read-only (``mode=ro``): no schema, no journal-mode change, and every
    write refused by SQLite itself. The owner's WAL journal lets it read while the owner commits."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = 5000, max_idle: int = 8) -> None:
        # Not SqliteStore.__init__: it sets the journal mode and creates the schema (both writes).
        self._init_pool(path, busy_timeout_ms, max_idle)
        if not self.path.exists():
            raise FileNotFoundError(f"no metadata store at {self.path}: the writer process creates it")
        self.ping()  # fails now, with the reason, when the file cannot be read

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,  # pooled connections move between threads, one at a time
        )
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn


def open_readonly_store(redis_url: str | None, data_dir: Path, redis_prefix: str = "ers") -> MetadataStore:
    """The owner's store, for reading: Redis as the owner opens it (reads do not write), else its
    SQLite file read-only."""
    if redis_url:
        from indexer.store.redis import RedisStore

        return RedisStore(redis_url, prefix=redis_prefix)
    return ReadOnlySqliteStore(data_dir / "meta.sqlite3")


class LogTail:
    """Reads a collection's log (``indexer.wal``'s format) from an offset on, read-only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._bases: list[int] = []
        self._listed_at: int | None = None  # the directory's mtime when the segments were listed

    def _segments(self) -> list[int]:
        """Segment bases, listed again only when the directory changed (a rotation or truncation)."""
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:  # not created yet, or moved away by a delete
            self._listed_at = None
            return []
        if mtime != self._listed_at:
            self._bases = segment_bases(self.directory)
            self._listed_at = mtime
        return self._bases

    def end(self) -> int:
        """Where the log ends now (one or two ``stat`` calls): the cheap test for new records."""
        bases = self._segments()
        if not bases:
            return 0
        try:
            return bases[-1] + os.stat(self.directory / segment_name(bases[-1])).st_size
        except FileNotFoundError:
            self._listed_at = None
            return 0

    def read(self, start: int, limit: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, payload)`` of the records from ``start`` up to ``limit`` (exclusive), all of
        which the owner has applied to the store; ``LogTruncated`` when ``start`` is no longer on disk."""
        pos = start
        while pos < limit:
            bases = self._segments()
            base = max((b for b in bases if b <= pos), default=None)
            if base is None:
                raise LogTruncated(f"log offset {pos} of {self.directory} was dropped (log starts at {bases[:1]})")
            reached = pos
            try:
                with open(self.directory / segment_name(base), "rb") as f:
                    f.seek(pos - base)
                    while reached < limit:
                        head = f.read(HEADER.size)
                        if len(head) < HEADER.size:
                            break
                        magic, length, crc = HEADER.unpack(head)
                        payload = f.read(length) if magic == MAGIC else b""
                        if magic != MAGIC or len(payload) < length or zlib.crc32(payload) != crc:
                            raise LogTruncated(f"log {self.directory}: no intact record at offset {reached}")
                        yield reached, payload
                        reached += HEADER.size + length
            except FileNotFoundError as exc:
                self._listed_at = None
                raise LogTruncated(f"log segment {base} of {self.directory} was dropped") from exc
            if reached == pos:  # nothing more in this segment: the next one must start right here
                self._listed_at = None
                if reached not in self._segments():
                    raise LogTruncated(f"log {self.directory}: records stop at {reached}, before {limit}")
            pos = reached
