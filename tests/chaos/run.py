"""``make chaos``: the CI crasher at length. 200 ``kill -9`` of a real ``ers serve`` during writes,
once on the embedded SQLite store and once on the Redis store (a real ``redis-server`` with
``appendfsync always``, itself killed with ``-9`` every ``--kill-redis-every`` kills), with bigger
batches and more live items than CI; every acknowledged state is checked after every restart
(``tests/service/crash_support.verify``). Prints a summary per store; exits 1 on any finding.

    .venv/bin/python -m tests.chaos.run --kills 200 --store sqlite --store redis [--json out.json]

Unlike the CI test it does not stop at the first finding: it counts lost, phantom and mismatched
ids, torn batches and other errors over the whole run, keeps the work directory (data, server logs,
history) when anything was found, and prints where it is.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import RedisServer
from tests.service.crash_support import CrashFailure, Plan, Setting
from tests.service.crasher import Crasher
from tests.service.server_proc import ServerProcess

SETTINGS = (
    Setting({"ERS_SNAPSHOT_EVERY": "200", "ERS_WAL_SEGMENT_BYTES": "16384"}),
    Setting(
        {"ERS_SNAPSHOT_EVERY": "100", "ERS_WAL_SEGMENT_BYTES": "8192", "ERS_AUTO_INDEX_THRESHOLD": "{live-10}"},
        kill_after_ivf=True,
    ),
    Setting({"ERS_SNAPSHOT_EVERY": "500", "ERS_WAL_SEGMENT_BYTES": "65536"}),
    Setting({"ERS_SNAPSHOT_EVERY": "150", "ERS_WAL_SEGMENT_BYTES": "4096", "ERS_AUTO_INDEX_THRESHOLD": "300"}),
    Setting({"ERS_WAL_SEGMENT_BYTES": "32768"}),  # no snapshot during the run: the restart replays the log
)
COLUMNS = [  # (summary key, table heading)
    ("kills", "kills"),
    ("wall_s", "wall s"),
    ("acked_items", "acked items"),
    ("acked_upserts", "acked upserts"),
    ("acked_deletes", "acked deletes"),
    ("in_flight_applied", "in flight: applied"),
    ("in_flight_not_applied", "in flight: not applied"),
    ("checked_bit_exact", "bit-exact checks"),
    ("lost", "lost"),
    ("phantom", "phantom"),
    ("mismatched", "mismatched"),
    ("torn", "torn batches"),
    ("errors", "other errors"),
    ("ready_median_s", "median s to ready"),
    ("ready_max_s", "max s to ready"),
]


def plan_for(kills: int, base_env: dict[str, str]) -> Plan:
    return Plan(
        kills=kills,
        deadline_s=float("inf"),
        settings=SETTINGS,
        base_env=base_env,
        writers_per_collection=2,
        live_target=250,
        max_batch=64,
        window_s=(0.2, 1.5),
        old_deleted_checked=50,
        stop_at_first_finding=False,
    )


def run_store(store: str, kills: int, seed: int, work: Path, kill_redis_every: int) -> dict[str, Any]:
    work.mkdir(parents=True)
    history = (work / "history.log").open("w")
    redis: RedisServer | None = None
    base_env: dict[str, str] = {}
    after_kill: Callable[[int], None] | None = None
    redis_kills = 0
    if store == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found on PATH: `make redis-server` installs it")
        (work / "redis").mkdir()
        redis = RedisServer(binary, work / "redis")  # AOF, appendfsync always
        redis.start()
        base_env = {"ERS_REDIS_URL": redis.url, "ERS_REDIS_PREFIX": f"chaos{uuid.uuid4().hex[:8]}"}

        def after_kill(done: int) -> None:  # while ers is down: Redis dies too, now and then
            nonlocal redis_kills
            assert redis is not None
            if kill_redis_every and done % kill_redis_every == 0:
                redis.kill()
                redis.start()
                redis_kills += 1

    def say(line: str) -> None:
        history.write(line + "\n")
        history.flush()
        if line.startswith("kill ") and (line.split()[1].rstrip(":").isdigit()):
            done = int(line.split()[1])
            if done % 10 == 0:
                print(f"  {store}: {done}/{kills} kills, {time.strftime('%H:%M:%S')}", flush=True)
        elif "FOUND" in line:
            print(f"  {store}: {line.strip()}", flush=True)

    server = ServerProcess(work / "data")
    crasher = Crasher(server, plan_for(kills, base_env), seed, say=say, after_kill=after_kill)
    failure = ""
    try:
        report = crasher.run()
    except CrashFailure as exc:  # the server could not be restarted (or hung): the run cannot go on
        failure = str(exc).splitlines()[0]
        report = crasher.report
        print(f"  {store}: stopped: {exc}", flush=True)
    finally:
        server.stop()
        if redis is not None:
            redis.stop()
        history.close()
    summary = {"store": store, **report.summary(), "redis_kills": redis_kills, "failure": failure}
    summary["findings"] = report.findings.describe(limit=20) if report.findings else ""
    return summary


def table(rows: list[dict[str, Any]]) -> str:
    head = "| store | " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    body = [f"| {r['store']} | " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k, _ in COLUMNS)
            + " |" for r in rows]  # fmt: skip
    return "\n".join([head, rule, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m tests.chaos.run")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--store", action="append", choices=["sqlite", "redis"], help="repeatable; default both")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-redis-every", type=int, default=10, help="also kill -9 redis-server (0: never)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ers-chaos-"))
    print(f"chaos: {args.kills} kills per store, seed {seed}, work directory {work}", flush=True)
    rows = [
        run_store(store, args.kills, seed, work / store, args.kill_redis_every)
        for store in args.store or ["sqlite", "redis"]
    ]
    print(table(rows))
    for row in rows:
        print(f"{row['store']}: {row['redis_kills']} redis-server kills; indexes seen {row['indexes']}; seed {seed}")
        if row["findings"] or row["failure"]:
            print(f"{row['store']} FOUND: {row['failure']}\n{row['findings']}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    bad = any(row["findings"] or row["failure"] for row in rows)
    if bad:
        print(f"kept {work} (data, server logs, history.log per store)")
    elif args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
