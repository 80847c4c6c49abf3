"""Per-collection write-ahead log: the durable source of truth for every upsert and delete.

A record is framed as ``MAGIC | u32 length | u32 crc32 | payload`` and the log is fsynced before a
write is acknowledged. Offsets are global byte positions across segment files named by their base
offset, so an offset identifies a record forever, even after old segments are dropped.

Damage is told apart from a torn write, because only the latter may be cut:

- A torn tail (a crash in the middle of an append: bad bytes at the very end of the last segment,
  no intact record after them) fails its CRC and is cut off on open: it was never acknowledged, so
  dropping it loses nothing that a client was promised.
- A failed append (ENOSPC, EDQUOT, EIO) is cut back at once to the last good offset, before the
  error is raised: a partial record left in place would be buried by the next append, and every
  acknowledged record after it lost at the next open. Until the cut succeeds, appends are refused.
- Anything else — intact records after a bad one, an older segment that stops short — is damage
  that a cut would turn into lost acknowledged writes: ``LogDamaged`` is raised instead (the
  collection is quarantined; ``ers doctor`` says what can be done).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from indexer.errors import InsufficientStorage, LogDamaged
from models.core.durable import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"ERSW"
HEADER = struct.Struct("<4sII")
SEGMENT_SUFFIX = ".log"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def is_disk_full(exc: BaseException) -> bool:
    """An ``OSError`` that says the file system (or the user's quota) has no room left."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


@contextmanager
def refused_when_disk_full(doing: str) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT) met in the block is ``InsufficientStorage`` (507): the write
    is refused, not acknowledged, and succeeds again once space is freed."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorage(
                f"disk full while {doing} ({exc.strerror}): the write was not acknowledged; free space and retry"
            ) from exc
        raise


def segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


def segment_bases(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())


@dataclass
class SegmentScan:
    """What reading one segment file found (``indexer.collection_health`` reports it)."""

    base: int
    size: int  # bytes in the file
    intact_end: int  # bytes up to the end of its last record before the first bad one
    records: int  # intact records before the first bad one
    records_after_damage: int = 0  # intact records in a chain from after the bad bytes to the end
    end_after_damage: int = 0  # where that chain ends (== size when there is one)

    @property
    def damaged(self) -> bool:
        """Bad bytes followed by intact records: corruption, not a torn append."""
        return self.records_after_damage > 0


def parse_at(data: bytes | memoryview, pos: int) -> int | None:
    """The end of the intact record framed at ``pos`` in ``data``, or None."""
    if pos + HEADER.size > len(data):
        return None
    magic, length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if magic != MAGIC or end > len(data) or zlib.crc32(data[pos + HEADER.size : end]) != crc:
        return None
    return end


def scan_segment_file(path: Path, base: int) -> SegmentScan:
    """Read a segment: its intact prefix, record by record, and — only when bad bytes follow it —
    whether a chain of intact records runs from somewhere after them to the very end of the file
    (corruption, not a torn tail). A chain must reach the end exactly: a payload that happens to
    contain framed bytes does not make a torn tail look like corruption."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = records = 0
        while True:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            magic, length, crc = HEADER.unpack(head)
            payload = f.read(length) if magic == MAGIC else b""
            if magic != MAGIC or len(payload) < length or zlib.crc32(payload) != crc:
                break
            pos, records = pos + HEADER.size + length, records + 1
        scan = SegmentScan(base, size, pos, records)
        if pos == size:
            return scan
        f.seek(pos)
        rest = f.read()  # bad bytes and what follows: a few bytes for a torn tail
    start = rest.find(MAGIC, 1)
    while start != -1:
        chain, at = 0, start
        while (end := parse_at(rest, at)) is not None:
            chain, at = chain + 1, end
        if chain and at == len(rest):
            scan.records_after_damage, scan.end_after_damage = chain, pos + at
            return scan
        start = rest.find(MAGIC, start + 1)
    return scan


class WriteAheadLog:
    def __init__(self, directory: Path, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._torn_at: int | None = None  # set while a failed append could not be cut back yet
        directory.mkdir(parents=True, exist_ok=True)
        self._bases = segment_bases(directory)
        if not self._bases:
            self._bases = [0]
            (directory / segment_name(0)).touch()
            fsync_dir(directory)
        self._recover_tail()
        last = self._bases[-1]
        self._fd = os.open(self._path(last), _OPEN_FLAGS, 0o644)
        self._end = last + os.fstat(self._fd).st_size

    def _path(self, base: int) -> Path:
        return self.directory / segment_name(base)

    def _recover_tail(self) -> None:
        """Cut the last segment after its last intact record (a torn, unacknowledged append);
        refuse (``LogDamaged``) when intact records follow the bad bytes."""
        base = self._bases[-1]
        path = self._path(base)
        scan = scan_segment_file(path, base)
        if scan.damaged:
            raise LogDamaged(
                f"log {path}: the record at offset {base + scan.intact_end} is damaged and "
                f"{scan.records_after_damage} intact records follow it (corruption, not a torn write)"
            )
        if scan.intact_end < scan.size:
            log.warning("wal %s: dropping %d bytes of torn tail", path, scan.size - scan.intact_end)
            with open(path, "r+b") as f:
                f.truncate(scan.intact_end)
                f.flush()
                os.fsync(f.fileno())

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
        """Append one record and fsync it; returns its offset. Durable when this returns.

        On failure nothing of the record stays in the log: ``InsufficientStorage`` when the disk
        or quota is full, the ``OSError`` otherwise."""
        with self._lock:
            self._cut_torn_append()
            if self._end - self._bases[-1] >= self.segment_bytes:
                self._rotate()
            offset = self._end
            data = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
            try:
                _write_all(self._fd, data)
                os.fsync(self._fd)
            except OSError as exc:
                self._torn_at = offset
                self._cut_torn_append()
                self._refuse(exc)
            self._end = offset + len(data)
            return offset

    def _refuse(self, exc: OSError) -> NoReturn:
        if is_disk_full(exc):
            raise InsufficientStorage(
                f"disk full while appending to the log in {self.directory} ({exc.strerror}): the write was not "
                "acknowledged and nothing of it was kept; free space and retry"
            ) from exc
        raise exc

    def _cut_torn_append(self) -> None:
        """Cut the log back to the last good offset after a failed append. Caller holds ``_lock``.
        Shrinking a file needs no free space, so this normally succeeds at once; should it fail
        (EIO), appends are refused until it does: one written after a partial record would be lost."""
        if self._torn_at is None:
            return
        offset = self._torn_at
        try:
            os.ftruncate(self._fd, offset - self._bases[-1])
            os.fsync(self._fd)
        except OSError as exc:
            log.error("wal %s: cannot cut a failed append back to offset %d: %s", self.directory, offset, exc)
            self._refuse(exc)
        self._torn_at = None
        self._end = offset

    def withdraw(self, offset: int) -> None:
        """Remove the last record, at ``offset``, which nothing has applied (its store step was
        refused without effect): the write is answered as not done, so the log must not keep it."""
        with self._lock:
            if self._torn_at is not None or not self._bases[-1] <= offset <= self._end:
                raise ValueError(f"offset {offset} is not the last record of the log")
            # Should the cut fail, the record stays (``_torn_at`` is not left set): it is then a
            # logged write that the next one applies, as after a store outage.
            os.ftruncate(self._fd, offset - self._bases[-1])
            self._end = offset  # O_APPEND writes at the file's end: offsets must follow the cut at once
            os.fsync(self._fd)

    def _rotate(self) -> None:
        base = self._end
        path = self._path(base)
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            self._refuse(exc)
        try:
            fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            self._refuse(exc)
        os.close(self._fd)
        self._fd = fd
        self._bases.append(base)

    def replay(self, from_offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` for every record at or after ``from_offset``; ``LogDamaged``
        when a segment other than the last stops short of the next one."""
        # A copy: a snapshot thread may drop old segments (``truncate_before``) while a catch-up is
        # replaying, and iterating the shrinking list would skip the segments after the current one.
        # Only segments wholly before the truncation offset go, which a replay from a store or
        # snapshot offset never needs again (an open file reads on after an unlink).
        with self._lock:
            bases = list(self._bases)
        if from_offset < bases[0]:
            raise ValueError(f"offset {from_offset} was truncated (log starts at {bases[0]})")
        for i, base in enumerate(bases):
            nxt = bases[i + 1] if i + 1 < len(bases) else None
            if nxt is not None and nxt <= from_offset:
                continue
            reached = max(base, from_offset)
            for offset, payload in self._scan_segment(base, reached - base):
                reached = offset + HEADER.size + len(payload)
                yield offset, payload
            if nxt is not None and reached != nxt:
                raise LogDamaged(
                    f"log segment {self._path(base)} is damaged at offset {reached}: its records stop "
                    f"before the next segment starts at {nxt}"
                )

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
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a write may be short (a nearly full disk writes
    what fits, and only the next call fails)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def start_fresh_log(directory: Path, base: int) -> None:
    """Create an empty log whose first record will get offset ``base`` (``indexer.collection_health``
    resets a damaged log this way once the store holds everything it had)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / segment_name(base)).touch()
    fsync_dir(directory)
    fsync_dir(directory.parent)
