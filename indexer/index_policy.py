"""Which FAISS index a collection runs, when it is rebuilt, and when it is snapshotted.

``auto`` starts exact (flat). Past ``auto_threshold`` items the index ``indexer.index_choice`` picks
for the segment's size, dimension and ``memory_budget`` (HNSW, or IVF-SQ8 with exact re-ranking) is
built and tuned in a background thread from the store's raw vectors while searches and writes go on
against the current index; the records written meanwhile are captured and replayed onto the new
index, which is then swapped in under the index lock. It is rebuilt (and re-tuned) each time the
segment grows ``rebuild_growth``-fold, as soon as the rule picks another kind of index (HNSW no
longer fits the budget), and when tombstones (HNSW deletes) pass ``tombstone_ratio`` of the index.
An explicit spec that needs training (``IVF1024,PQ32``) also runs flat until it has enough points.

One policy runs per index segment (``indexer.segments``: one per encoder version); each segment
builds, swaps and snapshots on its own, over its own items.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from indexer.builder import build_index, min_train_points
from indexer.index_choice import IndexChoice, choose_index, effective_budget, kind_of
from indexer.locks import CollectionLocks
from indexer.records import LogRecord
from indexer.segments import Segment, apply_to_segment
from indexer.snapshot import SnapshotMeta, load_snapshot, published_exact, write_snapshot
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig
from indexer.vector_index import FLAT, VectorIndex, prepare
from indexer.wal import WriteAheadLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    auto_threshold: int = 20_000
    rebuild_growth: float = 4.0
    target_recall: float = 0.97
    snapshot_every: int = 10_000
    wal_segment_bytes: int = 64 << 20
    background: bool = True  # False: build and snapshot inline (deterministic tests)
    tombstone_ratio: float = 0.2
    memory_budget: int = 0  # bytes per segment index for ``auto``; 0: half of physical memory


class PolicyCollection(Protocol):
    """What an index policy uses of its collection (``indexer.collection.Collection``)."""

    name: str
    config: CollectionConfig  # follows the active encoder: ``metric`` and ``index`` are read
    store: MetadataStore
    wal: WriteAheadLog
    store_off: int  # log offset the store has applied up to
    locks: CollectionLocks
    deleted: bool  # set under the writer lock by a delete: its directory is no longer the collection's

    def segment_key(self, version: str | None) -> str | None: ...

    def rows_of(self, record: LogRecord, key: str | None) -> np.ndarray: ...

    def truncate_log(self, store_off: int) -> None: ...


class IndexPolicy:
    def __init__(self, collection: PolicyCollection, options: IndexOptions, segment: Segment) -> None:
        self.c = collection
        self.seg = segment
        self.options = options
        self.built_n = 0
        self._ops = 0
        self._capture: list[tuple[int, LogRecord]] | None = None
        self._building = False
        # Lock order and what each lock guards: ``indexer.locks.CollectionLocks``.
        self._snap_lock = threading.Lock()  # one snapshot of this segment at a time; before the writer lock
        self._flag_lock = threading.Lock()  # guards ``_building`` only (a leaf)
        self._threads: list[threading.Thread] = []
        # registers a thread only once started, and never after close() took the list: close() joins
        # exactly the threads that run (joining one not yet started raises)
        self._threads_lock = threading.Lock()
        self._min_train: int | None = None
        self._budget = effective_budget(options.memory_budget)
        # Set by ``close`` under the snapshot lock: no snapshot is written and no thread started after
        # it, so a deleted collection's directory (or a new one of the same name) is never written to.
        self._closed = False

    # -- start-up ----------------------------------------------------------------------------
    def load_or_rebuild(self) -> tuple[VectorIndex, int]:
        snap = load_snapshot(self.seg.directory, self.seg.dim, self.c.config.metric)
        if snap is not None and not self.c.wal.start_offset <= snap[1].offset <= self.c.wal.end_offset:
            # past the log's end: the index holds records the log lost; rebuilt from the store instead
            log.warning("collection %s: snapshot in %s at offset %d is outside the log [%d, %d]; rebuilding",
                        self.c.name, self.seg.directory, snap[1].offset, self.c.wal.start_offset,
                        self.c.wal.end_offset)  # fmt: skip
            snap = None
        if snap is not None:
            self.built_n = snap[1].built_n
            self.seg.snapshot_off = snap[1].offset
            return snap[0], snap[1].offset
        ids, vectors = self._store_vectors()
        index = self._build(self._choice_for(len(ids)), ids, vectors)
        return index, self.c.store_off

    def start_empty(self) -> VectorIndex:
        """The index of a segment born at a log record (its version's first vectors)."""
        empty = np.zeros((0, self.seg.dim), dtype=np.float32)
        return self._build(self._choice_for(0), np.zeros(0, dtype=np.int64), empty)

    def _store_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        rows: list[np.ndarray] = []
        dim = self.seg.dim
        for item in self.c.store.iter_items(self.c.name, with_vectors=True):
            assert item.vector is not None
            if self.c.segment_key(item.encoder_version) != self.seg.key:
                continue
            if len(item.vector) != dim:
                log.error("collection %s: item %s has a %d-d vector in the %d-d segment %s; not indexed",
                          self.c.name, item.id, len(item.vector), dim, self.seg.key)  # fmt: skip
                continue
            ids.append(item.int_id)
            rows.append(item.vector)
        matrix = np.vstack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
        return np.asarray(ids, dtype=np.int64), matrix.astype(np.float32)

    def _build(self, choice: IndexChoice, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        metric = self.c.config.metric
        index = build_index(self.seg.dim, metric, choice, ids, prepare(vectors, metric),
                            self.options.target_recall, directory=self.seg.directory)  # fmt: skip
        self.built_n = len(ids)
        return index

    def _choice_for(self, n: int) -> IndexChoice:
        target = self.c.config.index
        if target == "auto":
            return choose_index(n, self.seg.dim, self._budget, self.options.auto_threshold)
        if self._min_train is None:
            self._min_train = min_train_points(target, self.seg.dim, self.c.config.metric)
        return IndexChoice(FLAT, "flat") if n < self._min_train else IndexChoice(target, kind_of(target))

    # -- while running -----------------------------------------------------------------------
    def observe(self, offset: int, record: LogRecord) -> None:
        """Called (under the writer lock) for every record applied to the live index: a build in
        progress replays them onto its new index before the swap."""
        if self._capture is not None:
            self._capture.append((offset, record))

    def after_write(self, n: int) -> None:
        self._ops += n
        if self._ops >= self.options.snapshot_every:
            self._ops = 0
            self._spawn(self.snapshot)
        choice = self._wanted()
        if choice is None:
            return
        with self._flag_lock:  # writers call this concurrently once past the writer lock
            if self._building:
                return
            self._building = True
        self._spawn(lambda: self._rebuild(choice))

    def _wanted(self) -> IndexChoice | None:
        """The index to rebuild into now, if any."""
        index = self.seg.index
        n = index.size
        desired = self._choice_for(n)
        if index.spec == FLAT and desired.spec != FLAT:
            return desired
        moved = kind_of(index.spec) != desired.kind or n >= self.options.rebuild_growth * self.built_n
        if self.c.config.index == "auto" and index.spec != FLAT and moved:
            return desired  # another kind fits the size/budget now, or grown enough to re-tune
        if index.dead and len(index.dead) > self.options.tombstone_ratio * max(1, index.index.ntotal):
            return IndexChoice(index.spec, kind_of(index.spec), rerank=index.rerank)
        return None

    def _spawn(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return
        if not self.options.background:
            fn()
            return
        thread = threading.Thread(target=fn, daemon=True, name=f"ers-{self.c.name}-{self.seg.key}")
        with self._threads_lock:
            if self._closed:
                return
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _rebuild(self, choice: IndexChoice) -> None:
        c = self.c
        spec = choice.spec
        new: VectorIndex | None = None
        swapped = False
        try:
            with c.locks.writing():
                self._capture = []
            ids, vectors = self._store_vectors()
            log.info("collection %s: building %s over %d vectors", c.name, spec, len(ids))
            new = self._build(choice, ids, vectors)
            old = self.seg.index
            present = set(ids.tolist())
            with c.locks.swapping_index():
                for offset, record in self._capture or []:
                    rows = c.rows_of(record, self.seg.key)
                    apply_to_segment(self.seg, new, rows, offset, record, c.config.metric, present)
                self.seg.index = new
                self._capture = None
                swapped = True
            log.info("collection %s: swapped in %s (nprobe=%s, efSearch=%s, measured recall %s)",
                     c.name, spec, new.nprobe, new.ef_search, new.measured_recall)  # fmt: skip
            self.snapshot()
            if old.exact is not None and old.exact.name != published_exact(self.seg.directory):
                old.exact.delete()  # never published (else the snapshot just written removed it)
        except Exception:
            log.exception("collection %s: index build failed; keeping the current index", c.name)
            if new is not None and new.exact is not None and not swapped:
                new.exact.delete()
        finally:
            self._capture = None
            self._building = False

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Write a snapshot now, unless the policy is closed. A failed write (a full disk) is
        logged and skipped: snapshots only shorten the replay at the next start."""
        with self._snap_lock:
            if not self._closed:
                self._snapshot_locked()

    @contextmanager
    def snapshots_held(self) -> Iterator[None]:
        """No snapshot file is being written while this is held (taken before the writer lock): a
        delete moves the collection's directory under it, then marks the collection deleted, so no
        snapshot writes into the moved directory or recreates the old one."""
        with self._snap_lock:
            yield

    def _snapshot_locked(self) -> None:
        c = self.c
        with c.locks.frozen():
            if c.deleted:  # deleted meanwhile: its directory is not the collection's to write any more
                return
            index = self.seg.index
            offset = self.seg.index_off
            data = index.serialize()
            meta = SnapshotMeta(
                offset=offset,
                spec=index.spec,
                # a fresh name each time: a snapshot never overwrites the file the published meta names
                file=f"index-{offset:020d}-{secrets.token_hex(4)}.faiss",
                built_n=self.built_n,
                nprobe=index.nprobe,
                dead=sorted(index.dead),
                ef_search=index.ef_search,
                measured_recall=index.measured_recall,
                exact_file=index.exact.name if index.exact is not None else None,
                exact_rows=index.exact.rows if index.exact is not None else 0,
                rerank=index.rerank,
            )
            store_off = c.store_off
        try:
            if index.exact is not None:
                index.exact.flush()  # durable before the meta names its row count
            write_snapshot(self.seg.directory, data, meta)
            self.seg.snapshot_off = offset
            c.truncate_log(store_off)
        except OSError as exc:
            log.warning("collection %s: snapshot of %s skipped: %s", c.name, self.seg.directory, exc)

    def describe(self) -> dict[str, Any]:
        index = self.seg.index
        return {
            "active_index": index.spec,
            "nprobe": index.nprobe,
            "ef_search": index.ef_search,
            "measured_recall": index.measured_recall,
            "rerank": index.rerank or None,
            "building": self._building,
        }

    def close(self, snapshot: bool) -> None:
        """Stop: wait for a snapshot being written, start nothing more, let running threads end
        (a build still training writes nothing once closed), then write the last snapshot if asked."""
        with self._snap_lock:
            self._closed = True
        with self._threads_lock:
            running = list(self._threads)
        for thread in running:
            thread.join(timeout=60)
        if snapshot:
            with self._snap_lock:
                self._snapshot_locked()
