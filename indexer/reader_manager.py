"""The collections of a data directory as a reader process sees them (``indexer.reader``): the same
``get``/``list`` a route calls on the writer's ``CollectionManager``, kept fresh by one thread.

The thread polls every ``poll_s``, or at once when a request waits for a position (``wake``): for
each view, a ``stat`` of its log's end and, when it grew, the records the store has applied; every
``slow_poll_s``, the set of collections (a create, a delete, a recreate), the active encoders and the
published snapshots. A view that cannot follow (its log was
truncated past it, its directory went away) is rebuilt; one that cannot be opened is left out, and
a request for it goes to the writer. Nothing here writes in the data directory.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from indexer.collection import Collection
from indexer.errors import CollectionNotFound
from indexer.index_policy import IndexOptions
from indexer.manager import CollectionManager
from indexer.reader import ReaderCollection, ReadOnlyView
from indexer.segments import CompatResolver
from indexer.store.base import MetadataStore
from indexer.types import CollectionConfig

log = logging.getLogger(__name__)
# 20 ms, not 2: at 2 ms the poll's wake-ups (GIL hand-offs, a stat per view) cost a reader ~7% of its
# search QPS at full load (Fashion-MNIST, --workers 2: 2,361-2,493 against 2,585-2,649 QPS). A client that
# must read its own writes sends X-ERS-Position, which wakes the poll at once instead of waiting for it.
POLL_S = 0.02
RETRY_OPEN_S = 1.0  # a view that could not be opened (quarantined by the writer) is not retried sooner


class ReaderManager(CollectionManager):
    """Read-only views of the collections a writer process owns; no lock on the data directory."""

    def __init__(
        self,
        data_dir: Path,
        store: MetadataStore,
        compat: CompatResolver | None = None,
        poll_s: float = POLL_S,
        slow_poll_s: float = 0.1,
    ) -> None:
        # Not CollectionManager.__init__: the data directory's lock (and its writes) are the writer's.
        self.data_dir = data_dir
        self.compat = compat
        self.root = data_dir / "collections"
        self.store = store
        self.options = IndexOptions()
        self.poll_s = poll_s
        self.slow_poll_s = slow_poll_s
        self._collections: dict[str, Collection] = {}
        self._quarantined: dict[str, str] = {}  # always empty: the writer says what is quarantined
        self._configs: dict[str, CollectionConfig] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # set: poll now (a request waits for a position), or stop
        self._thread: threading.Thread | None = None
        self._next_slow = 0.0
        self._retry_at: dict[str, float] = {}  # a view that could not be opened is tried again then

    # -- what the routes call ----------------------------------------------------------------
    def holds(self, name: str) -> bool:
        return name in self._collections

    def position(self, name: str) -> int | None:
        """The log offset the view of ``name`` has applied up to; None when this process has none."""
        view = self._collections.get(name)
        return view.position if isinstance(view, ReaderCollection) else None

    def wake(self) -> None:
        """Poll now rather than at the next tick: a request waits for a position this view may hold."""
        self._wake.set()

    def create(self, *args: object, **kwargs: object) -> Collection:  # type: ignore[override]
        raise ReadOnlyView(str(args[0]) if args else "?")

    def delete(self, name: str) -> None:
        raise ReadOnlyView(name)

    # -- lifecycle ---------------------------------------------------------------------------
    def open_all(self) -> None:
        self._sync_names()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="ers-reader-poll")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._collections.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:  # a store outage: keep serving what the views hold, try again
                log.exception("reader: refreshing the views failed")
                self._stop.wait(0.5)

    def refresh(self) -> None:
        """One poll: new log records everywhere; now and then, names, encoders and snapshots."""
        slow = time.monotonic() >= self._next_slow
        if slow:
            self._next_slow = time.monotonic() + self.slow_poll_s
            self._sync_names()
        for name, view in list(self._collections.items()):
            assert isinstance(view, ReaderCollection)
            try:
                if view.has_news():
                    view.catch_up()
                if slow:
                    view.follow_state()
                    view.follow_snapshots()
            except Exception as exc:  # truncated past it, its directory moved away: start it again
                log.info("reader: view of %s rebuilt (%s)", name, exc)
                self._open(name, self._configs.get(name))

    def _sync_names(self) -> None:
        configs = {c.name: c for c in self.store.list_collections()}
        for name in list(self._collections):
            if name not in configs or configs[name].created_at != self._configs[name].created_at:
                self._collections.pop(name, None)  # deleted (or recreated: opened again below)
                self._configs.pop(name, None)
        for name, config in configs.items():
            if name not in self._collections and time.monotonic() >= self._retry_at.get(name, 0.0):
                self._open(name, config)

    def _open(self, name: str, config: CollectionConfig | None) -> None:
        if config is None:
            self._collections.pop(name, None)
            return
        try:
            view = ReaderCollection(config, self.root / name, self.store, self.compat)
        except Exception as exc:  # the writer quarantines it, or it is being created or deleted
            log.info("reader: no view of %s for now (%s); its requests go to the writer", name, exc)
            self._collections.pop(name, None)
            self._configs.pop(name, None)
            self._retry_at[name] = time.monotonic() + RETRY_OPEN_S
            return
        self._retry_at.pop(name, None)
        self._collections[name] = view
        self._configs[name] = config


__all__ = ["CollectionNotFound", "ReaderManager"]
