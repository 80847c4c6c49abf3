"""The lock rules of a collection (``indexer.locks.CollectionLocks``): who waits for whom."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from indexer.locks import CollectionLocks

Operation = Callable[[], AbstractContextManager[None]]
WAIT = 0.2  # long enough for an unblocked thread to get in on a loaded machine


class Attempt:
    """``operation`` tried in another thread; it holds the lock until ``release``."""

    def __init__(self, operation: Operation) -> None:
        self.entered = threading.Event()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(operation,), daemon=True)
        self._thread.start()

    def _run(self, operation: Operation) -> None:
        with operation():
            self.entered.set()
            self._leave.wait(10)

    def got_in(self, wait: float = WAIT) -> bool:
        return self.entered.wait(wait)

    def release(self) -> None:
        self._leave.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_readers_share_and_a_mutation_waits_for_them() -> None:
    locks = CollectionLocks()
    first, second = Attempt(locks.reading), Attempt(locks.reading)
    assert first.got_in() and second.got_in()
    with locks.writing():  # the writer lock does not wait for readers
        mutation = Attempt(locks.mutating)
        assert not mutation.got_in()
        first.release()
        assert not mutation.got_in()
        second.release()
        assert mutation.got_in(5)
        mutation.release()


def test_a_waiting_mutation_holds_new_readers_back() -> None:
    locks = CollectionLocks()
    reader = Attempt(locks.reading)
    assert reader.got_in()
    with locks.writing():
        mutation = Attempt(locks.mutating)
        assert not mutation.got_in()
        late_reader = Attempt(locks.reading)  # writer preference: searches cannot starve a write
        assert not late_reader.got_in()
        reader.release()
        assert mutation.got_in(5)
        assert not late_reader.got_in()
        mutation.release()
        assert late_reader.got_in(5)
        late_reader.release()


def test_one_writer_at_a_time() -> None:
    locks = CollectionLocks()
    with locks.writing():
        other = Attempt(locks.writing)
        assert not other.got_in()
    assert other.got_in(5)
    other.release()


def test_a_frozen_index_stops_writers_not_searches() -> None:
    locks = CollectionLocks()
    with locks.frozen():
        reader, writer = Attempt(locks.reading), Attempt(locks.writing)
        assert reader.got_in()
        assert not writer.got_in()
        reader.release()
    assert writer.got_in(5)
    writer.release()


def test_swapping_an_index_stops_writers_and_searches() -> None:
    locks = CollectionLocks()
    with locks.swapping_index():
        reader, writer = Attempt(locks.reading), Attempt(locks.writing)
        assert not reader.got_in() and not writer.got_in()
    assert reader.got_in(5) and writer.got_in(5)
    reader.release()
    writer.release()
