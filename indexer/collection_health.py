"""Offline health of a data directory's collections (``ers doctor``): what would stop each one from
opening, and which of those can be repaired without losing an acknowledged write.

Every problem found says how it heals:

- ``start``: the server heals it when it opens the collection, and ``--repair`` does it now —
  a torn log tail (an append a crash cut short: never acknowledged, so cut off) and an unreadable
  or out-of-range index snapshot (indexes are derived data: rebuilt from the store).
- ``repair``: the collection is quarantined until ``--repair`` runs — the log is damaged (intact
  records after a bad one, an older segment that stops short) or lost records the store has
  applied (a truncated log), *and* the store holds every intact record of the log. The repair
  starts a new, empty log at the store's offset (the old one is kept beside it as
  ``wal.damaged-<time>``) and drops the snapshots, which are rebuilt from the store.
- ``None``: nothing here can repair it without losing data — the store lost records the log no
  longer has, intact records after the damage were never applied to the store, a store record or
  a logged record cannot be read. Restore from a backup, or delete the collection.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from indexer.filters import PayloadIndex
from indexer.records import decode
from indexer.segments import SEGMENT_META, SEGMENTS_DIR, STATE_NAMESPACE, EncoderState
from indexer.snapshot import META, load_snapshot, remove_snapshot
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig
from indexer.wal import HEADER, SegmentScan, scan_segment_file, segment_bases, segment_name, start_fresh_log

Heal = Literal["start", "repair"] | None
WAL_DIR = "wal"


@dataclass
class Problem:
    detail: str
    heals: Heal


@dataclass
class Report:
    name: str
    problems: list[Problem] = field(default_factory=list)
    reset_log_at: int | None = None  # the repair of a damaged log, when it loses nothing
    bad_snapshots: list[Path] = field(default_factory=list)  # directories whose snapshot is dropped

    @property
    def status(self) -> str:
        """``ok``; ``heals at start``; ``repairable`` (quarantined until ``--repair``); ``damaged``."""
        heals = {p.heals for p in self.problems}
        if not heals:
            return "ok"
        if None in heals:
            return "damaged"
        return "repairable" if "repair" in heals else "heals at start"

    def add(self, detail: str, heals: Heal) -> None:
        self.problems.append(Problem(detail, heals))


@dataclass
class LogState:
    start: int  # offset of the oldest record on disk
    readable_end: int  # where a replay from the start stops
    intact_end: int  # end of the last intact record anywhere (after damage too)
    physical_end: int  # end of the last segment file
    damage: str | None = None
    torn_bytes: int = 0


def inspect_log(directory: Path) -> LogState:
    """Read every segment of a log, changing nothing."""
    bases = segment_bases(directory) if directory.is_dir() else []
    if not bases:
        return LogState(0, 0, 0, 0)
    scans = [scan_segment_file(directory / segment_name(b), b) for b in bases]
    last = scans[-1]
    state = LogState(bases[0], last.base + last.intact_end, last.base + _intact_end(last), last.base + last.size)
    for scan, nxt in zip(scans, bases[1:], strict=False):
        if scan.base + scan.intact_end != nxt:  # an older segment stops short of the next one
            state.readable_end = min(state.readable_end, scan.base + scan.intact_end)
            state.damage = state.damage or f"segment {scan.base} stops at offset {scan.base + scan.intact_end}"
    if last.damaged:
        state.damage = state.damage or (f"record at offset {last.base + last.intact_end} is damaged and "
                                        f"{last.records_after_damage} intact records follow it")  # fmt: skip
    elif last.intact_end < last.size:
        state.torn_bytes = last.size - last.intact_end
    return state


def _intact_end(scan: SegmentScan) -> int:
    return scan.end_after_damage if scan.damaged else scan.intact_end


def segment_dirs(directory: Path, config: CollectionConfig) -> Iterator[tuple[Path, int | None]]:
    """Each index segment's directory and dimension (None when its ``segment.json`` is unreadable:
    the server then rebuilds it from the store): the collection's own, then ``segments/*``."""
    yield directory, config.dim
    for meta in sorted((directory / SEGMENTS_DIR).glob(f"*/{SEGMENT_META}")):
        try:
            yield meta.parent, int(json.loads(meta.read_text())["dim"])
        except (OSError, ValueError, KeyError, TypeError):
            yield meta.parent, None


def check(store: MetadataStore, root: Path, name: str) -> Report:
    """What would stop collection ``name`` under ``root`` from opening; reads only."""
    report = Report(name)
    try:
        config = store.get_collection(name)
        doc = store.get_doc(STATE_NAMESPACE, name)
        if doc is not None:
            EncoderState.from_json(doc)
    except Exception as exc:  # a store record that cannot be read: nothing here rebuilds it
        report.add(f"its store record cannot be read ({type(exc).__name__}: {exc})", None)
        return report
    if config is None:
        return report
    directory = root / name
    log = inspect_log(directory / WAL_DIR)
    applied = store.applied_offset(name)
    _check_log(report, log, applied)
    for path, dim in segment_dirs(directory, config):
        if (path / META).exists():
            snap = None if dim is None else load_snapshot(path, dim, config.metric, tidy=False)
            if snap is None:
                report.add(f"index snapshot in {path} is unreadable: rebuilt from the store", "start")
                report.bad_snapshots.append(path)
            elif report.reset_log_at is None and not log.start <= snap[1].offset <= log.readable_end:
                report.add(f"index snapshot in {path} is outside the log: rebuilt from the store", "start")
                report.bad_snapshots.append(path)
    _check_contents(report, store, name, directory / WAL_DIR, min(applied, log.readable_end), log)
    return report


def _check_log(report: Report, log: LogState, applied: int) -> None:
    if applied < log.start:
        report.add(f"the store is at log offset {applied} but the log starts at {log.start}: the store lost "
                   "records the log no longer has (restore the store from a backup)", None)  # fmt: skip
        return
    if log.damage is None and applied <= log.readable_end:
        if log.torn_bytes:
            report.add(f"torn log tail of {log.torn_bytes} bytes (an unacknowledged append): cut off", "start")
        return
    what = log.damage or f"the log ends at offset {log.readable_end} but the store applied it up to {applied}"
    if applied >= log.intact_end:
        report.reset_log_at = max(applied, log.physical_end)
        report.add(f"{what}; the store holds every intact record: a new log starts at offset "
                   f"{report.reset_log_at}", "repair")  # fmt: skip
    else:
        report.add(f"{what}; intact records up to offset {log.intact_end} were never applied to the store "
                   f"(at {applied}): a repair would lose them (restore from a backup)", None)  # fmt: skip


def _check_contents(report: Report, store: MetadataStore, name: str, wal_dir: Path, replay_from: int,
                    log: LogState) -> None:  # fmt: skip
    """The store's items and the log records a start would apply load as the server loads them."""
    payloads = PayloadIndex()
    try:
        for item in store.iter_items(name):
            payloads.add(item.int_id, item.payload)
    except Exception as exc:
        report.add(f"a store item cannot be loaded ({type(exc).__name__}: {exc})", None)
        return
    if log.damage is not None or not wal_dir.is_dir() or replay_from >= log.readable_end:
        return
    at = replay_from
    try:
        for offset, data in _replay_readonly(wal_dir, replay_from, log.readable_end):
            at = offset
            for payload in decode(data).payloads:
                payloads.add(-1, payload)
    except Exception as exc:
        report.add(f"the logged record at offset {at} cannot be applied ({type(exc).__name__}: {exc})", None)


def _replay_readonly(wal_dir: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Records from ``start`` to ``end`` without opening the log for writing (no tail is cut)."""
    for base in segment_bases(wal_dir):
        with open(wal_dir / segment_name(base), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if base + size <= start:
                continue
            pos = max(0, start - base)
            f.seek(pos)
            while base + pos < end:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    break
                _, length, _ = HEADER.unpack(head)
                yield base + pos, f.read(length)
                pos += HEADER.size + length


def repair(store: MetadataStore, root: Path, report: Report) -> list[str]:
    """Do what ``report`` says ``--repair`` may do; returns what was done. Opening the collection
    afterwards (the caller does) cuts torn tails and rebuilds the dropped snapshots."""
    done: list[str] = []
    directory = root / report.name
    config = store.get_collection(report.name)
    if config is None or report.status == "damaged":  # touch nothing an operator may need to restore
        return done
    if report.reset_log_at is not None:
        base = report.reset_log_at
        aside = directory / f"{WAL_DIR}.damaged-{int(time.time())}"
        if (directory / WAL_DIR).exists():
            os.replace(directory / WAL_DIR, aside)
            done.append(f"moved the damaged log to {aside}")
        start_fresh_log(directory / WAL_DIR, base)
        if store.applied_offset(report.name) < base:
            store.apply(report.name, [], [], base)
        done.append(f"started a new log at offset {base}")
    # after a new log every snapshot is out of range; otherwise only the unreadable ones go
    dirs = [p for p, _ in segment_dirs(directory, config)] if report.reset_log_at is not None else report.bad_snapshots
    for path in dirs:
        if remove_snapshot(path):
            done.append(f"dropped the snapshot in {path} (rebuilt from the store)")
    return done
