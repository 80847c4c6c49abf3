"""The locks of a collection, and the only place that says which one guards what and in which order
they are taken.

FAISS searches release the GIL and may run in parallel, but ``add``/``remove`` reallocate the
index's arrays, so a mutation must never overlap a search (``RWLock``); and FAISS ``add`` is not
thread-safe, the log is appended in order and the store applies one offset after the other, so
there is one writer at a time (``CollectionLocks.writing``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """A writer-preferring readers-writer lock: many FAISS searches at once, index mutations alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class CollectionLocks:
    """The two locks of one collection, taken only through the operations below.

    - the **writer lock** (``writing``): one writer at a time. Held across a whole write — validate
      against the maps, append + fsync the log record, apply it to the store, then to the index
      segments and the in-memory maps — so log order, store order and FAISS ids (log offsets) agree.
      Also held to switch the active encoder, to close, by an index build to start capturing the
      records written while it trains, and while a snapshot serialises an index. Every mutation of
      the index segments, the maps, the segment set or ``store_off`` happens under it, so holding
      it alone is enough to *read* them consistently.
    - the **index lock** (a writer-preferring ``RWLock``): searches and other readers of the index
      segments and maps share it (``reading``); a mutation of them takes it alone (``mutating``),
      always from inside ``writing``.

    Order: writer lock, then index lock — never the other way round (a reader that then asked for
    the writer lock would deadlock against a writer waiting for the index lock). An ``IndexPolicy``'s
    own locks sit around them: its per-segment snapshot lock (one snapshot of a segment at a time) is
    taken *before* the writer lock, its build-flag and thread-list locks are leaves (nothing is taken
    while holding them).
    Nothing slow runs under the index lock for writing: FAISS training and snapshot file writes run
    outside it.
    """

    def __init__(self) -> None:
        self._writer = threading.Lock()
        self._index = RWLock()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The writer lock: one write (log append -> store -> index and maps) at a time."""
        with self._writer:
            yield

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Shared access to the index segments and the in-memory maps (searches, get, stats)."""
        with self._index.read():
            yield

    @contextmanager
    def mutating(self) -> Iterator[None]:
        """Exclusive access to the index segments and maps. The caller holds ``writing()``."""
        with self._index.write():
            yield

    @contextmanager
    def swapping_index(self) -> Iterator[None]:
        """``writing()`` then ``mutating()``: catch a freshly built index up with the records captured
        while it trained and swap it in, with no write and no search in between."""
        with self._writer, self._index.write():
            yield

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """``writing()`` then ``reading()``: the index and maps as of one log offset, for a snapshot
        (no record is applied meanwhile; searches go on)."""
        with self._writer, self._index.read():
            yield
