"""Path safety for server-side sources: only what lies, once every symlink is resolved, under one
of the allowed roots (``ERS_ALLOWED_ROOTS``). None configured means no server path at all.

Checked twice: when a job is submitted (a clear 403) and again when each file is opened, on the
opened descriptor itself, so a symlink swapped in after the submit cannot lead outside.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from indexer.jobs.errors import ItemError, PathRefused

MAX_FILE_BYTES = 256 << 20  # one item's file; larger is refused rather than read into memory


def real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(r)) for r in roots]


def is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_source_path(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of a client-given server path; ``PathRefused`` unless it is plainly inside a
    root. ``..`` is refused outright (even when it would resolve inside), as are URLs."""
    if not roots:
        raise PathRefused("server paths are disabled: the server has no ERS_ALLOWED_ROOTS; upload the files instead")
    if "\x00" in raw or "://" in raw or raw.lower().startswith("file:"):
        raise PathRefused(f"'{raw}' is not a server path (URLs such as file:// are not accepted)")
    path = Path(raw)
    if not path.is_absolute():
        raise PathRefused(f"'{raw}' must be an absolute path under one of the allowed roots")
    if ".." in path.parts:
        raise PathRefused(f"'{raw}': '..' is not allowed in source paths")
    real = Path(os.path.realpath(path))
    if not any(is_inside(real, root) for root in real_roots(roots)):
        raise PathRefused(f"'{raw}' is outside the allowed roots (symlinks are resolved before checking)")
    return real


def read_file(path: Path, roots: Sequence[Path]) -> bytes:
    """A file's bytes, re-checked at open time: the descriptor actually opened must be a regular
    file inside a root. Every failure is one item's ``ItemError``, with the reason."""
    roots = real_roots(roots)
    if "\x00" in str(path):  # os calls raise ValueError on it, which would fail the whole job
        raise ItemError("refused: the path contains a NUL character")
    real = Path(os.path.realpath(path))
    if not any(is_inside(real, r) for r in roots):
        raise ItemError("refused: the path (or a symlink on it) leads outside the allowed roots")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    except OSError as exc:
        raise ItemError(f"unreadable file: {exc.strerror or exc}") from exc
    try:
        # What was opened, not what was asked: catches a directory swapped for a symlink meanwhile.
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}")) if os.path.isdir("/proc/self/fd") else real
        if not any(is_inside(opened, r) for r in roots):
            raise ItemError("refused: the file resolves outside the allowed roots")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemError("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ItemError(f"file has {info.st_size} bytes; the limit is {MAX_FILE_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as exc:
        raise ItemError(f"unreadable file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
