"""SQLite implementation of ``MetadataStore``: the embedded default, one file, no server.

Concurrency model: WAL journal mode lets readers proceed while one writer commits, so reads use
pooled connections freely and writes are serialised by an in-process lock (plus ``BEGIN
IMMEDIATE`` and ``busy_timeout`` against other processes). Connections are pooled rather than
kept per thread because the server may spawn a thread per request; a pool bounds the number of
open connections by concurrency instead of by the number of threads ever seen.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import AlreadyExists, InsufficientStorage, StoreUnavailable
from indexer.store.sqlite_jobs import JOBS_SCHEMA, SqliteJobsMixin
from indexer.types import CollectionConfig, ItemRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    int_id INTEGER NOT NULL,
    encoder_version TEXT,
    payload TEXT,
    vector BLOB,
    PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS offsets (collection TEXT PRIMARY KEY, applied_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    namespace TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (namespace, key)
);
"""

_SQLITE_FULL = 13  # "database or disk is full"
_SQLITE_UNUSABLE = {5, 6, 7, 8, 10, 11, 14}  # busy, locked, out of memory, read-only, I/O error, corrupt, cannot open

# Vectors are stored little-endian explicitly so a data dir stays readable on any host.
_VEC_DTYPE = np.dtype("<f4")


def _vector_bytes(vector: Any) -> bytes | None:
    return None if vector is None else np.asarray(vector, dtype=_VEC_DTYPE).tobytes()


def _vector_from(blob: bytes | None) -> Any:
    # .astype copies, so the array owns writable memory independent of the sqlite buffer.
    return None if blob is None else np.frombuffer(blob, dtype=_VEC_DTYPE).astype(np.float32)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SqliteStore(SqliteJobsMixin):
    """``MetadataStore`` over one SQLite file; safe to share between threads."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = 5000, max_idle: int = 8) -> None:
        self._init_pool(path, busy_timeout_ms, max_idle)
        with self._conn() as conn:
            # journal_mode is persistent in the file; setting it once per open is enough.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA + JOBS_SCHEMA)

    # -- connection handling -----------------------------------------------------------------
    def _init_pool(self, path: Path | str, busy_timeout_ms: int, max_idle: int) -> None:
        """The connection pool's state, opening nothing (a read-only subclass opens differently)."""
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._max_idle = max_idle
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so apply() is exactly one txn.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,  # pooled connections move between threads, one at a time
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._closed:
                raise StoreUnavailable(f"sqlite store {self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back entirely on any exception, a failed COMMIT included.
        A full disk is ``InsufficientStorage`` (nothing was written); a store that cannot write
        (locked, I/O error, read-only...) ``StoreUnavailable``."""
        with self._write_lock, self._conn() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # SQLite may have rolled back already (a full disk at COMMIT)
                    with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                        conn.execute("ROLLBACK")
                code = getattr(exc, "sqlite_errorcode", None)
                code = code & 0xFF if isinstance(code, int) else None  # the primary result code
                if code == _SQLITE_FULL:
                    raise InsufficientStorage(f"sqlite store {self.path}: disk full ({exc}); not written") from exc
                if code in _SQLITE_UNUSABLE:
                    raise StoreUnavailable(f"sqlite store {self.path} unusable: {exc}") from exc
                raise

    # -- collections -------------------------------------------------------------------------
    def create_collection(self, config: CollectionConfig) -> None:
        with self._txn() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO collections (name, config) VALUES (?, ?)",
                (config.name, _dumps(config.to_json())),
            )
            if cur.rowcount == 0:
                raise AlreadyExists(f"collection '{config.name}' already exists")

    def get_collection(self, name: str) -> CollectionConfig | None:
        with self._conn() as conn:
            row = conn.execute("SELECT config FROM collections WHERE name = ?", (name,)).fetchone()
        return None if row is None else CollectionConfig.from_json(json.loads(row[0]))

    def collection_names(self) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name").fetchall()]

    def list_collections(self) -> list[CollectionConfig]:
        with self._conn() as conn:
            rows = conn.execute("SELECT config FROM collections ORDER BY name").fetchall()
        return [CollectionConfig.from_json(json.loads(r[0])) for r in rows]

    def delete_collection(self, name: str) -> bool:
        with self._txn() as conn:
            existed = conn.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount > 0
            conn.execute("DELETE FROM items WHERE collection = ?", (name,))
            conn.execute("DELETE FROM offsets WHERE collection = ?", (name,))
        return existed

    # -- items -------------------------------------------------------------------------------
    def apply(self, name: str, upserts: Sequence[ItemRecord], deletes: Sequence[str], offset: int) -> None:
        """Upserts first, then deletes, then the offset; one transaction."""
        # Serialise before opening the transaction so bad input never holds the write lock.
        rows = [
            (
                name,
                item.id,
                int(item.int_id),
                item.encoder_version,
                None if item.payload is None else _dumps(item.payload),
                _vector_bytes(item.vector),
            )
            for item in upserts
        ]
        with self._txn() as conn:
            conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("DELETE FROM items WHERE collection = ? AND id = ?", [(name, i) for i in deletes])
            conn.execute(
                "INSERT OR REPLACE INTO offsets (collection, applied_offset) VALUES (?, ?)",
                (name, int(offset)),
            )

    def applied_offset(self, name: str) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT applied_offset FROM offsets WHERE collection = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _record(row: tuple[Any, ...]) -> ItemRecord:
        item_id, int_id, version, payload, vector = row
        return ItemRecord(
            id=item_id,
            int_id=int(int_id),
            vector=_vector_from(vector),
            payload=None if payload is None else json.loads(payload),
            encoder_version=version,
        )

    def _columns(self, with_vector: bool) -> str:
        return "id, int_id, encoder_version, payload, " + ("vector" if with_vector else "NULL")

    def get_item(self, name: str, item_id: str, with_vector: bool = False) -> ItemRecord | None:
        sql = f"SELECT {self._columns(with_vector)} FROM items WHERE collection = ? AND id = ?"
        with self._conn() as conn:
            row = conn.execute(sql, (name, item_id)).fetchone()
        return None if row is None else self._record(row)

    def get_items(self, name: str, item_ids: Sequence[str], with_vectors: bool = False) -> list[ItemRecord | None]:
        found: dict[str, ItemRecord] = {}
        sql = f"SELECT {self._columns(with_vectors)} FROM items WHERE collection = ? AND id IN "
        step = 500  # stay well under SQLITE_MAX_VARIABLE_NUMBER on old builds
        with self._conn() as conn:
            for start in range(0, len(item_ids), step):
                chunk = list(item_ids[start : start + step])
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(sql + f"({marks})", [name, *chunk]):
                    found[row[0]] = self._record(row)
        return [found.get(i) for i in item_ids]

    def iter_items(self, name: str, with_vectors: bool = False, batch: int = 1000) -> Iterator[ItemRecord]:
        """Keyset pagination: no connection or read transaction is held between batches, so a
        slow consumer never pins a WAL snapshot or starves the pool."""
        sql = f"SELECT {self._columns(with_vectors)} FROM items WHERE collection = ? AND id {{}} ? ORDER BY id LIMIT ?"
        last, op = "", ">="  # ">=" first so an empty-string id is not skipped
        while True:
            with self._conn() as conn:
                rows = conn.execute(sql.format(op), (name, last, batch)).fetchall()
            op = ">"
            for row in rows:
                yield self._record(row)
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def count(self, name: str) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT COUNT(*) FROM items WHERE collection = ?", (name,)).fetchone()
        return int(row[0])

    # -- docs --------------------------------------------------------------------------------
    def put_doc(self, namespace: str, key: str, doc: dict[str, Any]) -> None:
        text = _dumps(doc)
        with self._txn() as conn:
            conn.execute("INSERT OR REPLACE INTO docs VALUES (?, ?, ?)", (namespace, key, text))

    def get_doc(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT doc FROM docs WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def delete_doc(self, namespace: str, key: str) -> bool:
        with self._txn() as conn:
            cur = conn.execute("DELETE FROM docs WHERE namespace = ? AND key = ?", (namespace, key))
            return cur.rowcount > 0

    def list_docs(self, namespace: str) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute("SELECT doc FROM docs WHERE namespace = ? ORDER BY key", (namespace,)).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    # -- lifecycle ---------------------------------------------------------------------------
    def ping(self) -> None:
        try:
            with self._conn() as conn:
                conn.execute("SELECT 1 FROM collections LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self.path} unusable: {exc}") from exc

    def close(self) -> None:
        """Close idle connections; ones in use are closed when handed back."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
