"""The manager keeps collection directories and the metadata store in step, even across crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import AlreadyExists, CollectionNotFound
from indexer.manager import DELETED_MARKER, CollectionManager
from indexer.store.sqlite import SqliteStore


def open_manager(data: Path) -> CollectionManager:
    manager = CollectionManager(data, SqliteStore(data / "meta.sqlite3"))
    manager.open_all()
    return manager


def test_create_delete_and_reopen(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    m.create("a", 4, "cosine").upsert(["x"], [[1, 0, 0, 0]])
    m.create("b", 2, "l2")
    with pytest.raises(AlreadyExists):
        m.create("a", 4, "cosine")
    m.delete("b")
    with pytest.raises(CollectionNotFound):
        m.get("b")
    assert not (tmp_path / "collections" / "b").exists()
    m.close()
    m = open_manager(tmp_path)
    assert [c.name for c in m.list()] == ["a"] and m.get("a").count == 1
    m.close()


def test_interrupted_delete_is_finished_on_start_and_unknown_dirs_are_kept(tmp_path: Path) -> None:
    m = open_manager(tmp_path)
    m.create("gone", 4, "cosine")
    m.close()
    gone = tmp_path / "collections" / "gone"
    (gone / DELETED_MARKER).touch()
    m = open_manager(tmp_path)  # the store still has it: the delete was never acknowledged
    assert m.get("gone") and not (gone / DELETED_MARKER).exists()
    m.store.delete_collection("gone")  # crash after the store step of a delete...
    (gone / DELETED_MARKER).touch()
    stranger = tmp_path / "collections" / "stranger"
    stranger.mkdir()
    (stranger / "precious").write_text("data of another store")
    m.close()
    m = open_manager(tmp_path)
    assert not gone.exists()  # ...is finished on start
    assert (stranger / "precious").exists()  # never delete what the store does not know
    m.create("stranger", 4, "cosine")  # the unknown directory is moved aside, not deleted
    moved = list((tmp_path / "collections").glob(".orphaned-stranger-*"))
    assert len(moved) == 1 and (moved[0] / "precious").read_text() == "data of another store"
    m.close()
