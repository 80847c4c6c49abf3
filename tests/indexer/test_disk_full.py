"""A full disk refuses a write with nothing of it kept, and writes resume once space is back.

Each test mounts a small tmpfs (a real file system that really fills up) and is skipped, saying why,
where mounting is not allowed. ``tests/service/test_faults.py`` runs the same through a server.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.collection import Collection
from indexer.errors import InsufficientStorage
from indexer.index_policy import IndexOptions
from indexer.kept_sources import KeptSource
from indexer.snapshot import META, load_snapshot
from indexer.store.sqlite import SqliteStore
from indexer.types import CollectionConfig
from indexer.wal import WriteAheadLog

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the disk-full "
                    "tests need a small real file system (run as root, or with CAP_SYS_ADMIN)")  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system refuses another page; returns it (unlink it for space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, PAGE):
            try:
                while True:
                    f.write(b"\xff" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_failed_append_is_cut_back_so_later_records_are_not_buried(small_disk: Path) -> None:
    wal = WriteAheadLog(small_disk / "wal")
    first = wal.append(b"a" * 100)
    end = wal.end_offset
    filler = fill(small_disk)
    for _ in range(3):  # each writes the rest of the last page, then fails: a partial record
        with pytest.raises(InsufficientStorage, match="nothing of it was kept"):
            wal.append(b"b" * 3 * PAGE)
        assert wal.end_offset == end and (small_disk / "wal" / f"{0:020d}.log").stat().st_size == end
    filler.unlink()
    second = wal.append(b"c" * 3 * PAGE)
    assert second == end
    wal.close()
    again = WriteAheadLog(small_disk / "wal")  # opens cleanly: nothing torn, nothing buried
    assert [(o, p[:1]) for o, p in again.replay()] == [(first, b"a"), (second, b"c")]
    again.close()


def test_a_store_that_is_full_withdraws_the_logged_record(small_disk: Path, tmp_path: Path) -> None:
    """The log has room but the SQLite store on the full disk refuses the write: the record is
    withdrawn from the log, so the refused write never takes effect later (after a restart)."""
    store = SqliteStore(small_disk / "meta.sqlite3")
    cfg = CollectionConfig(name="c", dim=64, metric="cosine")
    store.create_collection(cfg)
    options = IndexOptions(background=False)
    c = Collection(cfg, tmp_path / "c", store, options)
    x = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    c.upsert([f"ok{i}" for i in range(10)], x[:10])
    end = c.wal.end_offset
    filler = fill(small_disk)
    refused = 0
    for n in range(10):  # big enough that SQLite needs new pages for it
        try:
            c.upsert([f"full{n}-{i}" for i in range(15)], x[10 + 15 * (n % 6) : 25 + 15 * (n % 6)])
        except InsufficientStorage:
            refused += 1
            assert c.wal.end_offset == end  # withdrawn: not in the log
        end = c.wal.end_offset
    assert refused > 0
    filler.unlink()
    c.upsert(["after"], x[199:])
    count = c.count
    c.close()
    reopened = Collection(cfg, tmp_path / "c", store, options)
    assert reopened.count == count and reopened.get("after").id == "after"
    reopened.close()


def test_kept_sources_and_snapshots_on_a_full_disk(small_disk: Path) -> None:
    """A kept source the disk cannot hold refuses the write and keeps the old source; a snapshot
    the disk cannot hold is skipped (the published one stays), and the collection serves on."""
    store = SqliteStore(small_disk.parent / "meta.sqlite3")
    cfg = CollectionConfig(name="k", dim=4, metric="cosine", encoder="enc@1", keep_sources=True)
    store.create_collection(cfg)
    c = Collection(cfg, small_disk / "k", store, IndexOptions(background=False, snapshot_every=1_000_000))
    c.upsert(["a"], np.ones((1, 4), np.float32), sources=[KeptSource("text", b"old")])
    c.snapshot()
    published = (small_disk / "k" / META).read_text()
    filler = fill(small_disk)
    with pytest.raises(InsufficientStorage):
        c.upsert(["a"], np.full((1, 4), 2, np.float32), sources=[KeptSource("text", b"new" * 2000)])
    assert c.sources is not None and c.sources.get("a") == KeptSource("text", b"old")
    c.snapshot()  # skipped, not raised
    assert (small_disk / "k" / META).read_text() == published
    assert load_snapshot(small_disk / "k", 4, "cosine") is not None
    assert c.search(np.ones((1, 4), np.float32), k=1)[0][0].id == "a"
    filler.unlink()
    c.upsert(["a"], np.full((1, 4), 2, np.float32), sources=[KeptSource("text", b"new")])
    assert c.sources.get("a") == KeptSource("text", b"new")
    c.close()
