"""The write-ahead log keeps every fsynced record and drops only a torn, unacknowledged tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.wal import HEADER, WriteAheadLog


def test_records_come_back_in_order_with_their_offsets(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    offsets = [wal.append(f"record-{i}".encode()) for i in range(50)]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert [p for _, p in wal.replay()] == [f"record-{i}".encode() for i in range(50)]
    assert [o for o, _ in wal.replay(offsets[30])] == offsets[30:]
    wal.close()
    reopened = WriteAheadLog(tmp_path)
    assert reopened.end_offset == wal.end_offset
    assert len(list(reopened.replay())) == 50


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size + 3])
def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path, cut: int) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"first")
    second = wal.append(b"second-record")
    wal.close()
    segment = next(tmp_path.glob("*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[: second + cut])  # a crash in the middle of the second append
    wal = WriteAheadLog(tmp_path)
    assert [p for _, p in wal.replay()] == [b"first"]
    assert wal.end_offset == second
    wal.append(b"third")
    assert [p for _, p in wal.replay()] == [b"first", b"third"]


def test_corrupt_byte_in_last_record_drops_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"keep")
    last = wal.append(b"flip-me")
    wal.close()
    segment = next(tmp_path.glob("*.log"))
    data = bytearray(segment.read_bytes())
    data[last + HEADER.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert [p for _, p in WriteAheadLog(tmp_path).replay()] == [b"keep"]


def test_segments_rotate_and_old_ones_are_dropped(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=200)
    offsets = [wal.append(bytes(50)) for _ in range(20)]
    segments = sorted(tmp_path.glob("*.log"))
    assert len(segments) > 3
    dropped = wal.truncate_before(offsets[10])
    assert dropped > 0
    assert wal.start_offset <= offsets[10]
    assert [o for o, _ in wal.replay(offsets[10])] == offsets[10:]
    with pytest.raises(ValueError, match="truncated"):
        list(wal.replay(0))
    wal.close()
    reopened = WriteAheadLog(tmp_path, segment_bytes=200)
    assert [o for o, _ in reopened.replay(offsets[10])] == offsets[10:]
    assert reopened.end_offset == wal.end_offset


def test_a_replay_under_way_skips_nothing_when_old_segments_are_dropped(tmp_path: Path) -> None:
    # A snapshot thread truncates the log (without the writer lock) while a write's catch-up replays it:
    # the replay must still yield every record from where it started, in order.
    wal = WriteAheadLog(tmp_path, segment_bytes=200)
    offsets = [wal.append(bytes(50)) for _ in range(20)]
    bases = sorted(int(p.stem) for p in tmp_path.glob("*.log"))
    assert len(bases) >= 4
    replay = wal.replay(bases[2])
    first, _ = next(replay)  # reading the third segment
    assert wal.truncate_before(bases[2]) == 2  # the two before it go (a snapshot covers them)
    rest = [o for o, _ in replay]
    assert [first, *rest] == [o for o in offsets if o >= bases[2]]
    wal.close()
