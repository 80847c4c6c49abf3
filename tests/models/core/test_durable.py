"""Crash-safe publishing (models.core.durable): a reader, a failed write or a killed process sees the
old content or the complete new one, never a mix, and no temp file is left where nobody sweeps it."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models.core import durable
from models.core.durable import TEMP_GLOB, atomic_write, atomic_write_bytes, publish_dir, publish_files

FILES = ("a.bin", "b.bin", "sub/c.bin")


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_atomic_write_publishes_through_a_hidden_temp_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(b"old")
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and fnmatch.fnmatch(tmp.name, TEMP_GLOB)
        assert path.read_bytes() == b"old"  # readers still see the old file while the new one is written
        tmp.write_bytes(b"new")

    atomic_write(path, write)
    assert path.read_bytes() == b"new" and not seen[0].exists()
    assert listing(tmp_path) == ["snapshot.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "index-7.faiss"
    atomic_write_bytes(path, b"old index")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new in")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, write)
    assert path.read_bytes() == b"old index"
    assert listing(tmp_path) == ["index-7.faiss"]


def test_threads_writing_one_file_never_share_a_temp(tmp_path: Path) -> None:
    path = tmp_path / "segment.json"
    values = [bytes([i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def writer(value: bytes) -> None:
        try:
            for _ in range(10):
                atomic_write_bytes(path, value)
        except BaseException as exc:  # collected: pytest does not see a thread's exception
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert path.read_bytes() in values  # one whole value, not a mix of two
    assert listing(tmp_path) == ["segment.json"]


def test_a_process_killed_mid_write_leaves_the_old_file_and_a_sweepable_temp(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    atomic_write_bytes(path, b"old")
    script = f"""
import os, signal
from pathlib import Path
from models.core.durable import atomic_write

def write(tmp):
    tmp.write_bytes(b"new but not finished")
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(Path({str(path)!r}), write)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[3], timeout=60)
    assert done.returncode == -9
    assert path.read_bytes() == b"old"
    leftovers = list(tmp_path.glob(TEMP_GLOB))  # what indexer.snapshot.remove_temp_files sweeps
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"new but not finished"


def test_publish_files_writes_parts_removes_and_creates_directories(tmp_path: Path) -> None:
    keep, drop, gone = tmp_path / "ab" / "keep", tmp_path / "cd" / "drop", tmp_path / "cd" / "never-was"
    publish_files([(keep, b"v1"), (drop, (b'{"id": "x"}\n', b"body"))])
    assert keep.read_bytes() == b"v1" and drop.read_bytes() == b'{"id": "x"}\nbody'

    publish_files([(keep, b"v2"), (drop, None), (gone, None), (tmp_path / "new" / "deep" / "f", b"f")])
    assert keep.read_bytes() == b"v2" and not drop.exists() and not gone.exists()
    assert (tmp_path / "new" / "deep" / "f").read_bytes() == b"f"
    assert listing(tmp_path) == ["ab", "ab/keep", "cd", "new", "new/deep", "new/deep/f"]


def test_publish_files_gives_a_repeated_path_its_last_change(tmp_path: Path) -> None:
    path = tmp_path / "item"
    publish_files([(path, b"first"), (path, b"second")])
    assert path.read_bytes() == b"second"
    publish_files([(path, b"third"), (path, None)])
    assert not path.exists()
    publish_files([(path, None), (path, b"fourth")])
    assert path.read_bytes() == b"fourth"


def test_a_failing_batch_changes_nothing_and_leaves_no_temp(tmp_path: Path) -> None:
    first, removed = tmp_path / "aa" / "first", tmp_path / "aa" / "removed"
    publish_files([(first, b"old first"), (removed, b"old removed")])
    blocker = tmp_path / "bb"
    blocker.write_bytes(b"a file where the batch needs a directory")
    before = listing(tmp_path)

    with pytest.raises(OSError):  # the third file cannot be staged: its parent is a file
        publish_files([(first, b"new first"), (removed, None), (blocker / "third", b"x")])
    assert first.read_bytes() == b"old first" and removed.read_bytes() == b"old removed"
    assert listing(tmp_path) == before


def write_generation(directory: Path, generation: int) -> None:
    for name in FILES:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(f"{generation}:{name}")


def generation_of(directory: Path) -> int:
    """The generation every file of ``directory`` holds; fails on a mix or a missing file."""
    generations = {(directory / name).read_text().split(":")[0] for name in FILES}
    assert len(generations) == 1, f"a mix of generations {generations}"
    return int(generations.pop())


def test_publish_dir_creates_then_replaces_and_cleans_up(tmp_path: Path) -> None:
    destination = tmp_path / "models" / "face@1"
    destination.parent.mkdir()
    for generation in (1, 2):
        staging = destination.with_name(f".staging-{destination.name}")
        staging.mkdir()
        write_generation(staging, generation)
        publish_dir(staging, destination)
        assert generation_of(destination) == generation
        assert not staging.exists()
        assert [p.name for p in destination.parent.iterdir()] == ["face@1"]  # no old copy left


def generation_through_fd(fd: int) -> int:
    """Like ``generation_of``, but every file read through one open handle of the directory, as a
    reader that must not mix two publishes does."""
    texts = set()
    for name in FILES:
        with open(name, encoding="utf-8", opener=lambda p, flags: os.open(p, flags, dir_fd=fd)) as f:
            texts.add(f.read().split(":")[0])
    assert len(texts) == 1, f"a mix of generations {texts}"
    return int(texts.pop())


@pytest.mark.parametrize("exchange", ["renameat2", "fallback"])
def test_a_reader_sees_the_old_or_the_new_directory_never_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: str
) -> None:
    if exchange == "fallback":  # as on a file system or OS without an atomic swap
        monkeypatch.setattr(durable, "_exchange", lambda a, b: False)
    elif durable._renameat2() is None:
        pytest.skip("no renameat2 here")
    destination = tmp_path / "epoch-0001"
    destination.mkdir()
    write_generation(destination, 0)
    stop = threading.Event()
    seen: list[int] = []
    absent = 0  # reads that found no directory at all
    failures: list[BaseException] = []

    def reader() -> None:
        nonlocal absent
        while not stop.is_set():
            try:
                fd = os.open(destination, os.O_RDONLY)
            except FileNotFoundError:  # between the fallback's two renames
                absent += 1
                continue
            try:
                seen.append(generation_through_fd(fd))
            except FileNotFoundError:  # the old copy's files, removed after it was swapped away
                pass
            except BaseException as exc:
                failures.append(exc)
                return
            finally:
                os.close(fd)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(1, 100):
            staging = tmp_path / ".tmp-epoch-0001"
            staging.mkdir()
            write_generation(staging, generation)
            publish_dir(staging, destination)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert seen and seen == sorted(seen)  # only whole generations, in publish order
    if exchange == "renameat2":
        assert absent == 0  # the swap never leaves the name without a directory
    assert generation_of(destination) == 99
    assert listing(tmp_path) == sorted(["epoch-0001", "epoch-0001/sub", *(f"epoch-0001/{n}" for n in FILES)])


def test_the_old_copy_a_crash_left_aside_is_replaced_by_the_next_publish(tmp_path: Path) -> None:
    destination = tmp_path / "text@2"
    aside = tmp_path / ".text@2.old"  # the fallback's crash window: old moved aside, new not yet in
    aside.mkdir()
    write_generation(aside, 1)
    staging = tmp_path / ".staging-text@2"
    staging.mkdir()
    write_generation(staging, 2)
    publish_dir(staging, destination)
    assert generation_of(destination) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text@2"]


def test_publish_dir_from_a_staging_directory_elsewhere_on_the_same_file_system(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "models").mkdir()
    staging = tmp_path / "work" / "build"
    staging.mkdir()
    write_generation(staging, 5)
    publish_dir(staging, tmp_path / "models" / "m@1")
    assert generation_of(tmp_path / "models" / "m@1") == 5
    assert os.listdir(tmp_path / "work") == []
