"""Crash-safe publishing of files and directories: the one place that fsyncs and renames.

Every durable file the project writes goes through here: the index snapshots and segment metadata
(``atomic_write_bytes``), a collection's kept sources and thumbnails and an uploaded job's files
(``publish_files``, a batch at a time), epoch checkpoints and model artifacts (``publish_dir``).
The write-ahead log is the one exception: it appends to an open file and fsyncs each append
(``indexer/wal.py``), which is a log, not a publish.

The recipe, and why each step is needed (POSIX promises nothing more; ext4 and XFS really do lose
each of these on a power cut):

1. Write the new content under a temp name beside the final one. Readers never open a temp name, so a
   half-written file is never seen; "beside" keeps it on the same file system, which a rename needs.
2. fsync the temp file. Without it the rename can reach the disk before the data does, and after a
   crash the final name points at an empty or truncated file.
3. Rename the temp over the final name (``os.replace``). A rename is atomic: a reader, or a restart
   after ``kill -9``, sees the old file or the complete new one, never a mix.
4. fsync the directory. The rename is a change to the directory, not to the file; until the
   directory is synced a crash can undo it (the old file comes back, or a new one vanishes).

A crash between 1 and 3 leaves a temp file, named ``.<name>.tmp-<random>`` (``TEMP_GLOB``) so that
whoever owns the directory can sweep them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeAlias

TEMP_GLOB = ".*.tmp-*"  # matches every temp name ``temp_path`` makes
FileData: TypeAlias = bytes | tuple[bytes, ...]  # a tuple is written part after part: no concatenated copy


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``: hidden, and unique per call so that two threads or two
    processes writing the same file never write into one temp file."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def fsync_file(path: Path) -> None:
    """Persist a file's data, whoever wrote it (a library's ``save`` that does not fsync, say)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Persist a directory entry change (create, rename, unlink) itself: a directory opens and
    fsyncs like a file."""
    fsync_file(directory)


def fsync_tree(directory: Path) -> None:
    """Persist every file under ``directory`` and every directory's entries, ``directory`` included:
    the contents of a directory about to be published must be on disk before a name points at them.
    Symbolic links are left alone (their target is not part of the tree)."""
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                fsync_file(path)
        for name in dirs:
            path = Path(root) / name
            if not path.is_symlink():
                fsync_dir(path)
    fsync_dir(directory)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temp file beside ``path``, then publish it atomically (steps 1-4 above).

    A reader (or a restart after ``kill -9``) sees either the old file or the complete new one. When
    ``write`` (or anything after it) raises, the old file is untouched and the temp file is removed.
    """
    tmp = temp_path(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)


def publish_files(changes: Iterable[tuple[Path, FileData | None]]) -> None:
    """Publish a batch of files at once: ``(path, data)`` writes ``path`` (``data`` is bytes or a
    tuple of parts, such as a header and a body), ``(path, None)`` removes it; a path listed twice
    gets its last change (as if the changes were made one by one).

    Each file is replaced atomically, and cheaper than one ``atomic_write_bytes`` each: every temp
    file is written and fsynced first, then all are renamed, then each touched directory is fsynced
    once. An error while writing the temps (a full disk, say) changes nothing (removals included)
    and leaves no temp behind. Missing parent directories are created, and their own parents synced,
    so that a new directory survives a crash as well as the file in it.
    """
    last: dict[Path, FileData | None] = dict(changes)
    touched: set[Path] = set()
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in last.items():
            if data is None:
                continue
            _make_parents(path, touched)
            tmp = temp_path(path)
            staged.append((tmp, path))  # before writing: a failed write is cleaned up too
            with open(tmp, "wb") as f:
                for part in (data,) if isinstance(data, bytes) else data:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
            touched.add(path.parent)
        staged = []
    finally:
        for tmp, _ in staged:  # an error before the renames: leave nothing half-published
            tmp.unlink(missing_ok=True)
    for path, data in last.items():
        if data is None and path.exists():
            path.unlink(missing_ok=True)
            touched.add(path.parent)
    for directory in touched:
        fsync_dir(directory)


def _make_parents(path: Path, touched: set[Path]) -> None:
    """Create the missing parents of ``path``, noting each new directory's parent as touched."""
    missing: list[Path] = []
    directory = path.parent
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        touched.add(directory.parent)


def publish_dir(staging: Path, destination: Path) -> None:
    """Move the complete directory ``staging`` to ``destination`` atomically, replacing an old copy.

    ``staging`` must be on the same file system as ``destination`` (a hidden sibling is best); it is
    gone afterwards. Steps, and why:

    1. fsync every file and directory under ``staging`` (``fsync_tree``): the rename must not reach
       the disk before the contents do.
    2. With no old copy, rename ``staging`` to ``destination``: atomic, so the directory appears
       complete or not at all.
    3. Over an old copy (a rename cannot replace a non-empty directory), swap the two atomically
       with Linux's ``renameat2(RENAME_EXCHANGE)``: at every instant ``destination`` is the complete
       old or the complete new directory. Where the OS or file system has no such swap, move the old
       copy aside to ``.<name>.old`` and rename ``staging`` in: a crash between those two renames
       leaves no ``destination`` but the old copy intact beside it, never a mix of old and new.
    4. fsync the parent directory (both, if ``staging`` lives elsewhere): the renames are changes to
       it, which a crash could otherwise undo.
    5. Remove the old copy. A crash before this leaves it under a hidden name, removed by the next
       publish (and by callers that clear their staging name before reuse).
    """
    fsync_tree(staging)
    aside = destination.with_name(f".{destination.name}.old")
    old: Path | None = None
    if not destination.exists():
        os.replace(staging, destination)
        if aside.exists():  # left by a crash in step 3's fallback: its replacement is now in place
            old = aside
    elif _exchange(staging, destination):
        old = staging
    else:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(destination, aside)
        os.replace(staging, destination)
        old = aside
    fsync_dir(destination.parent)
    if staging.parent.resolve() != destination.parent.resolve():
        fsync_dir(staging.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NOT_SUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (2.28+), or None off Linux or on a libc without it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the kernel or file system cannot (nothing
    moved then), OSError for any other failure."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_SUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
