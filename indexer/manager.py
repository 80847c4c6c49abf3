"""The set of collections one server owns, under one data directory.

A lock file (``flock``) makes sure a single process owns a data directory: two processes would
each hold a diverging in-memory FAISS index over the same log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import IO

from indexer.collection import Collection
from indexer.errors import AlreadyExists, CollectionNotFound, DataDirLocked, InvalidInput
from indexer.index_policy import IndexOptions
from indexer.segments import EVAL_NAMESPACE, STATE_NAMESPACE, CompatResolver
from indexer.store.base import MetadataStore
from indexer.types import COLLECTION_NAME_RE, METRICS, CollectionConfig, Metric
from indexer.vector_index import validate_spec
from models.core.durable import fsync_dir

log = logging.getLogger(__name__)
MAX_DIM = 65_536
DELETED_MARKER = ".deleted"
ENCODER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*@[A-Za-z0-9_.\-]+$")


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "ers.lock"
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held for the lifetime
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._file.close()
            self._file = None
            raise DataDirLocked(
                f"data directory {data_dir} is owned by another ERS process; "
                "run one server per data directory (use more threads, not more workers)"
            ) from exc
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class CollectionManager:
    def __init__(
        self,
        data_dir: Path,
        store: MetadataStore,
        options: IndexOptions | None = None,
        compat: CompatResolver | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.compat = compat  # which encoder versions' vectors a query may be compared with
        self.root = data_dir / "collections"
        self.store = store
        self.options = options or IndexOptions()
        self._lock = DataDirLock(data_dir)
        self._mutex = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self.root.mkdir(parents=True, exist_ok=True)

    def open_all(self) -> None:
        """Open every collection the store knows; drop directories of deleted ones."""
        known = {cfg.name: cfg for cfg in self.store.list_collections()}
        for path in self.root.iterdir():
            if not path.is_dir() or path.name.startswith(".") or path.name in known:
                continue
            if (path / DELETED_MARKER).exists():
                log.info("removing leftover directory of deleted collection %s", path.name)
                shutil.rmtree(path)
            else:
                # Never delete data the store merely does not know (another store, a wiped Redis).
                log.warning("directory %s is not a collection of this metadata store; leaving it alone", path)
        for name, cfg in known.items():
            (self.root / name / DELETED_MARKER).unlink(missing_ok=True)  # a delete that never finished
            started = time.perf_counter()
            self._collections[name] = Collection(cfg, self.root / name, self.store, self.options, self.compat)
            log.info(
                "opened %s (%d items) in %.2fs", name, self._collections[name].count, time.perf_counter() - started
            )

    def create(
        self,
        name: str,
        dim: int,
        metric: str,
        encoder: str | None = None,
        index: str = "auto",
        keep_sources: bool = False,
    ) -> Collection:
        if not COLLECTION_NAME_RE.match(name):
            raise InvalidInput("collection name must be 1-64 letters, digits, '_' or '-', starting alphanumeric")
        if not 1 <= dim <= MAX_DIM:
            raise InvalidInput(f"dim must be between 1 and {MAX_DIM}")
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}")
        if encoder is not None and not ENCODER_RE.match(encoder):
            raise InvalidInput(f"encoder must look like name@version, got '{encoder}'")
        m: Metric = metric  # type: ignore[assignment]
        validate_spec(dim, index, m)
        if keep_sources and encoder is None:
            raise InvalidInput("keep_sources needs an encoder: a collection without one never sees raw inputs")
        cfg = CollectionConfig(name=name, dim=dim, metric=m, encoder=encoder, index=index, created_at=time.time(),
                               keep_sources=keep_sources)  # fmt: skip
        with self._mutex:
            if name in self._collections:
                raise AlreadyExists(f"collection '{name}' already exists")
            self.store.create_collection(cfg)
            for namespace in (STATE_NAMESPACE, EVAL_NAMESPACE):  # left by a delete that crashed half-way
                self.store.delete_doc(namespace, name)
            directory = self.root / name
            if directory.exists():
                if (directory / DELETED_MARKER).exists():  # a delete interrupted by a crash
                    shutil.rmtree(directory)
                else:  # data this store does not know: keep it, out of the way
                    aside = self.root / f".orphaned-{name}-{int(time.time())}"
                    log.warning("moving unknown directory %s to %s", directory, aside)
                    directory.rename(aside)
            collection = Collection(cfg, directory, self.store, self.options, self.compat)
            self._collections[name] = collection
            return collection

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise CollectionNotFound(name)
        return collection

    def list(self) -> list[Collection]:
        return [self._collections[n] for n in sorted(self._collections)]

    def delete(self, name: str) -> None:
        with self._mutex:
            collection = self.get(name)
            # Mark, then drop from the store: a crash after that leaves a marked directory that
            # open_all removes; a crash before it leaves the collection intact.
            marker = collection.directory / DELETED_MARKER
            marker.touch()
            fsync_dir(collection.directory)
            self.store.delete_collection(name)
            for namespace in (STATE_NAMESPACE, EVAL_NAMESPACE):
                self.store.delete_doc(namespace, name)
            del self._collections[name]
            collection.close(snapshot=False)
            shutil.rmtree(collection.directory, ignore_errors=True)

    def snapshot_all(self) -> None:
        for collection in self.list():
            collection.snapshot()

    def close(self) -> None:
        for collection in self.list():
            try:
                collection.close(snapshot=True)
            except Exception:
                log.exception("closing collection %s", collection.name)
        self._collections.clear()
        self._lock.release()
