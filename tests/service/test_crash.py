"""Crash safety, end to end: a real ``ers serve`` child process is ``kill -9``-ed at random moments
while clients stream writes, then restarted on the same data directory and checked:

- every acknowledged item is present with a bit-exact vector (and its payload);
- a batch that was in flight at the kill is either wholly present or wholly absent, never half;
- an unacknowledged batch, once found absent (or present), stays so after later crashes;
- FAISS count == metadata count == the number of items the client can account for;
- a search with an item's own vector returns that item first (the index agrees with the store).

Kills land on plain writes, on frequent snapshots (``ERS_SNAPSHOT_EVERY``) and around the
background IVF build and swap (``ERS_AUTO_INDEX_THRESHOLD``). A second test replaces and deletes
existing ids across crashes and checks that the last acknowledged state wins.

The random moments come from one seed, printed at the start and in every failure; rerun a
failure with ``ERS_CRASH_SEED=<seed>`` (timing still varies run to run: a kill is a race), and
soak with ``ERS_CRASH_ROUNDS=<n>`` (each schedule of kills n times over).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np
import pytest

from tests.service.server_proc import ServerProcess

DIM = 16
NAME = "crash"
ITEMS = f"/v1/collections/{NAME}/items"
TIMEOUT = httpx.Timeout(30.0)


def _seed() -> int:
    env = os.environ.get("ERS_CRASH_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)


def _rounds() -> int:
    """``ERS_CRASH_ROUNDS=N`` runs each test's schedule of kills N times over (a soak run)."""
    return max(1, int(os.environ.get("ERS_CRASH_ROUNDS", "1")))


def _vec_bytes(vector: Any) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class Ctx:
    """What a failure message needs: the seed, where we are, and the server's log."""

    def __init__(self, test: str, seed: int, server: ServerProcess) -> None:
        self.test = test
        self.seed = seed
        self.server = server
        self.cycle = -1
        self.env: dict[str, str] = {}
        self.notes: list[str] = []
        print(f"{test}: seed {seed} (rerun with ERS_CRASH_SEED={seed}); server log {server.log_path}")

    def note(self, line: str) -> None:
        self.notes.append(line)
        print(line)

    def fail(self, message: str) -> NoReturn:
        history = "\n".join(self.notes[-40:])
        pytest.fail(
            f"{message}\n--- {self.test}: seed {self.seed} (ERS_CRASH_SEED={self.seed}), cycle {self.cycle}, "
            f"env {self.env}\n--- history:\n{history}\n--- server log tail ({self.server.log_path}):\n"
            f"{server_log_tail(self.server)}",
            pytrace=False,
        )

    def check(self, ok: bool, message: str | Callable[[], str]) -> None:
        if not ok:
            self.fail(message() if callable(message) else message)


def server_log_tail(server: ServerProcess, lines: int = 60) -> str:
    """The end of the server's log without the access lines (one per request)."""
    kept = [line for line in server.log_text().splitlines() if ' HTTP/1.1" ' not in line]
    return "\n".join(kept[-lines:])


def disk_note(data_dir: Path) -> str:
    """What the kill left on disk (for the history only; the checks go through the API)."""
    try:
        directory = data_dir / "collections" / NAME
        meta = directory / "snapshot.json"
        snap = json.loads(meta.read_text())["offset"] if meta.exists() else None
        wal = sum(p.stat().st_size for p in (directory / "wal").glob("*.log"))
        tmp = sorted(p.name for p in directory.glob(".*.tmp-*"))
    except (OSError, ValueError, KeyError) as exc:
        return f"disk: {exc!r}"
    return f"snapshot at {snap}, wal {wal} B" + (f", interrupted writes left {tmp}" if tmp else "")


def torn_note(server: ServerProcess) -> str:
    torn = [line for line in server.log_text(current_run_only=True).splitlines() if "torn tail" in line]
    return f"  restart cut a torn log tail: {torn[0]}" if torn else ""


# -- HTTP helpers --------------------------------------------------------------------------------
def fetch_items(url: str, ids: list[str], ctx: Ctx, threads: int = 3) -> dict[str, dict[str, Any] | None]:
    """``GET .../items/{id}?with_vector=true`` for every id (None where 404), a few at a time."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def get(item_id: str) -> tuple[str, int, Any]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=TIMEOUT)
            with lock:
                clients.append(client)
        r = client.get(f"{ITEMS}/{item_id}", params={"with_vector": True})
        return item_id, r.status_code, r.json() if r.status_code == 200 else r.text

    try:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(get, ids))
    finally:
        for client in clients:
            client.close()
    out: dict[str, dict[str, Any] | None] = {}
    for item_id, status, body in results:
        ctx.check(status in (200, 404), f"GET item {item_id}: HTTP {status}: {body}")
        out[item_id] = body if status == 200 else None
    return out


def collection_info(client: httpx.Client, ctx: Ctx) -> dict[str, Any]:
    r = client.get(f"/v1/collections/{NAME}")
    ctx.check(r.status_code == 200, lambda: f"GET collection: HTTP {r.status_code}: {r.text}")
    info: dict[str, Any] = r.json()
    return info


def check_counts(client: httpx.Client, ctx: Ctx, expected: int) -> dict[str, Any]:
    info = collection_info(client, ctx)
    ctx.check(
        info["count"] == info["indexed"] == expected,
        lambda: (
            f"count {info['count']} / indexed (FAISS) {info['indexed']} / items the client accounts for "
            f"{expected} disagree; collection: {info}"
        ),
    )
    return info


def check_search_finds_self(client: httpx.Client, ctx: Ctx, vectors: dict[str, bytes]) -> None:
    """A query with an item's own vector must return that item first (index == store)."""
    ids = list(vectors)
    for start in range(0, len(ids), 256):  # ERS_MAX_QUERIES
        chunk = ids[start : start + 256]
        queries = [{"vector": np.frombuffer(vectors[i], dtype=np.float32).tolist(), "k": 1} for i in chunk]
        r = client.post(f"/v1/collections/{NAME}/search/batch", json={"queries": queries})
        if r.status_code != 200:
            ctx.fail(f"batch search: HTTP {r.status_code}: {r.text[:2000]}")
        results = r.json()["results"]
        top = [(i, res[0]["id"] if res else None) for i, res in zip(chunk, results, strict=True)]
        wrong = [(i, got) for i, got in top if got != i]
        if wrong:
            ctx.fail(
                f"{len(wrong)} of {len(chunk)} searches with an item's own vector did not return it first "
                f"(id, top hit): {wrong[:10]}; collection {collection_info(client, ctx)}"
            )


def upsert_ok(r: httpx.Response, n: int) -> bool:
    """200 with every item written (no ``skipped`` items: these are plain vectors)."""
    if r.status_code != 200:
        return False
    body = r.json()
    return bool(body.get("upserted") == n and not body.get("skipped"))


def check_no_server_errors(server: ServerProcess, ctx: Ctx) -> None:
    """Background threads (snapshots, index builds) only log their failures: look for them."""
    text = server.log_text(current_run_only=True)
    bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
    ctx.check(not bad, lambda: "server logged errors:\n" + "\n".join(bad[:20]))


def watch(url: str, ctx: Ctx, seconds: float, until: Callable[[dict[str, Any]], bool] | None = None) -> list[str]:
    """Poll the collection while the writers run, for ``seconds`` and (if given) until ``until``
    holds, checking count == indexed at every poll; returns the active indexes seen."""
    seen: list[str] = []
    started = time.monotonic()
    give_up = started + 30.0
    met = until is None
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        while True:
            info = collection_info(client, ctx)
            label = info["active_index"] + (" (building)" if info["building"] else "")
            if not seen or seen[-1] != label:
                seen.append(label)
            # stats() reads both under the index lock, and every write moves both under it: equal at all times.
            ctx.check(
                info["count"] == info["indexed"],
                f"while writing: count {info['count']} != indexed (FAISS) {info['indexed']}; {info}; saw {seen}",
            )
            met = met or (until is not None and until(info))
            now = time.monotonic()
            if met and now - started >= seconds:
                return seen
            ctx.check(now < give_up, f"condition not reached within 30 s while writing; saw {seen}, last {info}")
            time.sleep(min(0.05, max(0.0, seconds - (now - started))) or 0.05)


# -- test 1: streaming inserts -------------------------------------------------------------------
@dataclass(eq=False)
class Batch:
    key: str
    cycle: int
    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]
    # sent -> acked (200) | unknown (no answer: killed meanwhile) | rejected (an error status)
    # unknown -> present | absent (after the restart that decides it)
    state: str = "sent"
    detail: str = ""

    def describe(self) -> str:
        return f"batch {self.key} ({len(self.ids)} items, cycle {self.cycle}, {self.state}) {self.detail}".strip()


class InsertWriter(threading.Thread):
    """Streams upsert batches of new ids until told to stop or the server goes away."""

    def __init__(self, url: str, name: str, cycle: int, rng: np.random.Generator, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{name}", daemon=True)
        self.url, self.prefix, self.cycle, self.rng, self.stop = url, name, cycle, rng, stop
        self.batches: list[Batch] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as client:
            n = 0
            while not self.stop.is_set():
                size = int(self.rng.integers(1, 13))
                key = f"{self.prefix}-c{self.cycle}-b{n}"
                vectors = self.rng.standard_normal((size, DIM)).astype(np.float32)
                batch = Batch(key, self.cycle, [f"{key}-{i}" for i in range(size)], vectors, [])
                batch.payloads = [{"batch": key, "i": i} for i in range(size)]
                items = [
                    {"id": i, "vector": v.tolist(), "payload": p}
                    for i, v, p in zip(batch.ids, vectors, batch.payloads, strict=True)
                ]
                self.batches.append(batch)
                try:
                    r = client.put(ITEMS, json={"items": items})
                except httpx.TransportError as exc:  # the server died under us: fate unknown
                    batch.state, batch.detail = "unknown", repr(exc)
                    return
                if upsert_ok(r, size):
                    batch.state = "acked"
                else:
                    batch.state, batch.detail = "rejected", f"HTTP {r.status_code}: {r.text[:1000]}"
                    return
                n += 1
                time.sleep(float(self.rng.uniform(0.0, 0.02)))


class InsertModel:
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.batches: list[Batch] = []

    def present(self) -> list[Batch]:
        return [b for b in self.batches if b.state in ("acked", "present")]

    def expected_vectors(self) -> dict[str, bytes]:
        return {i: v.tobytes() for b in self.present() for i, v in zip(b.ids, b.vectors, strict=True)}

    def summary(self, cycle: int) -> str:
        states: dict[str, int] = {}
        for b in self.batches:
            if b.cycle == cycle:
                states[b.state] = states.get(b.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(states.items()))

    def verify(self, url: str, rng: random.Random, sample_old: int, everything: bool = False) -> None:
        """Run after a restart: decide the unknown batches, then check everything that must hold."""
        ctx = self.ctx
        # 1. in flight at a kill: all or nothing (never half), each item bit-exact if present.
        for b in [b for b in self.batches if b.state == "unknown"]:
            got = fetch_items(url, b.ids, ctx)
            exact = [self._matches(got[i], b, row) for row, i in enumerate(b.ids)]
            if all(exact):
                b.state = "present"
            elif not any(got[i] is not None for i in b.ids):
                b.state = "absent"
            else:
                rows = [
                    f"  {i}: {'exact' if ok else ('absent' if got[i] is None else 'present, WRONG vector/payload')}"
                    for i, ok in zip(b.ids, exact, strict=True)
                ]
                ctx.fail(f"unacknowledged {b.describe()} is half-present:\n" + "\n".join(rows))
            ctx.note(f"  in-flight {b.key} ({len(b.ids)} items) was {b.state} after the restart")
        # 2. acknowledged: everything from the newest cycle (+ a sample of older ones) bit-exact.
        present = self.present()
        newest = max((b.cycle for b in present), default=-1)
        checks = [(b, row) for b in present if everything or b.cycle == newest for row in range(len(b.ids))]
        older = [(b, row) for b in present if not (everything or b.cycle == newest) for row in range(len(b.ids))]
        checks += rng.sample(older, min(sample_old, len(older)))
        got = fetch_items(url, [b.ids[row] for b, row in checks], ctx)
        bad = [(b, row) for b, row in checks if not self._matches(got[b.ids[row]], b, row)]
        ctx.check(
            not bad,
            lambda: (
                f"{len(bad)} of {len(checks)} acknowledged items checked are missing or changed, e.g.:\n"
                + "\n".join(f"  {b.ids[row]} of {b.describe()}: got {got[b.ids[row]]}" for b, row in bad[:8])
            ),
        )
        # 3. decided absent stays absent (a replay must never resurrect an unacknowledged write).
        gone = [i for b in self.batches if b.state == "absent" for i in b.ids]
        got = fetch_items(url, gone, ctx)
        back = [i for i in gone if got[i] is not None]
        ctx.check(not back, f"items of unacknowledged batches found absent earlier are back: {back[:10]}")
        # 4. counts, and 5. the index finds every item with its own vector.
        expected = self.expected_vectors()
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            info = check_counts(client, ctx, len(expected))
            check_search_finds_self(client, ctx, expected)
        ctx.note(
            f"  verified {len(expected)} items ({len(checks)} bit-exact, {len(gone)} absent), "
            f"index {info['active_index']} nprobe {info['nprobe']}"
        )

    @staticmethod
    def _matches(item: dict[str, Any] | None, b: Batch, row: int) -> bool:
        return (
            item is not None
            and item.get("vector") is not None
            and _vec_bytes(item["vector"]) == b.vectors[row].tobytes()
            and item["payload"] == b.payloads[row]
        )


def test_kill9_while_streaming_upserts(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    server = ServerProcess(tmp_path / "data")
    ctx = Ctx("test_kill9_while_streaming_upserts", seed, server)
    model = InsertModel(ctx)
    # (env, wait for the IVF swap before killing); "{n+300}" = threshold just above the current count.
    cycles: list[tuple[dict[str, str], bool]] = [
        ({}, False),
        ({"ERS_SNAPSHOT_EVERY": "300", "ERS_WAL_SEGMENT_BYTES": "8192"}, False),  # log segments dropped
        ({"ERS_SNAPSHOT_EVERY": "200", "ERS_AUTO_INDEX_THRESHOLD": "{n+300}"}, True),
        ({"ERS_SNAPSHOT_EVERY": "100", "ERS_AUTO_INDEX_THRESHOLD": "1000"}, False),
        ({}, False),
        ({"ERS_SNAPSHOT_EVERY": "150", "ERS_AUTO_INDEX_THRESHOLD": "1000"}, False),
    ] * _rounds()
    seen_indexes: list[str] = []
    try:
        for cycle, (env, until_ivf) in enumerate(cycles):
            ctx.cycle = cycle
            n = len(model.expected_vectors())
            ctx.env = server.env_extra = {k: v.replace("{n+300}", str(n + 300)) for k, v in env.items()}
            server.start()
            if cycle == 0:
                r = httpx.post(server.url + "/v1/collections", json={"name": NAME, "dim": DIM, "metric": "l2"})
                ctx.check(r.status_code == 201, f"create collection: HTTP {r.status_code}: {r.text}")
            else:
                if torn_note(server):
                    ctx.note(torn_note(server))
                model.verify(server.url, rng, sample_old=150)
            stop = threading.Event()
            writers = [
                InsertWriter(server.url, f"w{w}", cycle, np.random.default_rng([seed, cycle, w]), stop)
                for w in range(2)
            ]
            for w in writers:
                w.start()
            delay = rng.uniform(0.2, 1.5)

            def is_ivf(info: dict[str, Any]) -> bool:
                return str(info["active_index"]).startswith("IVF")

            seen = watch(server.url, ctx, delay, until=is_ivf if until_ivf else None)
            seen_indexes += seen
            code = server.kill9()
            stop.set()
            for w in writers:
                w.join(timeout=60)
                model.batches += w.batches
            ctx.check(code == -9, f"server exit status after SIGKILL: {code}")
            rejected = [b.describe() for b in model.batches if b.state == "rejected"]
            ctx.check(not rejected, "writes failed while the server was up:\n" + "\n".join(rejected))
            check_no_server_errors(server, ctx)
            ctx.note(
                f"cycle {cycle} env {ctx.env}: killed after {delay:.2f}s; {model.summary(cycle)}; index {seen}; "
                + disk_note(server.data_dir)
            )

        # A last restart after the last crash, then a graceful stop (final snapshot) and one more start.
        ctx.cycle = len(cycles)
        ctx.env = server.env_extra = {}
        server.start()
        model.verify(server.url, rng, sample_old=500)
        code = server.stop()  # uvicorn re-raises the SIGTERM it handled once it has shut down: -15
        ctx.check(code in (0, -15), f"graceful stop: exit status {code}")
        ctx.check("Application shutdown complete" in server.log_text(current_run_only=True), "no clean shutdown")
        check_no_server_errors(server, ctx)
        server.start()
        model.verify(server.url, rng, sample_old=300)
        ctx.check(
            any(s.startswith("IVF") for s in seen_indexes) and "Flat" in seen_indexes,
            f"expected the index to switch from Flat to IVF while writing; saw {seen_indexes}",
        )
        decided = sum(1 for b in model.batches if b.state in ("present", "absent"))
        ctx.note(f"done: {len(model.expected_vectors())} items, {decided} in-flight batches decided")
    except httpx.TransportError as exc:  # not one of our kills: the server died or hung by itself
        ctx.fail(f"lost the server outside a planned kill: {exc!r}; server exit status {server.exit_status()}")
    finally:
        server.stop()


# -- test 2: replacing and deleting existing ids -------------------------------------------------
State = tuple[bytes, dict[str, Any]] | None  # (vector bytes, payload), or None for absent


@dataclass
class Op:
    key: str
    kind: str  # "upsert" | "delete"
    after: dict[str, State]  # what each touched id becomes if the op took effect
    before: dict[str, State] = field(default_factory=dict)
    state: str = "sent"  # sent -> acked | unknown | rejected
    detail: str = ""


class MutatingWriter(threading.Thread):
    """Upserts over a small id pool (replacing, sometimes twice in one batch) and deletes ids; the
    model is updated only from acknowledged answers."""

    def __init__(
        self, url: str, cycle: int, rng: np.random.Generator, stop: threading.Event, model: dict[str, State]
    ) -> None:
        super().__init__(name="mutating-writer", daemon=True)
        self.url, self.cycle, self.rng, self.stop, self.model = url, cycle, rng, stop, model
        self.ops: list[Op] = []

    def _next(self, n: int) -> tuple[Op, Callable[[httpx.Client], httpx.Response]]:
        key = f"c{self.cycle}-op{n}"
        if self.rng.random() < 0.25:
            present = sorted(i for i, s in self.model.items() if s is not None)
            if present and self.rng.random() < 0.9:
                item_id = present[int(self.rng.integers(len(present)))]
            else:
                item_id = POOL[int(self.rng.integers(len(POOL)))]
            op = Op(key, "delete", {item_id: None})
            return op, lambda c: c.delete(f"{ITEMS}/{item_id}")
        size = int(self.rng.integers(1, 13))
        ids = [POOL[int(i)] for i in self.rng.integers(len(POOL), size=size)]  # repeats: the last one wins
        vectors = self.rng.standard_normal((size, DIM)).astype(np.float32)
        rows = list(enumerate(zip(ids, vectors, strict=True)))
        items = [{"id": i, "vector": v.tolist(), "payload": {"op": key, "row": r}} for r, (i, v) in rows]
        op = Op(key, "upsert", {i: (v.tobytes(), {"op": key, "row": r}) for r, (i, v) in rows})
        return op, lambda c: c.put(ITEMS, json={"items": items})

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as client:
            n = 0
            while not self.stop.is_set():
                op, send = self._next(n)
                op.before = {i: self.model.get(i) for i in op.after}
                self.ops.append(op)
                try:
                    r = send(client)
                except httpx.TransportError as exc:
                    op.state, op.detail = "unknown", repr(exc)
                    return
                if op.kind == "upsert":
                    ok = upsert_ok(r, len(op.after))
                else:  # deleting an absent id answers 404 (nothing written): fine when we agree it is absent
                    ok = (r.status_code == 200 and r.json() == {"deleted": 1}) or (
                        r.status_code == 404 and all(s is None for s in op.before.values())
                    )
                if ok:
                    op.state = "acked"
                else:
                    op.state, op.detail = "rejected", f"HTTP {r.status_code}: {r.text[:1000]} (model: {op.before})"
                    return
                self.model.update(op.after)
                n += 1
                time.sleep(float(self.rng.uniform(0.0, 0.01)))


POOL = [f"k{i:03d}" for i in range(150)]


def _describe_state(state: State) -> str:
    if state is None:
        return "absent"
    return f"vector {np.frombuffer(state[0], dtype=np.float32)[:3]}... payload {state[1]}"


def verify_mutations(url: str, ctx: Ctx, model: dict[str, State], pending: list[Op]) -> None:
    got = fetch_items(url, POOL, ctx)
    observed: dict[str, State] = {
        i: None if g is None else (_vec_bytes(g["vector"]), g["payload"]) for i, g in got.items()
    }
    touched: set[str] = set()
    for op in pending:  # at most one: the op in flight at the kill
        touched |= set(op.after)
        if all(observed[i] == s for i, s in op.after.items()):
            outcome = "applied"
            model.update(op.after)
        elif all(observed[i] == s for i, s in op.before.items()):
            outcome = "not applied"
        else:
            rows = [
                f"  {i}: before {_describe_state(op.before[i])}; after {_describe_state(op.after[i])}; "
                f"found {_describe_state(observed[i])}"
                for i in op.after
            ]
            ctx.fail(f"unacknowledged {op.kind} {op.key} is half-applied:\n" + "\n".join(rows))
        op.state = outcome
        ctx.note(f"  in-flight {op.kind} {op.key} ({len(op.after)} ids) was {outcome}")
    wrong = [i for i in POOL if i not in touched and observed[i] != model.get(i)]
    ctx.check(
        not wrong,
        lambda: (
            f"{len(wrong)} ids differ from their last acknowledged state:\n"
            + "\n".join(
                f"  {i}: expected {_describe_state(model.get(i))}, found {_describe_state(observed[i])}"
                for i in wrong[:10]
            )
        ),
    )
    live = {i: s[0] for i, s in model.items() if s is not None}
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        info = check_counts(client, ctx, len(live))
        check_search_finds_self(client, ctx, live)
    ctx.note(f"  verified {len(POOL)} ids, {len(live)} live, index {info['active_index']}")


def test_kill9_with_replaces_and_deletes(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    server = ServerProcess(tmp_path / "data")
    ctx = Ctx("test_kill9_with_replaces_and_deletes", seed, server)
    model: dict[str, State] = {}
    pending: list[Op] = []
    envs: list[dict[str, str]] = [
        {},
        {"ERS_SNAPSHOT_EVERY": "40", "ERS_WAL_SEGMENT_BYTES": "4096"},
        {"ERS_SNAPSHOT_EVERY": "25", "ERS_AUTO_INDEX_THRESHOLD": "60"},
        {"ERS_AUTO_INDEX_THRESHOLD": "60"},
        {"ERS_SNAPSHOT_EVERY": "30"},
    ] * _rounds()
    indexes: set[str] = set()
    try:
        for cycle, env in enumerate([*envs, {}]):
            ctx.cycle, ctx.env = cycle, env
            server.env_extra = env
            server.start()
            if cycle == 0:
                body = {"name": NAME, "dim": DIM, "metric": "cosine"}
                r = httpx.post(server.url + "/v1/collections", json=body)
                ctx.check(r.status_code == 201, f"create collection: HTTP {r.status_code}: {r.text}")
            else:
                if torn_note(server):
                    ctx.note(torn_note(server))
                verify_mutations(server.url, ctx, model, pending)
                pending = []
            if cycle == len(envs):
                break  # the last start only verifies the last crash
            stop = threading.Event()
            writer = MutatingWriter(server.url, cycle, np.random.default_rng([seed, cycle]), stop, model)
            writer.start()
            delay = rng.uniform(0.2, 1.5)
            indexes.update(watch(server.url, ctx, delay))
            code = server.kill9()
            stop.set()
            writer.join(timeout=60)
            ctx.check(code == -9, f"server exit status after SIGKILL: {code}")
            rejected = [f"{op.kind} {op.key}: {op.detail}" for op in writer.ops if op.state == "rejected"]
            ctx.check(not rejected, "writes failed while the server was up:\n" + "\n".join(rejected))
            pending = [op for op in writer.ops if op.state in ("sent", "unknown")]
            check_no_server_errors(server, ctx)
            acked = sum(op.state == "acked" for op in writer.ops)
            ctx.note(
                f"cycle {cycle} env {env}: killed after {delay:.2f}s; {acked} ops acked, {len(pending)} in flight; "
                + disk_note(server.data_dir)
            )
        ctx.check(any(s.startswith("IVF") for s in indexes), f"no cycle ran on an IVF index: {indexes}")
    except httpx.TransportError as exc:  # not one of our kills: the server died or hung by itself
        ctx.fail(f"lost the server outside a planned kill: {exc!r}; server exit status {server.exit_status()}")
    finally:
        server.stop()
