"""Exact float32 vectors for re-ranking a quantised index, memory-mapped instead of loaded.

An IVF-SQ8/PQ index keeps 1 byte (or less) per dimension in RAM; its candidates are re-scored with
the exact vectors so the answer is exact-scored. Keeping a float32 copy of every vector in RAM would
undo the saving, and asking the metadata store for ~40 vectors per query (SQLite or Redis, by string
id) would put a store round trip on every search. So the exact vectors live in two append-only files
in the segment directory, written once per vector:

- ``exact-<token>.f32``: row i is the i-th vector added, float32, ``dim`` values; memory-mapped.
- ``exact-<token>.ids``: row i's int64 FAISS id; read into RAM (8 bytes per vector) for the lookup.

Only the pages a search touches are read, into the page cache, which the kernel reclaims under
pressure: resident memory does not grow by 4*dim per vector. Ids are immutable (an upsert gets a new
id, ``indexer.records``), so a row never changes; a deleted id's row stays until the next rebuild
writes a new file. A snapshot records the row count it covers (after an fsync); on start-up the files
are cut back to it and the log replay appends the rest again. Append-only files suit readers in other
processes too: rows below the published count never change. A reader process opens them
``read_only``: it maps the published rows once (the mapping outlives a later unlink by the writer)
and keeps the rows its log tail adds in RAM, so it never writes the writer's files.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from indexer.types import FloatArray

PREFIX = "exact-"


class ExactVectors:
    def __init__(self, directory: Path, name: str, dim: int, read_only: bool = False) -> None:
        self.directory = directory
        self.name = name
        self.dim = dim
        self.read_only = read_only
        self._ids = np.zeros(0, dtype=np.int64)
        self._rows = 0
        self._sorted = True  # ids ascending in row order: a lookup needs no extra order array
        self._order: np.ndarray | None = None
        self._map: np.memmap | None = None
        # read_only: rows past ``_file_rows`` were added by this process's log replay and live here
        self._file_rows = 0
        self._overlay = np.zeros((0, dim), dtype=np.float32)
        if not read_only:
            self._vec_out = open(self.vector_path, "ab")  # noqa: SIM115 - held open for appends
            self._ids_out = open(self.ids_path, "ab")  # noqa: SIM115

    @classmethod
    def create(cls, directory: Path, dim: int) -> ExactVectors:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{secrets.token_hex(6)}"
        for suffix in (".f32", ".ids"):
            (directory / (name + suffix)).write_bytes(b"")
        return cls(directory, name, dim)

    @classmethod
    def open(cls, directory: Path, name: str, dim: int, rows: int, trim: bool = True) -> ExactVectors:
        """The files a snapshot names, cut back to the ``rows`` it covers (later rows are replayed);
        ``trim=False`` only looks (``ers doctor``, reader processes): the files are left as they are and
        the object is ``read_only``."""
        if "/" in name or not name.startswith(PREFIX):
            raise ValueError(f"not an exact-vector file name: {name!r}")
        vec_path, ids_path = directory / f"{name}.f32", directory / f"{name}.ids"
        if vec_path.stat().st_size < rows * dim * 4 or ids_path.stat().st_size < rows * 8:
            raise ValueError(f"{name} holds fewer than the {rows} rows its snapshot names")
        if trim:
            os.truncate(vec_path, rows * dim * 4)
            os.truncate(ids_path, rows * 8)
        out = cls(directory, name, dim, read_only=not trim)
        out._ids = np.fromfile(ids_path, dtype=np.int64, count=rows)
        out._rows = out._file_rows = rows
        out._sorted = bool(np.all(out._ids[1:] > out._ids[:-1])) if rows > 1 else True
        if out.read_only and rows:
            out._map = np.memmap(vec_path, dtype=np.float32, mode="r", shape=(rows, dim))
        return out

    @property
    def vector_path(self) -> Path:
        return self.directory / f"{self.name}.f32"

    @property
    def ids_path(self) -> Path:
        return self.directory / f"{self.name}.ids"

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def resident_bytes(self) -> int:
        """What this object keeps in RAM (the mapped vectors are page cache, not counted)."""
        order = 0 if self._order is None else self._order.nbytes
        return int(self._ids.nbytes) + order

    def append(self, int_ids: np.ndarray, prepared: FloatArray) -> None:
        ids = np.ascontiguousarray(int_ids, dtype=np.int64)
        if not len(ids):
            return
        vectors = np.ascontiguousarray(prepared, dtype=np.float32)
        if self.read_only:
            self._overlay = np.concatenate([self._overlay, vectors.reshape(-1, self.dim)])
        else:
            self._vec_out.write(vectors.tobytes())
            self._ids_out.write(ids.tobytes())
            self._vec_out.flush()  # to the page cache, where the next mapping sees it
            self._ids_out.flush()
        ascending = len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1]))
        if not ascending or (self._rows and ids[0] <= self._ids[-1]):
            self._sorted = False
        self._ids = np.concatenate([self._ids, ids])
        self._rows += len(ids)
        self._order = None
        if not self.read_only:
            self._map = None  # remapped at the new length on the next gather

    def _vectors(self) -> np.memmap | None:
        if self.read_only:
            return self._map
        if self._map is None and self._rows:
            self._map = np.memmap(self.vector_path, dtype=np.float32, mode="r", shape=(self._rows, self.dim))
        return self._map

    def rows_of(self, int_ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where absent (ids of -1, i.e. FAISS padding, included)."""
        if self._sorted:
            keys, order = self._ids, None
        else:
            if self._order is None:
                self._order = np.argsort(self._ids, kind="stable")
            order = self._order
            keys = self._ids[order]
        pos = np.searchsorted(keys, int_ids)
        pos = np.clip(pos, 0, max(len(keys) - 1, 0))
        found = (keys[pos] == int_ids) if len(keys) else np.zeros(np.shape(int_ids), dtype=bool)
        rows = pos if order is None else order[pos]
        return np.where(found, rows, -1)

    def gather(self, int_ids: np.ndarray) -> tuple[FloatArray, np.ndarray]:
        """(vectors, found): the exact vectors of ``int_ids`` (zeros where ``found`` is False)."""
        rows = self.rows_of(int_ids)
        found = rows >= 0
        out = np.zeros((*np.shape(int_ids), self.dim), dtype=np.float32)
        mapped = self._vectors()
        in_file = found & (rows < (self._file_rows if self.read_only else self._rows))
        if mapped is not None and in_file.any():
            out[in_file] = mapped[rows[in_file]]
        in_overlay = found & ~in_file
        if in_overlay.any():
            out[in_overlay] = self._overlay[rows[in_overlay] - self._file_rows]
        return out, found

    def flush(self) -> None:
        """Make the rows written so far durable (before a snapshot names their count)."""
        if self.read_only:
            raise RuntimeError(f"{self.name} is open read-only: this process never writes it")
        for handle in (self._vec_out, self._ids_out):
            handle.flush()
            os.fsync(handle.fileno())

    def delete(self) -> None:
        self._map = None
        if self.read_only:  # the files are the writer's: only this process's view is dropped
            self._overlay = np.zeros((0, self.dim), dtype=np.float32)
            return
        self._vec_out.close()
        self._ids_out.close()
        self.vector_path.unlink(missing_ok=True)
        self.ids_path.unlink(missing_ok=True)


def remove_exact_files(directory: Path, keep: str | None) -> None:
    """Drop exact-vector files other than ``keep`` (stale builds; only when none is running)."""
    for path in directory.glob(f"{PREFIX}*"):
        if path.stem != keep:
            path.unlink(missing_ok=True)
