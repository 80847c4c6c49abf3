"""Per-collection write-ahead log: the durable source of truth for every upsert and delete.

A record is framed as ``MAGIC | u32 length | u32 crc32 | payload`` and the log is fsynced before a
write is acknowledged. Offsets are global byte positions across segment files named by their base
offset, so an offset identifies a record forever, even after old segments are dropped.
A torn tail (a crash in the middle of an append) fails its CRC and is cut off on open: it was never
acknowledged, so dropping it loses nothing that a client was promised.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from models.core.durable import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"ERSW"
HEADER = struct.Struct("<4sII")
SEGMENT_SUFFIX = ".log"


def _segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


class WriteAheadLog:
    def __init__(self, directory: Path, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._bases = sorted(int(p.stem) for p in directory.glob(f"*{SEGMENT_SUFFIX}"))
        if not self._bases:
            self._bases = [0]
            (directory / _segment_name(0)).touch()
            fsync_dir(directory)
        self._recover_tail()
        last = self._bases[-1]
        self._file = open(self._path(last), "ab")  # noqa: SIM115 - kept open for appends
        self._end = last + self._file.tell()

    def _path(self, base: int) -> Path:
        return self.directory / _segment_name(base)

    def _recover_tail(self) -> None:
        """Cut the last segment after its last intact record (a torn, unacknowledged append)."""
        base = self._bases[-1]
        path = self._path(base)
        size = path.stat().st_size
        good = self._end_of_valid_prefix(base)
        if good < size:
            log.warning("wal %s: dropping %d bytes of torn tail", path, size - good)
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def _end_of_valid_prefix(self, base: int) -> int:
        pos = 0
        for offset, payload in self._scan_segment(base):
            pos = offset - base + HEADER.size + len(payload)
        return pos

    def _scan_segment(self, base: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Records of one segment from byte ``start`` on, stopping at the first torn or corrupt one.

        Reads record by record from ``start``: catching up after a write reads only the new tail.
        """
        with open(self._path(base), "rb") as f:
            f.seek(start)
            pos = start
            while True:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    return
                magic, length, crc = HEADER.unpack(head)
                if magic != MAGIC:
                    return
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    return
                yield base + pos, payload
                pos += HEADER.size + length

    @property
    def end_offset(self) -> int:
        """Offset the next record will get."""
        return self._end

    @property
    def start_offset(self) -> int:
        """Oldest offset still on disk."""
        return self._bases[0]

    def append(self, payload: bytes) -> int:
        """Append one record and fsync it; returns its offset. Durable when this returns."""
        with self._lock:
            if self._file.tell() >= self.segment_bytes:
                self._rotate()
            offset = self._end
            self._file.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._end = offset + HEADER.size + len(payload)
            return offset

    def _rotate(self) -> None:
        self._file.close()
        base = self._end
        self._bases.append(base)
        self._file = open(self._path(base), "ab")  # noqa: SIM115
        fsync_dir(self.directory)

    def replay(self, from_offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` for every record at or after ``from_offset``."""
        if from_offset < self._bases[0]:
            raise ValueError(f"offset {from_offset} was truncated (log starts at {self._bases[0]})")
        for i, base in enumerate(self._bases):
            nxt = self._bases[i + 1] if i + 1 < len(self._bases) else None
            if nxt is not None and nxt <= from_offset:
                continue
            start = max(0, from_offset - base)
            for offset, payload in self._scan_segment(base, start):
                if offset >= from_offset:
                    yield offset, payload

    def truncate_before(self, offset: int) -> int:
        """Delete whole segments whose records all lie before ``offset``; returns how many."""
        with self._lock:
            dropped = 0
            while len(self._bases) > 1 and self._bases[1] <= offset:
                self._path(self._bases.pop(0)).unlink()
                dropped += 1
            if dropped:
                fsync_dir(self.directory)
            return dropped

    def close(self) -> None:
        with self._lock:
            self._file.close()
