"""The crasher's loop: write, ``kill -9``, restart, verify, as many times as the plan says.

    report = Crasher(ServerProcess(tmp_path / "data"), plan, seed).run()

Each cycle starts the writers (one thread per ledger, two per collection by default), waits until
every writer has been acknowledged once (the server really is taking writes) and then a random
window, and kills the server in the middle of whatever it is doing: an fsync, a log segment
rotation, a snapshot, an index build or swap. The next start runs under the next ``Setting`` of the
plan and is verified (``crash_support.verify``) before any new write. ``run`` returns with the
server up and the last crash verified; a broken guarantee raises ``CrashFailure`` (or, for a chaos
run with ``stop_at_first_finding=False``, is counted in the report).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from tests.service.crash_ledger import Ledger, Writer
from tests.service.crash_support import CrashFailure, Findings, Plan, Report, disk_note, log_errors, verify, watch
from tests.service.server_proc import ServerError, ServerProcess


class Crasher:
    def __init__(
        self,
        server: ServerProcess,
        plan: Plan,
        seed: int,
        say: Callable[[str], None] = print,
        after_kill: Callable[[int], None] | None = None,
    ) -> None:
        """``after_kill(kills)`` runs while the server is down (the chaos run kills Redis in it)."""
        self.server, self.plan, self.seed, self.say, self.after_kill = server, plan, seed, say, after_kill
        self.rng = np.random.default_rng(seed)
        n = plan.writers_per_collection
        self.ledgers = [
            Ledger(name, f"w{c * n + w}-", plan.dim, plan.live_target, plan.max_batch)
            for c, (name, _) in enumerate(plan.collections)
            for w in range(n)
        ]
        self.names = [name for name, _ in plan.collections]
        self.report = Report(seed)
        self.history: list[str] = []
        self.env: dict[str, str] = {}

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        try:
            self._start(record=False)
            with httpx.Client(base_url=self.server.url, timeout=30.0) as client:
                for name, metric in self.plan.collections:
                    r = client.post("/v1/collections", json={"name": name, "dim": self.plan.dim, "metric": metric})
                    if r.status_code != 201:
                        raise self.failure(f"create collection {name}: HTTP {r.status_code}: {r.text}")
            while self.report.kills < self.plan.kills and time.monotonic() - started < self.plan.deadline_s:
                self._write_and_kill()
                if self.after_kill is not None:
                    self.after_kill(self.report.kills)
                self._start()
                self.verify_now()
        except httpx.TransportError as exc:  # not one of our kills: the server died or hung by itself
            status = self.server.exit_status()
            raise self.failure(f"lost the server outside a planned kill: {exc!r}; exit status {status}") from None
        except ServerError as exc:
            raise self.failure(f"restart failed: {exc}") from None
        finally:
            self.report.elapsed_s = time.monotonic() - started
            self.report.live = sum(len(ledger.live) for ledger in self.ledgers)
            self.report.tally = type(self.report.tally)()
            for ledger in self.ledgers:
                self.report.tally.add(ledger.tally)
        return self.report

    def _start(self, record: bool = True) -> None:
        setting = self.plan.settings[self.report.kills % len(self.plan.settings)]
        smallest = min(sum(len(ledger.live) for ledger in self.ledgers if ledger.collection == n) for n in self.names)
        env = {k: v.replace("{live-10}", str(max(40, smallest - 10))) for k, v in setting.env.items()}
        self.env = self.server.env_extra = {**self.plan.base_env, **env}
        began = time.monotonic()
        self.server.start(timeout=120.0)
        if record:
            self.report.ready_s.append(time.monotonic() - began)
        torn = [line for line in self.server.log_text(current_run_only=True).splitlines() if "torn tail" in line]
        if torn:
            self.note(f"  restart cut {len(torn)} torn log tail(s): {torn[0].strip()}")

    def _write_and_kill(self) -> None:
        plan, kill = self.plan, self.report.kills
        setting = plan.settings[kill % len(plan.settings)]
        stop = threading.Event()
        writers = [
            Writer(ledger, self.server.url, np.random.default_rng([self.seed, kill, n]), stop, plan.pause_s)
            for n, ledger in enumerate(self.ledgers)
        ]
        for writer in writers:
            writer.start()
        window = float(self.rng.uniform(*plan.window_s))
        try:
            seen, errors = watch(
                self.server.url,
                self.names,
                window,
                ready=lambda: all(w.acked or not w.is_alive() for w in writers),
                until_ivf=setting.kill_after_ivf,
            )
        finally:
            code = self.server.kill9()  # first: the writers are mid-request when it dies
            stop.set()
            for writer in writers:
                writer.join(timeout=60)
        self.report.kills += 1
        self.report.indexes |= seen
        findings = Findings(errors=errors)
        if code != -9:
            findings.errors.append(f"server exit status {code} at the kill: it had died by itself")
        findings.errors += [
            f"write refused while the server was up: {op.describe()}" for w in writers for op in w.rejected
        ]
        findings.errors += [f"server log: {line}" for line in log_errors(self.server.log_text(current_run_only=True))]
        acked = sum(w.acked for w in writers)
        in_flight = sum(ledger.pending is not None for ledger in self.ledgers)
        self.note(
            f"kill {self.report.kills} env {self.env}: after {window:.2f}s of window; {acked} writes acked, "
            f"{in_flight} in flight; indexes {sorted(seen)}; {disk_note(self.server.data_dir, self.names)}"
        )
        self._handle(findings)

    def verify_now(self) -> None:
        """Verify the running server against the ledgers (after a restart, before new writes)."""
        began = time.monotonic()
        findings, checked, notes = verify(self.server.url, self.ledgers, self.rng, self.plan.old_deleted_checked)
        self.report.checked += checked
        for line in notes:
            self.note(line)
        self.note(f"  start {self.server.starts}: {checked} ids compared in {time.monotonic() - began:.2f}s")
        self._handle(findings)

    # -- findings ----------------------------------------------------------------------------
    def _handle(self, findings: Findings) -> None:
        if not findings:
            return
        self.report.findings.merge(findings)
        self.note("  FOUND " + findings.describe(limit=5).replace("\n", "\n    "))
        if self.plan.stop_at_first_finding:
            raise self.failure(findings.describe())

    def note(self, line: str) -> None:
        self.history.append(line)
        self.say(line)

    def failure(self, message: str) -> CrashFailure:
        tail = [line for line in self.server.log_text().splitlines() if ' HTTP/1.1" ' not in line][-60:]
        history = "\n".join(self.history[-30:])
        return CrashFailure(
            f"{message}\n--- seed {self.seed} (rerun with ERS_CRASH_SEED={self.seed}), after {self.report.kills} "
            f"kills, env {self.env}\n--- history:\n{history}\n--- server log tail ({self.server.log_path}):\n"
            + "\n".join(tail)
        )
