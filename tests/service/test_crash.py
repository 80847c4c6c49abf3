"""Crash safety, end to end: the crasher (``tests/service/crasher.py``) ``kill -9``-s a real
``ers serve`` child process 32 times while four writers (two per collection, one L2 and one cosine
collection) upsert new ids, overwrite live ids (repeats inside a batch: the last one wins), bring
deleted ids back and delete ids; after every restart on the same data directory it checks:

- every live id the clients can account for is present with a bit-exact vector and payload: the
  last acknowledged write of each id wins;
- an acknowledged delete never comes back, nor does an unacknowledged write found absent: every id
  changed since the last restart is fetched, and count == indexed == the live ids proves that no
  other id is in the collection;
- a request in flight at a kill is all or nothing (never half of a batch), and the outcome found
  after the restart stays so at the next one;
- a search with an item's own vector returns that item first (the index agrees with the store);
- while writing, count == indexed at every poll; nothing is refused; the server logs no error.

The settings change at every start: small ``ERS_SNAPSHOT_EVERY`` and ``ERS_WAL_SEGMENT_BYTES`` (kills
land on snapshots, log segment rotation and truncation), and an ``ERS_AUTO_INDEX_THRESHOLD`` below
the count, so an IVF index is trained and swapped in while the writers run (the kill waits for it).
At the end the server is stopped gracefully (final snapshots), started again and verified.

The random moments come from one seed, printed at the start and in every failure; rerun a failure
with ``ERS_CRASH_SEED=<seed>`` (timing still varies run to run: a kill is a race) and soak with
``ERS_CRASH_KILLS=<n>``. ``make chaos`` (``tests/chaos/run.py``) runs the same crasher with 200
kills on both metadata stores.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.service.crash_support import CrashFailure, Plan, Setting, log_errors
from tests.service.crasher import Crasher
from tests.service.server_proc import ServerProcess

CI_KILLS = 32  # the issue asks for at least 30 in at most 3 minutes on 2 cores
CI_DEADLINE_S = 165.0  # no new cycle after this: a loaded machine ends with fewer kills, and fails clearly

SETTINGS = (
    Setting({"ERS_SNAPSHOT_EVERY": "40", "ERS_WAL_SEGMENT_BYTES": "4096"}),
    Setting(
        # a budget HNSW outgrows at ~80 live items: `auto` trains IVF-SQ8 re-ranked from exact-vector files
        {
            "ERS_SNAPSHOT_EVERY": "25",
            "ERS_WAL_SEGMENT_BYTES": "2048",
            "ERS_AUTO_INDEX_THRESHOLD": "{live-10}",
            "ERS_MEMORY_BUDGET": "30000",
        },
        kill_after_ivf=True,
    ),
    Setting({"ERS_SNAPSHOT_EVERY": "60", "ERS_WAL_SEGMENT_BYTES": "8192"}),
    Setting({"ERS_SNAPSHOT_EVERY": "30", "ERS_WAL_SEGMENT_BYTES": "1024", "ERS_AUTO_INDEX_THRESHOLD": "100"}),
    Setting({"ERS_WAL_SEGMENT_BYTES": "4096"}),  # no snapshot during the run: the restart replays the log
)


def crash_seed() -> int:
    env = os.environ.get("ERS_CRASH_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)


def test_crasher_kill9_during_writes_snapshots_and_log_rotation(tmp_path: Path) -> None:
    seed = crash_seed()
    kills = int(os.environ.get("ERS_CRASH_KILLS", CI_KILLS))
    plan = Plan(kills=kills, deadline_s=CI_DEADLINE_S * max(1.0, kills / CI_KILLS), settings=SETTINGS)
    server = ServerProcess(tmp_path / "data")
    print(f"crasher: seed {seed} (rerun with ERS_CRASH_SEED={seed}); server log {server.log_path}")
    crasher = Crasher(server, plan, seed)
    try:
        report = crasher.run()
        # A graceful stop (final snapshots) after the last crash, then one more start and check.
        code = server.stop()  # uvicorn re-raises the SIGTERM it handled once it has shut down: -15
        log = server.log_text(current_run_only=True)
        if code not in (0, -15) or "Application shutdown complete" not in log or log_errors(log):
            raise crasher.failure(f"graceful stop: exit status {code}; errors {log_errors(log)}")
        server.env_extra = {}
        server.start(timeout=120.0)
        crasher.verify_now()
    except CrashFailure as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        server.stop()
    summary = report.summary()
    print(f"crasher: {summary}")
    assert report.kills >= min(kills, 30), f"only {report.kills} kills in {CI_DEADLINE_S:.0f} s: {summary}"
    assert report.tally.upserts and report.tally.deletes, f"the writers did not both upsert and delete: {summary}"
    assert report.tally.applied + report.tally.not_applied > 0, f"no kill hit a request in flight: {summary}"
    assert any(i.startswith("IVF") for i in report.indexes) and "Flat" in report.indexes, (
        f"expected kills on a Flat and on an IVF index; saw {sorted(report.indexes)}"
    )
