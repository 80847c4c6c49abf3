"""The set of collections one server owns, under one data directory.

A lock file (``flock``) makes sure a single process owns a data directory: two processes would
each hold a diverging in-memory FAISS index over the same log.

One collection never stops the others: one whose log, snapshot or store record cannot be loaded
at start-up is *quarantined* (``get`` raises ``CollectionQuarantined``, 503 with the reason; it can
still be deleted), and so is one whose logged record cannot be applied while serving. Create and
delete of a name are serialised with each other (the manager's mutex) and with the collection's
writes (its writer lock); the on-disk steps of a delete are ``indexer.collection_leftovers``'s.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from indexer.collection import Collection
from indexer.collection_leftovers import (
    DELETED_MARKER,
    deleting_path,
    finish_deletes,
    forget,
    remove_tree,
    to_trash,
)
from indexer.errors import (
    AlreadyExists,
    CollectionNotFound,
    CollectionQuarantined,
    DataDirLocked,
    InvalidInput,
    StoreUnavailable,
)
from indexer.index_policy import IndexOptions
from indexer.segments import CompatResolver
from indexer.store.base import MetadataStore
from indexer.types import COLLECTION_NAME_RE, METRICS, CollectionConfig, Metric
from indexer.vector_index import validate_spec
from indexer.wal import is_disk_full, refused_when_disk_full
from models.core.durable import fsync_dir
from models.core.errors import ERSError

log = logging.getLogger(__name__)
MAX_DIM = 65_536
MAX_REASON = 600  # characters of an exception kept as a quarantine reason
__all__ = ["DELETED_MARKER", "CollectionManager", "DataDirLock"]
ENCODER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*@[A-Za-z0-9_.\-]+\Z")  # \Z: "$" lets a final newline in


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
        self._mutex = threading.Lock()  # create and delete, one at a time
        self._collections: dict[str, Collection] = {}
        self._quarantined: dict[str, str] = {}  # name -> why it could not be opened
        self.root.mkdir(parents=True, exist_ok=True)

    def open_all(self) -> None:
        """Finish interrupted deletes, then open every collection the store knows; one that cannot
        be opened is quarantined with the reason. Only an unreachable store fails the start."""
        names = self.store.collection_names()
        finish_deletes(self.root, self.store, set(names))
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith(".") and path.name not in names:
                # Never delete data the store merely does not know (another store, a wiped Redis).
                log.warning("directory %s is not a collection of this metadata store; leaving it alone", path)
        for name in names:
            started = time.perf_counter()
            try:
                config = self.store.get_collection(name)
                if config is None:  # dropped meanwhile (another process sharing the store)
                    continue
                (self.root / name / DELETED_MARKER).unlink(missing_ok=True)  # an older release's unfinished delete
                self._collections[name] = Collection(config, self.root / name, self.store, self.options, self.compat)
            except StoreUnavailable:
                raise
            except Exception as exc:  # whatever the damage, it must not stop the others
                self._quarantined[name] = describe_failure(exc)
                log.error("collection %s quarantined: %s", name, self._quarantined[name], exc_info=exc)
                continue
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
            if name in self._quarantined:
                raise AlreadyExists(f"collection '{name}' already exists (quarantined: delete it first)")
            if name in self._collections or self.store.get_collection(name) is not None:
                raise AlreadyExists(f"collection '{name}' already exists")
            forget(self.store, name)  # whatever a crashed delete left under the name
            directory = self._clear_directory(name)
            self.store.create_collection(cfg)  # the commit point
            try:
                collection = Collection(cfg, directory, self.store, self.options, self.compat)
            except BaseException as exc:
                self._undo_create(name, directory, exc)
                with refused_when_disk_full(f"creating collection '{name}'"):
                    raise
            self._collections[name] = collection
            return collection

    def _clear_directory(self, name: str) -> Path:
        """The new collection's directory, with nothing in the way: a directory left by an older
        release's interrupted delete is removed, one this store does not know is moved aside."""
        directory = self.root / name
        if directory.exists():
            if (directory / DELETED_MARKER).exists():
                remove_tree(to_trash(self.root, directory))
            else:  # data this store does not know: keep it, out of the way
                aside = self.root / f".orphaned-{name}-{int(time.time())}"
                log.warning("moving unknown directory %s to %s", directory, aside)
                directory.rename(aside)
        return directory

    def _undo_create(self, name: str, directory: Path, exc: BaseException) -> None:
        """A collection that could not be opened right after its store record was written (a full
        disk): drop the record again, or — should that fail too — quarantine the name so that a
        delete can clear it."""
        try:
            self.store.delete_collection(name)
        except Exception:  # the original error is the one to answer with
            log.exception("collection %s: could not undo a failed create", name)
            self._quarantined[name] = f"its creation failed half-way: {describe_failure(exc)}"
            return
        if directory.exists():
            remove_tree(to_trash(self.root, directory))

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            reason = self._quarantined.get(name)
            if reason is not None:
                raise CollectionQuarantined(name, reason)
            raise CollectionNotFound(name)
        if collection.damaged is not None:
            raise CollectionQuarantined(name, collection.damaged)
        return collection

    def list(self) -> list[Collection]:
        """The collections that serve, by name (quarantined ones are in ``quarantined``)."""
        return [c for n, c in sorted(self._collections.items()) if c.damaged is None]

    def quarantined(self) -> dict[str, str]:
        """Every quarantined collection and why, by name."""
        found = dict(self._quarantined)
        # list(): a copy taken at once, as a create or delete may change the dict meanwhile
        found.update({n: c.damaged for n, c in list(self._collections.items()) if c.damaged is not None})
        return dict(sorted(found.items()))

    def delete(self, name: str) -> None:
        """Delete a collection, quarantined or not. In-flight writes finish first (the collection's
        writer lock); a write that comes later gets 404. Each on-disk step is durable before the
        next (``indexer.collection_leftovers``): a crash leaves the collection or nothing."""
        with self._mutex:
            collection = self._collections.get(name)
            if collection is None and name not in self._quarantined:
                raise CollectionNotFound(name)
            if collection is None:
                self._commit_delete(name)
            else:
                with ExitStack() as held:
                    # snapshot writers first (their lock comes before the writer lock), then writers
                    for segment in list(collection.segments.values()):
                        held.enter_context(segment.policy.snapshots_held())
                    held.enter_context(collection.locks.writing())
                    self._commit_delete(name)
                    collection.closed = collection.deleted = True
            self._collections.pop(name, None)
            self._quarantined.pop(name, None)
            if collection is not None:
                collection.close(snapshot=False)  # its threads are done: nothing writes under the name
            try:
                forget(self.store, name)  # documents (a crash before this: the next start drops them)
            except ERSError:  # the store went away meanwhile: the next create of the name drops them
                log.exception("collection %s deleted; its documents are left for now", name)
            deleting = deleting_path(self.root, name)
            trash = to_trash(self.root, deleting) if deleting.exists() else None
        if trash is not None:
            remove_tree(trash)  # outside the mutex: a large collection takes a while

    def _commit_delete(self, name: str) -> None:
        """Steps 1 and 2 of a delete: move the directory out of the way, drop the store record. On
        failure the directory is moved back and nothing has changed."""
        directory, deleting = self.root / name, deleting_path(self.root, name)
        if deleting.exists():  # an earlier, committed delete whose last rename failed: long gone
            remove_tree(to_trash(self.root, deleting))
        moved = directory.exists()
        if moved:
            os.replace(directory, deleting)
            fsync_dir(self.root)
        try:
            self.store.delete_collection(name)
        except BaseException:
            if moved:
                os.replace(deleting, directory)
                fsync_dir(self.root)
            raise

    def close(self) -> None:
        for collection in list(self._collections.values()):
            try:
                collection.close(snapshot=True)
            except Exception:
                log.exception("closing collection %s", collection.name)
        self._collections.clear()
        self._lock.release()


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a quarantine or a failed step: a domain error's message, else the
    exception's type and text (a full disk named as such)."""
    if isinstance(exc, ERSError):
        text = exc.message
    elif is_disk_full(exc):
        text = f"disk full ({exc})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
