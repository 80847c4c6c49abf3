"""A collection: write-ahead log (truth) -> metadata store + FAISS index (both derived).

Write path (serialised per collection): validate -> append + fsync the log record -> apply it to the
store (atomically with the store's applied offset) -> apply it to the index and the in-memory maps
-> acknowledge. ``_catch_up`` replays whatever the store or index has not applied, so a write whose
store step failed (Redis down) is applied before the next one, and a restart after ``kill -9``
replays the tail after the last snapshot.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CollectionNotFound, InvalidInput, ItemNotFound, LimitExceeded, StoreMismatch
from indexer.filters import PayloadIndex, validate_filter
from indexer.index_policy import IndexOptions, IndexPolicy
from indexer.locks import RWLock
from indexer.records import MAX_ITEMS_PER_RECORD, LogRecord, decode, encode
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig, FloatArray, ItemRecord, Metric
from indexer.validation import as_matrix, check_ids
from indexer.vector_index import VectorIndex, prepare
from indexer.wal import HEADER, WriteAheadLog

log = logging.getLogger(__name__)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] | None
    encoder_version: str | None


class Collection:
    def __init__(self, config: CollectionConfig, directory: Path, store: MetadataStore, options: IndexOptions):
        self.config = config
        self.name = config.name
        self.directory = directory
        self.store = store
        self._writer = threading.Lock()  # one writer at a time (FAISS add is not thread-safe)
        self._rw = RWLock()  # searches share, index/map mutations exclude
        self.id_to_int: dict[str, int] = {}
        self.int_to_id: dict[int, str] = {}
        self.payloads: dict[int, dict[str, Any] | None] = {}
        self.versions: dict[int, str | None] = {}
        self.payload_index = PayloadIndex()
        self.closed = False
        directory.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(directory / "wal", options.wal_segment_bytes)
        for item in store.iter_items(self.name):
            self._map_add(item.id, item.int_id, item.payload, item.encoder_version)
        self.store_off = store.applied_offset(self.name)
        self._check_store_matches_log()
        self.policy = IndexPolicy(self, options)
        self.index, self.index_off = self.policy.load_or_rebuild()
        with self._writer:
            self._catch_up()

    def _check_store_matches_log(self) -> None:
        # New writes take FAISS ids from log offsets: a store ahead of the log would hand out ids
        # that already exist, and a store behind a truncated log cannot be caught up.
        if self.store_off > self.wal.end_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store has applied log offset {self.store_off} but "
                f"the log in {self.wal.directory} ends at {self.wal.end_offset}; this data directory does not "
                "belong to this metadata store (check ERS_DATA_DIR, ERS_REDIS_URL, ERS_REDIS_PREFIX)"
            )
        if self.store_off < self.wal.start_offset:
            raise StoreMismatch(
                f"collection '{self.name}': the metadata store is at log offset {self.store_off} but the log "
                f"starts at {self.wal.start_offset}; the store lost data (restore it from a backup)"
            )

    # -- in-memory maps ----------------------------------------------------------------------
    def _map_add(self, item_id: str, int_id: int, payload: dict[str, Any] | None, version: str | None) -> None:
        self.id_to_int[item_id] = int_id
        self.int_to_id[int_id] = item_id
        self.payloads[int_id] = payload
        self.versions[int_id] = version
        self.payload_index.add(int_id, payload)

    def _map_remove(self, item_id: str) -> None:
        int_id = self.id_to_int.pop(item_id, None)
        if int_id is not None:
            self.int_to_id.pop(int_id, None)
            self.payloads.pop(int_id, None)
            self.versions.pop(int_id, None)
            self.payload_index.remove(int_id)

    # -- applying log records ----------------------------------------------------------------
    def _catch_up(self) -> None:
        """Apply every log record the store or the index has not seen yet. Caller holds _writer."""
        start = min(self.store_off, self.index_off)
        if start >= self.wal.end_offset:
            return
        for offset, payload in self.wal.replay(start):
            end = offset + HEADER.size + len(payload)
            record = decode(payload)
            to_store, to_index = offset >= self.store_off, offset >= self.index_off
            if to_store:
                self._apply_store(offset, end, record)
            with self._rw.write():
                if to_store:
                    self._apply_maps(offset, record)
                    self.store_off = end
                if to_index:
                    apply_to_index(self.index, offset, record, self.config.metric)
                    self.index_off = end
            self.policy.observe(offset, record)

    def _apply_store(self, offset: int, end: int, record: LogRecord) -> None:
        if record.op == "upsert":
            assert record.vectors is not None
            ups = [
                ItemRecord(i, int(n), record.vectors[row], record.payloads[row], record.versions[row])
                for row, (i, n) in enumerate(zip(record.ids, record.int_ids(offset), strict=True))
            ]
            self.store.apply(self.name, ups, [], end)
        else:
            self.store.apply(self.name, [], record.ids, end)

    def _apply_maps(self, offset: int, record: LogRecord) -> None:
        for item_id in record.ids:
            self._map_remove(item_id)
        if record.op == "upsert":
            for row, (item_id, int_id) in enumerate(zip(record.ids, record.int_ids(offset), strict=True)):
                self._map_add(item_id, int(int_id), record.payloads[row], record.versions[row])

    # -- public API --------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        vectors: Any,
        payloads: list[dict[str, Any] | None] | None = None,
        versions: list[str | None] | None = None,
    ) -> int:
        """Durably upsert a batch (all or nothing); returns the number of items written."""
        check_ids(ids)
        matrix = as_matrix(vectors, self.config.dim)
        if len(ids) != len(matrix):
            raise InvalidInput(f"{len(ids)} ids but {len(matrix)} vectors")
        if len(ids) > MAX_ITEMS_PER_RECORD:
            raise LimitExceeded(f"at most {MAX_ITEMS_PER_RECORD} items per write")
        payloads = payloads or [None] * len(ids)
        versions = versions or [self.config.encoder] * len(ids)
        # The last occurrence of a repeated id wins, as if the items were sent one by one.
        last = {item_id: row for row, item_id in enumerate(ids)}
        rows = sorted(last.values())
        ids = [ids[r] for r in rows]
        with self._writer:
            self._check_open()
            self._catch_up()
            record = LogRecord(
                op="upsert",
                ids=ids,
                replaces=[self.id_to_int.get(i, -1) for i in ids],
                payloads=[payloads[r] for r in rows],
                versions=[versions[r] for r in rows],
                vectors=matrix[rows],
            )
            self.wal.append(encode(record))
            self._catch_up()
        self.policy.after_write(len(ids))
        return len(ids)

    def delete(self, ids: list[str]) -> int:
        """Durably delete the ids that exist; returns how many did."""
        with self._writer:
            self._check_open()
            self._catch_up()
            present = list(dict.fromkeys(i for i in ids if i in self.id_to_int))
            if not present:
                return 0
            record = LogRecord("delete", present, [self.id_to_int[i] for i in present], [], [])
            self.wal.append(encode(record))
            self._catch_up()
        self.policy.after_write(len(present))
        return len(present)

    def get(self, item_id: str, with_vector: bool = False) -> ItemRecord:
        with self._rw.read():
            int_id = self.id_to_int.get(item_id)
            if int_id is None:
                raise ItemNotFound(self.name, item_id)
            item = ItemRecord(item_id, int_id, None, self.payloads[int_id], self.versions[int_id])
        if with_vector:
            stored = self.store.get_item(self.name, item_id, with_vector=True)
            if stored is None:
                raise ItemNotFound(self.name, item_id)
            item.vector = stored.vector
        return item

    def vector_of(self, item_id: str) -> FloatArray:
        vector = self.get(item_id, with_vector=True).vector
        assert vector is not None
        return vector

    def search(
        self, queries: Any, k: int, flt: dict[str, Any] | None = None, exclude: list[str | None] | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row; ``exclude[i]`` drops that id from row i (search by id)."""
        if k < 1:
            raise InvalidInput("k must be at least 1")
        matrix = as_matrix(queries, self.config.dim, "query vector")
        if flt:
            validate_filter(flt)
        extra = 1 if exclude and any(exclude) else 0
        prepared = prepare(matrix, self.config.metric)
        with self._rw.read():
            allowed = None
            if flt:
                allowed = np.fromiter(self.payload_index.match(flt), dtype=np.int64)
            scores, found = self.index.search(prepared, k + extra, allowed)
            results: list[list[Hit]] = []
            for row in range(len(matrix)):
                skip = exclude[row] if exclude else None
                hits = []
                for score, int_id in zip(scores[row].tolist(), found[row].tolist(), strict=True):
                    item_id = self.int_to_id.get(int_id)
                    if item_id is None or item_id == skip:
                        continue
                    hits.append(Hit(item_id, score, self.payloads[int_id], self.versions[int_id]))
                results.append(hits[:k])
        return results

    def all_vectors(self, limit: int = 200_000) -> tuple[list[str], FloatArray]:
        """Every item's id and stored (raw) vector, from the store; refuses huge collections."""
        if self.count > limit:
            raise LimitExceeded(f"collection has {self.count} items; this operation handles at most {limit}")
        ids, rows = [], []
        for item in self.store.iter_items(self.name, with_vectors=True):
            assert item.vector is not None
            ids.append(item.id)
            rows.append(item.vector)
        matrix = np.vstack(rows) if rows else np.zeros((0, self.config.dim), dtype=np.float32)
        return ids, matrix.astype(np.float32)

    @property
    def count(self) -> int:
        return len(self.id_to_int)

    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            return {
                "count": self.count,
                "indexed": self.index.size,
                **self.policy.describe(),
                "log_offset": self.wal.end_offset,
            }

    def snapshot(self) -> None:
        self.policy.snapshot()

    def _check_open(self) -> None:
        if self.closed:
            raise CollectionNotFound(self.name)

    def close(self, snapshot: bool = True) -> None:
        with self._writer:
            self.closed = True
        self.policy.close(snapshot=snapshot)
        self.wal.close()


def apply_to_index(
    index: VectorIndex, offset: int, record: LogRecord, metric: Metric, present: set[int] | None = None
) -> None:
    """Apply one record to a FAISS index.

    ``present`` (used when catching a freshly built index up) is the set of ids the index already
    holds; it makes the replay idempotent without asking FAISS to delete ids it never had (which an
    HNSW index could only record as tombstones).
    """
    if record.op == "delete":
        gone = [r for r in record.replaces if present is None or r in present]
        index.remove(np.asarray(gone, dtype=np.int64))
        if present is not None:
            present.difference_update(gone)
        return
    assert record.vectors is not None
    int_ids = record.int_ids(offset)
    old = [r for r in record.replaces if r >= 0 and (present is None or r in present)]
    index.remove(np.asarray(old, dtype=np.int64))
    keep = np.ones(len(int_ids), dtype=bool)
    if present is not None:
        present.difference_update(old)
        keep = np.fromiter((int(i) not in present for i in int_ids), dtype=bool, count=len(int_ids))
        present.update(int(i) for i in int_ids)
    index.add(int_ids[keep], prepare(record.vectors[keep], metric))
