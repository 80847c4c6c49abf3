"""The crasher, in the spirit of Qdrant's: ``kill -9`` a real ``ers serve`` again and again while
writers stream upserts of new ids, overwrites and deletes, restart it on the same data directory,
and after every restart check every acknowledged state (``verify``).

``tests/service/test_crash.py`` runs it in CI (30+ kills) and ``tests/chaos/run.py`` (``make chaos``)
runs 200 kills on the SQLite and the Redis store. The writers and what they know are
``tests/service/crash_ledger.py``; the server process is ``tests/service/server_proc.py``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.service.crash_ledger import TIMEOUT, Ledger, State, Tally, describe_state, items_path

MAX_QUERIES = 256  # ERS_MAX_QUERIES: one batch search


class CrashFailure(AssertionError):
    """A guarantee broke (or the server misbehaved); the message says which, and how to rerun."""


@dataclass(frozen=True)
class Setting:
    """The ``ERS_*`` settings of one run of the server. ``{live-10}`` in a value is replaced by the
    live items of the smallest collection minus 10 (at least 40): an index build at the first write.
    ``kill_after_ivf`` waits (up to 20 s) for a built approximate index (HNSW or IVF) before the kill
    window starts."""

    env: dict[str, str]
    kill_after_ivf: bool = False


@dataclass(frozen=True)
class Plan:
    kills: int
    deadline_s: float  # no new cycle starts after this many seconds
    settings: tuple[Setting, ...]
    base_env: dict[str, str] = field(default_factory=dict)  # every start (ERS_REDIS_URL...)
    collections: tuple[tuple[str, str], ...] = (("crash_l2", "l2"), ("crash_cos", "cosine"))
    writers_per_collection: int = 2
    dim: int = 16
    live_target: int = 50  # live ids per writer
    max_batch: int = 12
    window_s: tuple[float, float] = (0.05, 0.5)  # writing before the kill, once every writer was acknowledged
    pause_s: float = 0.005  # at most, between two writes of one writer
    old_deleted_checked: int = 15  # per writer and restart, besides every id changed since the last one
    stop_at_first_finding: bool = True


@dataclass
class Findings:
    lost: set[str] = field(default_factory=set)  # acknowledged present, found absent
    phantom: set[str] = field(default_factory=set)  # acknowledged absent (deleted, or never acknowledged), found
    mismatched: set[str] = field(default_factory=set)  # present with another vector or payload
    torn: list[str] = field(default_factory=list)  # in-flight requests found half applied
    errors: list[str] = field(default_factory=list)  # counts, searches, rejected writes, server log errors
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.lost or self.phantom or self.mismatched or self.torn or self.errors)

    def merge(self, other: Findings) -> None:
        self.lost |= other.lost
        self.phantom |= other.phantom
        self.mismatched |= other.mismatched
        self.torn += other.torn
        self.errors += other.errors
        self.details += other.details

    def describe(self, limit: int = 12) -> str:
        head = (
            f"{len(self.lost)} lost, {len(self.phantom)} phantom, {len(self.mismatched)} mismatched, "
            f"{len(self.torn)} torn batches, {len(self.errors)} other errors"
        )
        return "\n".join([head, *self.details[:limit], *self.torn[:limit], *self.errors[:limit]])


@dataclass
class Report:
    seed: int
    kills: int = 0
    elapsed_s: float = 0.0
    ready_s: list[float] = field(default_factory=list)  # spawn -> /readyz 200, per start after a kill
    tally: Tally = field(default_factory=Tally)
    findings: Findings = field(default_factory=Findings)
    indexes: set[str] = field(default_factory=set)
    live: int = 0
    checked: int = 0  # items compared bit-exact, all restarts together

    def summary(self) -> dict[str, Any]:
        ready = sorted(self.ready_s) or [0.0]
        return {
            "kills": self.kills,
            "wall_s": round(self.elapsed_s, 1),
            "acked_upserts": self.tally.upserts,
            "acked_items": self.tally.items,
            "acked_deletes": self.tally.deletes,
            "in_flight_applied": self.tally.applied,
            "in_flight_not_applied": self.tally.not_applied,
            "checked_bit_exact": self.checked,
            "live_at_end": self.live,
            "lost": len(self.findings.lost),
            "phantom": len(self.findings.phantom),
            "mismatched": len(self.findings.mismatched),
            "torn": len(self.findings.torn),
            "errors": len(self.findings.errors),
            "ready_median_s": round(statistics.median(ready), 2),
            "ready_max_s": round(ready[-1], 2),
            "indexes": sorted(self.indexes),
            "seed": self.seed,
        }


# -- reading the server --------------------------------------------------------------------------
def fetch_states(url: str, keys: list[tuple[str, str]], threads: int = 4) -> dict[tuple[str, str], State]:
    """``GET .../items/{id}?with_vector=true`` for every (collection, id), a few at a time."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def get(key: tuple[str, str]) -> State:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=TIMEOUT)
            clients.append(client)
        r = client.get(f"{items_path(key[0])}/{key[1]}", params={"with_vector": True})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise CrashFailure(f"GET item {key}: HTTP {r.status_code}: {r.text[:1000]}")
        body = r.json()
        return np.asarray(body["vector"], dtype=np.float32).tobytes(), body["payload"]

    try:
        with ThreadPoolExecutor(threads) as pool:
            return dict(zip(keys, pool.map(get, keys), strict=True))
    finally:
        for client in clients:
            client.close()


def collection_info(client: httpx.Client, name: str) -> dict[str, Any]:
    r = client.get(f"/v1/collections/{name}")
    if r.status_code != 200:
        raise CrashFailure(f"GET collection {name}: HTTP {r.status_code}: {r.text[:1000]}")
    info: dict[str, Any] = r.json()
    return info


def search_misses(client: httpx.Client, name: str, vectors: dict[str, bytes]) -> list[tuple[str, str | None]]:
    """Items a k=1 search with their own vector does not return first (the index disagrees with the store)."""
    ids, misses = list(vectors), []
    for start in range(0, len(ids), MAX_QUERIES):
        chunk = ids[start : start + MAX_QUERIES]
        queries = [{"vector": np.frombuffer(vectors[i], dtype=np.float32).tolist(), "k": 1} for i in chunk]
        r = client.post(f"/v1/collections/{name}/search/batch", json={"queries": queries})
        if r.status_code != 200:
            raise CrashFailure(f"batch search {name}: HTTP {r.status_code}: {r.text[:1000]}")
        for item_id, hits in zip(chunk, r.json()["results"], strict=True):
            top = hits[0]["id"] if hits else None
            if top != item_id:
                misses.append((item_id, top))
    return misses


def verify(
    url: str, ledgers: list[Ledger], rng: np.random.Generator, old_deleted: int
) -> tuple[Findings, int, list[str]]:
    """After a restart: decide each in-flight request, then compare every live id, every id changed
    since the last restart and a sample of older deletes bit-exact with the ledgers, and check that
    count == indexed == live ids for each collection. With every live id found exact, that count
    leaves no room for any other id: no deleted or unacknowledged id is back anywhere.
    Returns the findings, the number of ids compared and notes for the history."""
    findings, notes = Findings(), []
    wanted = {id(ledger): ledger.ids_to_check(rng, old_deleted) for ledger in ledgers}
    keys = [(ledger.collection, i) for ledger in ledgers for i in wanted[id(ledger)]]
    fetched = fetch_states(url, keys)
    for ledger in ledgers:
        observed = {i: fetched[(ledger.collection, i)] for i in wanted[id(ledger)]}
        op = ledger.decide(observed)
        if op is not None:
            notes.append(f"  in flight on {ledger.collection}: {op.kind} {op.key} ({len(op.after)} ids) {op.state}")
            if op.state == "torn":
                rows = [f"    {i}: before {describe_state(op.before[i])}; after {describe_state(s)}; "
                        f"found {describe_state(observed[i])}" for i, s in op.after.items()]  # fmt: skip
                findings.torn.append(f"unacknowledged {op.describe()} is half applied:\n" + "\n".join(rows))
        for item_id, got in observed.items():
            expected = ledger.states.get(item_id)
            if got == expected:
                continue
            name = f"{ledger.collection}/{item_id}"
            kind = findings.lost if got is None else findings.phantom if expected is None else findings.mismatched
            kind.add(name)
            findings.details.append(f"  {name}: expected {describe_state(expected)}, found {describe_state(got)}")
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for name in sorted({ledger.collection for ledger in ledgers}):
            mine = [ledger for ledger in ledgers if ledger.collection == name]
            live = {i: v for ledger in mine for i, v in ledger.expected_live().items()}
            info = collection_info(client, name)
            if not info["count"] == info["indexed"] == len(live):
                findings.errors.append(f"{name}: count {info['count']} / indexed {info['indexed']} / live ids the "
                                       f"clients acknowledged {len(live)} disagree: {info}")  # fmt: skip
                _name_phantoms(url, mine, findings)
            misses = search_misses(client, name, live)
            if misses:
                findings.errors.append(f"{name}: {len(misses)} of {len(live)} searches with an item's own vector "
                                       f"did not return it first (id, top hit): {misses[:8]}")  # fmt: skip
            notes.append(f"  {name}: {len(live)} live, index {info['active_index']} nprobe {info['nprobe']}")
    for ledger in ledgers:
        ledger.checked()
    return findings, len(keys), notes


def _name_phantoms(url: str, ledgers: Iterable[Ledger], findings: Findings) -> None:
    """A count above the live ids: look for the extra ones among every id ever deleted or refused."""
    keys = [(ledger.collection, i) for ledger in ledgers for i in ledger.states if ledger.states[i] is None]
    keys = [key for key in keys if "/".join(key) not in findings.phantom]
    for key, got in fetch_states(url, keys).items():
        if got is not None:
            findings.phantom.add("/".join(key))
            findings.details.append(f"  {'/'.join(key)}: expected absent, found {describe_state(got)}")


def disk_note(data_dir: Path, collections: Iterable[str]) -> str:
    """What the kill left on disk (for the history: the checks go through the API)."""
    parts = []
    for name in collections:
        directory = data_dir / "collections" / name
        try:
            wal = sum(p.stat().st_size for p in (directory / "wal").glob("*.log"))
            segments = len(list((directory / "wal").glob("*.log")))
            snaps = len(list(directory.rglob("*.faiss")))
            tmp = sorted(p.name for p in directory.rglob(".*.tmp-*"))
        except OSError as exc:
            parts.append(f"{name}: {exc!r}")
            continue
        parts.append(
            f"{name}: wal {wal} B in {segments} segments, {snaps} snapshots" + (f", left {tmp}" if tmp else "")
        )
    return "; ".join(parts)


def log_errors(text: str) -> list[str]:
    """Background threads (snapshots, index builds) only log their failures: find them."""
    return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line or "ERROR:" in line]


def watch(
    url: str, names: list[str], seconds: float, ready: Callable[[], bool], until_ivf: bool
) -> tuple[set[str], list[str]]:
    """Poll the collections while the writers run, checking count == indexed at every poll (both
    move under one lock); the window of ``seconds`` starts once ``ready()`` (every writer has been
    acknowledged once) and, with ``until_ivf``, an IVF index is active. Returns the indexes seen and errors."""
    seen: set[str] = set()
    errors: list[str] = []
    started = time.monotonic()
    window_from: float | None = None
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        while True:
            ivf = False
            for name in names:
                info = collection_info(client, name)
                seen.add(info["active_index"] + (" (building)" if info["building"] else ""))
                # a built approximate index: `auto` picks HNSW at these sizes, IVF past a memory budget
                ivf = ivf or str(info["active_index"]).startswith(("IVF", "HNSW"))
                if info["count"] != info["indexed"]:
                    errors.append(f"{name} while writing: count {info['count']} != indexed {info['indexed']}")
            now = time.monotonic()
            if window_from is None and ready() and (ivf or not until_ivf or now - started > 20):
                window_from = now
            if window_from is not None and now - window_from >= seconds:
                return seen, errors
            if now - started > 60:  # the writers never got an answer: the server hangs
                raise CrashFailure(f"writers not acknowledged within 60 s; saw {seen}")
            time.sleep(0.02 if window_from is None else min(0.05, max(0.005, seconds - (now - window_from))))
