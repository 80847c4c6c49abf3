"""What a collection's delete leaves on disk at each step, and how a later start finishes it.

A delete (``CollectionManager.delete``) runs these steps, each durable before the next, so that a
crash at any point leaves either the whole collection or nothing that blocks its name:

1. rename ``collections/<name>`` to ``collections/.deleting-<name>``. A crash here: the store still
   knows the collection, so the start renames the directory back (the delete never happened).
2. drop the collection from the store (one atomic step: config, items, applied offset). This is
   the commit point. A crash after it: the store no longer knows the name, so the start forgets it
   (its documents, any stale store entries) and removes ``.deleting-<name>``.
3. drop the collection's documents (encoder state, evaluation set).
4. rename ``.deleting-<name>`` to ``.trash-<random>`` and remove it. A crash here leaves only a
   ``.trash-*`` directory, which every start removes.

Renames need no free space, so a collection can be deleted to free a full disk. Directories of an
older release's delete (a plain directory holding a ``.deleted`` marker) are finished the same way.
A directory the store does not know and no delete marked is left alone: it may hold data of
another store (a wiped Redis, another ``ERS_REDIS_PREFIX``).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path

from indexer.segments import EVAL_NAMESPACE, STATE_NAMESPACE
from indexer.store.base import MetadataStore
from models.core.durable import fsync_dir

log = logging.getLogger(__name__)
DELETED_MARKER = ".deleted"  # an older release's step 1: a marker file inside the directory
DELETING_PREFIX = ".deleting-"
TRASH_PREFIX = ".trash-"
DOC_NAMESPACES = (STATE_NAMESPACE, EVAL_NAMESPACE)  # documents keyed by a collection's name


def deleting_path(root: Path, name: str) -> Path:
    return root / f"{DELETING_PREFIX}{name}"


def forget(store: MetadataStore, name: str) -> None:
    """Drop whatever the store still holds under ``name``: its documents and any items or applied
    offset a crash (or an older release's race) left without a collection. A new collection of
    that name then starts from nothing."""
    for namespace in DOC_NAMESPACES:
        store.delete_doc(namespace, name)
    store.delete_collection(name)


def to_trash(root: Path, directory: Path) -> Path:
    """Rename ``directory`` out of every name's way (instant, needs no space); remove it later."""
    trash = root / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
    os.replace(directory, trash)
    fsync_dir(root)
    return trash


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove all of %s; remove it by hand", path)


def leftovers(root: Path, known: Collection[str]) -> list[tuple[Path, str]]:
    """Every leftover of an interrupted delete under ``root`` and what finishing it does:
    ``restore`` (the delete never committed), ``remove`` (it did), or ``trash``."""
    found: list[tuple[Path, str]] = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(TRASH_PREFIX):
            found.append((path, "trash"))
        elif path.name.startswith(DELETING_PREFIX):
            name = path.name[len(DELETING_PREFIX) :]
            if name not in known:
                found.append((path, "remove"))
            elif not (root / name).exists():
                found.append((path, "restore"))
            else:
                log.warning("%s and %s both exist; leaving %s alone", path, root / name, path.name)
        elif not path.name.startswith(".") and path.name not in known and (path / DELETED_MARKER).exists():
            found.append((path, "remove"))
    return found


def finish_deletes(root: Path, store: MetadataStore, known: Collection[str]) -> list[tuple[Path, str]]:
    """Finish every interrupted delete under ``root`` (at start-up, and by ``ers doctor --repair``);
    returns what was done."""
    done = leftovers(root, known)
    for path, action in done:
        if action == "restore":
            name = path.name[len(DELETING_PREFIX) :]
            log.warning("restoring collection %s: its delete was interrupted before it took effect", name)
            os.replace(path, root / name)
            fsync_dir(root)
        elif action == "remove":
            name = path.name[len(DELETING_PREFIX) :] if path.name.startswith(DELETING_PREFIX) else path.name
            log.info("finishing the interrupted delete of collection %s", name)
            forget(store, name)
            remove_tree(to_trash(root, path))
        else:
            remove_tree(path)
    return done
