"""What the crasher's clients know: the last acknowledged state of every id they wrote, and the one
request each writer had in flight when the server was killed.

Each ``Writer`` owns the ids with its prefix (``w3-...``), so the writers of one collection never
touch each other's ids and every in-flight request can be decided on its own after a restart: it
was applied (every id it touched is in its "after" state), not applied (every id is as before), or
torn (a mix: an all-or-nothing violation). The ledger changes only on an acknowledgement (a 2xx) or
on such a decision, so "the last acknowledged write of each id wins" is exactly what it holds.

A writer mixes three kinds of writes: upserts of new ids, upserts that overwrite live ids (repeats
inside one batch included: the last occurrence wins) or bring deleted ids back, and deletes. The
number of live ids stays near ``live_target`` so that a full check after every restart stays cheap
however long the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

# (float32 vector bytes, payload) of a present item; None for an absent (never written or deleted) id.
State = tuple[bytes, dict[str, Any] | None] | None
TIMEOUT = httpx.Timeout(30.0)


def items_path(collection: str) -> str:
    return f"/v1/collections/{collection}/items"


def describe_state(state: State) -> str:
    if state is None:
        return "absent"
    return f"vector {np.frombuffer(state[0], dtype=np.float32)[:3]}... payload {state[1]}"


@dataclass(eq=False)
class Op:
    key: str
    kind: str  # "upsert" | "delete"
    after: dict[str, State]  # what each touched id becomes if the op takes effect (last occurrence wins)
    before: dict[str, State]  # the ledger's state of those ids when the op was sent
    body: dict[str, Any] | None = None  # the upsert's JSON body
    items: int = 0  # items in the request (repeats included)
    # sent -> acked | unknown (no answer) | rejected; unknown | rejected -> applied | not applied | torn | no-op
    state: str = "sent"
    detail: str = ""

    def describe(self) -> str:
        return f"{self.kind} {self.key} ({len(self.after)} ids, {self.state}) {self.detail}".strip()


@dataclass
class Tally:
    """What one writer had acknowledged, and how its in-flight requests were decided."""

    upserts: int = 0
    items: int = 0  # items in acknowledged upserts (overwrites and repeats included)
    deletes: int = 0
    applied: int = 0  # unacknowledged requests found applied after the restart
    not_applied: int = 0

    def add(self, other: Tally) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Ledger:
    """One writer's ids and their last acknowledged states, across every kill of a run."""

    def __init__(self, collection: str, prefix: str, dim: int, live_target: int, max_batch: int) -> None:
        self.collection, self.prefix, self.dim = collection, prefix, dim
        self.live_target, self.max_batch = live_target, max_batch
        self.states: dict[str, State] = {}
        self.live: list[str] = []  # ids whose state is not None (for picking overwrite/delete targets)
        self.deleted: list[str] = []  # ids once written and now absent (for bringing them back)
        self.changed: set[str] = set()  # ids acknowledged since the last verification: all are checked
        self.recheck: set[str] = set()  # ids of the requests decided at the last verification: checked again
        self.pending: Op | None = None  # the request without an answer when the server died
        self.decided: set[str] = set()
        self.tally = Tally()
        self.minted = 0
        self.ops = 0

    # -- choosing writes ---------------------------------------------------------------------
    def next_op(self, rng: np.random.Generator) -> Op:
        key = f"{self.prefix}op{self.ops}"
        self.ops += 1
        fill = len(self.live) / self.live_target
        if self.live and rng.random() < (0.45 if fill >= 1 else 0.1):
            if self.deleted and rng.random() < 0.05:  # an id already gone: 404, and nothing may be written
                item_id = self.deleted[int(rng.integers(len(self.deleted)))]
            else:
                item_id = self.live[int(rng.integers(len(self.live)))]
            return Op(key, "delete", {item_id: None}, {item_id: self.states.get(item_id)})
        size = int(rng.integers(1, self.max_batch + 1))
        # Below the target most of a batch is new ids; at it, one new id in a batch now and then.
        new = max(1, round(size * 0.7 * (1 - fill))) if fill < 1 else int(rng.random() < 0.3)
        ids = [self._mint() for _ in range(min(new, size))]
        while len(ids) < size:  # the rest overwrites live ids (repeats too), or brings a deleted one back
            if self.deleted and fill < 1 and rng.random() < 0.05:
                ids.append(self.deleted[int(rng.integers(len(self.deleted)))])
            elif self.live:
                ids.append(self.live[int(rng.integers(len(self.live)))])
            else:
                ids.append(self._mint())
        order = rng.permutation(size)
        ids = [ids[int(i)] for i in order]
        vectors = rng.standard_normal((size, self.dim)).astype(np.float32)
        payloads = [self._payload(rng, key, row) for row in range(size)]
        after: dict[str, State] = {i: (v.tobytes(), p) for i, v, p in zip(ids, vectors, payloads, strict=True)}
        items = [
            {"id": i, "vector": v.tolist(), **({} if p is None else {"payload": p})}
            for i, v, p in zip(ids, vectors, payloads, strict=True)
        ]
        before = {i: self.states.get(i) for i in after}
        return Op(key, "upsert", after, before, {"items": items}, size)

    def _mint(self) -> str:
        self.minted += 1
        return f"{self.prefix}{self.minted}"

    @staticmethod
    def _payload(rng: np.random.Generator, key: str, row: int) -> dict[str, Any] | None:
        """Payloads that must come back exactly: nesting, unicode, floats, booleans, nulls (or none)."""
        if rng.random() < 0.1:
            return None
        return {
            "op": key,
            "row": row,
            "n": int(rng.integers(-(2**31), 2**31)),
            "x": float(rng.standard_normal()),
            "tag": ["α", "b/c", "😀", "", "x y"][int(rng.integers(5))],
            "flags": {"ok": bool(rng.random() < 0.5), "none": None, "list": [1, 2.5, "three"]},
        }

    # -- outcomes ----------------------------------------------------------------------------
    def acknowledge(self, op: Op) -> None:
        op.state = "acked"
        if op.kind == "upsert":
            self.tally.upserts += 1
            self.tally.items += op.items
        elif op.before[next(iter(op.after))] is not None:
            self.tally.deletes += 1
        self._apply(op.after)

    def _apply(self, states: dict[str, State]) -> None:
        for item_id, state in states.items():
            was = self.states.get(item_id)
            self.states[item_id] = state
            self.changed.add(item_id)
            if was is None and state is not None:
                self.live.append(item_id)
                if item_id in self.deleted:
                    self.deleted.remove(item_id)
            elif was is not None and state is None:
                self.live.remove(item_id)
                self.deleted.append(item_id)

    def decide(self, observed: dict[str, State]) -> Op | None:
        """After a restart: settle the request that had no answer from what the server now holds.
        A torn op leaves the ledger at what was observed (reported once, not at every later check)."""
        op, self.pending = self.pending, None
        if op is None:
            return None
        self.decided |= set(op.after)
        if op.after == op.before:  # deleting an absent id: nothing to decide
            op.state = "no-op"
        elif all(observed[i] == s for i, s in op.after.items()):
            op.state = "applied"
            self.tally.applied += 1
            self._apply(op.after)
        elif all(observed[i] == s for i, s in op.before.items()):
            op.state = "not applied"
            self.tally.not_applied += 1
            for item_id in op.after:  # its new ids are known absent ones now
                self.states.setdefault(item_id, None)
        else:
            op.state = "torn"
            self._apply({i: observed[i] for i in op.after})
        return op

    def checked(self) -> None:
        """A verification is over: the next one checks what changes from now on, and once more
        the ids of the requests it decided (a decision must not flip at a later restart)."""
        self.changed, self.recheck, self.decided = set(), self.decided, set()

    def ids_to_check(self, rng: np.random.Generator, old_deleted: int) -> list[str]:
        """Every live id, every id changed or in flight since the last check, and some deleted ids
        from before (the count check covers the rest: see ``crash_support.verify``)."""
        ids = set(self.live) | self.changed | self.recheck
        if self.pending is not None:
            ids |= set(self.pending.after)
        older = [i for i in self.deleted if i not in ids]
        if older:
            ids |= {older[int(i)] for i in rng.choice(len(older), min(old_deleted, len(older)), replace=False)}
        return sorted(ids)

    def expected_live(self) -> dict[str, bytes]:
        return {i: s[0] for i in self.live if (s := self.states[i]) is not None}


class Writer(threading.Thread):
    """Sends one ledger's writes, one at a time, until stopped or the server goes away. A request
    without a 2xx stays the ledger's ``pending`` op: its fate is decided after the restart."""

    def __init__(
        self, ledger: Ledger, url: str, rng: np.random.Generator, stop: threading.Event, pause_s: float
    ) -> None:
        super().__init__(name=f"writer-{ledger.prefix}", daemon=True)
        self.ledger, self.url, self.rng, self.stop, self.pause_s = ledger, url, rng, stop, pause_s
        self.acked = 0  # in this cycle
        self.rejected: list[Op] = []

    def run(self) -> None:
        ledger = self.ledger
        path = items_path(ledger.collection)
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as client:
            while not self.stop.is_set():
                op = ledger.next_op(self.rng)
                ledger.pending = op
                try:
                    if op.kind == "upsert":
                        r = client.put(path, json=op.body)
                    else:
                        r = client.delete(f"{path}/{next(iter(op.after))}")
                except httpx.TransportError as exc:  # the server died under us
                    op.state, op.detail = "unknown", repr(exc)
                    return
                if not self._ok(op, r):
                    op.state, op.detail = "rejected", f"HTTP {r.status_code}: {r.text[:1000]}"
                    self.rejected.append(op)
                    return
                ledger.pending = None
                ledger.acknowledge(op)
                self.acked += 1
                time.sleep(float(self.rng.uniform(0.0, self.pause_s)))

    @staticmethod
    def _ok(op: Op, r: httpx.Response) -> bool:
        if op.kind == "upsert":
            body = r.json() if r.status_code == 200 else {}
            return bool(body.get("upserted") == len(op.after) and not body.get("skipped"))
        if all(s is None for s in op.before.values()):  # deleting an absent id writes nothing
            return r.status_code == 404
        return r.status_code == 200 and r.json() == {"deleted": 1}
