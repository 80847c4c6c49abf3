"""The moved-vector archive: a backfill's moves are kept first, and a restore puts them back exactly,
except where a client wrote or deleted since (the client's write wins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.moved_vectors import MovedBatch, MovedVectors
from tests.indexer.test_segments import OpenCollection, gallery, open_mixed  # noqa: F401  (fixture)


def test_archive_round_trips_and_refuses_path_like_job_ids(tmp_path: Path) -> None:
    archive = MovedVectors(tmp_path)
    batch = MovedBatch(["a", "b"], np.array([7, 9], np.int64), ["enc@1", None],
                       np.arange(8, dtype=np.float32).reshape(2, 4))  # fmt: skip
    archive.keep("job1", "enc@2", "0000000002-4", batch)
    archive.keep("job1", "enc@2", "0000000010-4", batch)
    archive.keep("job2", "enc@3", "0000000001-4", batch)
    assert archive.jobs_moving_to("enc@2") == ["job1"] and archive.count("job1") == 4
    first = next(archive.batches("job1"))
    assert first.ids == ["a", "b"] and first.versions == ["enc@1", None]
    assert first.moved_int_ids.tolist() == [7, 9] and np.array_equal(first.vectors, batch.vectors)
    archive.drop("job1")
    assert archive.jobs_moving_to("enc@2") == [] and archive.jobs_moving_to("enc@3") == ["job2"]
    for bad in ("../x", "a/b", "", "x" * 65):
        with pytest.raises(ValueError):
            archive.keep(bad, "enc@2", "0", batch)


def test_restore_puts_back_moved_vectors_but_keeps_client_writes(open_mixed: OpenCollection) -> None:  # noqa: F811
    rng = np.random.default_rng(3)
    v1, v2 = gallery(rng, 6)
    c = open_mixed()
    ids = [f"i{n}" for n in range(6)]
    c.upsert(ids, v1, [{"n": n} for n in range(6)])
    before = {h.id: h.score for h in c.search(v1[2:3], k=6, version="enc@1")[0]}
    stored_before = [c.store.get_item(c.name, i, with_vector=True).vector for i in ids[:4]]  # type: ignore[union-attr]
    c.set_active_encoder("enc@2", 6, {"to": "enc@2"})
    # a backfill batch moves i0..i3 to enc@2 (i4, i5 stay v1), keeping their old vectors first
    assert c.upsert(ids[:4], v2[:4], [{"n": n} for n in range(4)], ["enc@2"] * 4,
                    only_moving_to="enc@2", archive_as=("job1", 1)) == 4  # fmt: skip
    assert c.moved.jobs_moving_to("enc@2") == ["job1"]
    (batch,) = list(c.moved.batches("job1"))
    assert batch.ids == ids[:4] and batch.versions == ["enc@1"] * 4
    assert np.array_equal(batch.vectors, np.vstack(stored_before))  # exactly what was stored
    assert [c.id_to_int[i] for i in ids[:4]] == batch.moved_int_ids.tolist()  # the ids the move gave
    # a client then rewrites i1 and deletes i2: those writes must survive the restore
    c.upsert(["i1"], v2[5:6] * 3)
    c.delete(["i2"])
    written = c.upsert(batch.ids, batch.vectors, None, batch.versions, only_moving_to="enc@1",
                       expected=batch.moved_int_ids.tolist())  # fmt: skip
    assert written == 2  # i0 and i3 only
    assert c.versions[c.id_to_int["i0"]] == "enc@1" and c.versions[c.id_to_int["i3"]] == "enc@1"
    assert c.versions[c.id_to_int["i1"]] == "enc@2" and "i2" not in c.id_to_int
    c.set_active_encoder("enc@1", 4, {"to": "enc@1"})
    after = {h.id: h.score for h in c.search(v1[2:3], k=6, version="enc@1")[0]}
    for item in ("i0", "i3", "i4", "i5"):  # restored or never moved: exactly the old scores
        assert after[item] == pytest.approx(before[item], abs=1e-6)
    # a second restore of the same batch finds nothing left to move back
    assert c.upsert(batch.ids, batch.vectors, None, batch.versions, only_moving_to="enc@1",
                    expected=batch.moved_int_ids.tolist()) == 0  # fmt: skip
