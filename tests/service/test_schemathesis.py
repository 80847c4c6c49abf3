"""Schemathesis against a live ``ers serve`` with API keys set: every check (negative data, the
``Allow`` header, ignored auth, the stateful phase's use-after-free...), all four phases, a bounded
number of examples and a fixed seed, and 0 failures, 0 errors.

``ERS_SCHEMATHESIS_EXAMPLES`` and ``ERS_SCHEMATHESIS_SEED`` widen or move the search (a longer local
run); CI runs the bounded default, about a minute on two cores. A failure prints schemathesis' own
report: each failing request as a curl command and ``st replay`` id.

Two expectations are set by ``CONFIG`` below, each for a reason a static schema cannot carry:
413 counts as a refusal of schema-violating data (``k`` over ``ERS_MAX_K``), and 422 is a right
answer to a schema-valid body that the server checks against its state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.server_proc import ServerProcess

KEY = "schemathesis-key"
EXAMPLES = int(os.environ.get("ERS_SCHEMATHESIS_EXAMPLES", "30"))
SEED = int(os.environ.get("ERS_SCHEMATHESIS_SEED", "16"))
PHASES = ("examples", "coverage", "fuzzing", "stateful")
ST = Path(sys.executable).parent / "st"
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]  # schemathesis' own
ACCEPTANCES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' own
# Operations whose body is checked against the server's state, not its shape alone: a vector's
# length against the collection's dim; text, images and records against its encoder (is there one,
# of which modality, installed at all?); a face collection for verify and cluster; the migration
# history for a rollback; an evaluation set's inputs against its labels (as many of each); a job's
# files. A schema-valid body can be refused there with 422, as the README says.
STATE_CHECKED = [
    "POST /v1/collections",
    "PUT /v1/collections/{name}/items",
    "POST /v1/collections/{name}/search",
    "POST /v1/collections/{name}/search/batch",
    "POST /v1/embed",
    "POST /v1/collections/{name}/verify",
    "POST /v1/collections/{name}/cluster",
    "POST /v1/collections/{name}/migrations",
    "POST /v1/collections/{name}/migrations/rollback",
    "PUT /v1/collections/{name}/eval-set",
    "POST /v1/jobs",
]
CONFIG = f"""
[checks.negative_data_rejection]
expected-statuses = {json.dumps([*REFUSALS, "413"])}

[[operations]]
include-name = {json.dumps(STATE_CHECKED)}
checks.positive_data_acceptance.expected-statuses = {json.dumps([*ACCEPTANCES, "422"])}
"""


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    events: list[dict[str, Any]]
    server_log: str

    @property
    def report(self) -> str:
        return self.result.stdout[-20000:] + self.result.stderr[-5000:]

    def phases(self) -> dict[str, str]:
        finished = [e["PhaseFinished"] for e in self.events if "PhaseFinished" in e]
        return {phase["phase"]["name"]: phase["status"] for phase in finished}

    def cases(self) -> Counter[str]:
        """Requests sent, by phase."""
        counted: Counter[str] = Counter()
        for event in self.events:
            if "ScenarioFinished" in event:
                finished = event["ScenarioFinished"]
                counted[finished["phase"]] += len(finished["recorder"].get("cases", {}))
        return counted

    def assert_clean(self) -> None:
        log = self.server_log[-5000:]
        assert self.result.returncode == 0, f"schemathesis failed:\n{self.report}\n--- server log ---\n{log}"
        assert "Traceback" not in self.server_log, log  # no 500 hidden behind a passing status
        assert any("EngineFinished" in e for e in self.events), self.report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("schemathesis") / "data", {"ERS_API_KEYS": KEY}) as running:
        yield running


def run_schemathesis(server: ServerProcess, workdir: Path, phases: tuple[str, ...], config: str) -> Run:
    events_path = workdir / "events.ndjson"
    config_path = workdir / "schemathesis.toml"
    config_path.write_text(config)
    command = [
        str(ST), "--config-file", str(config_path), "run", f"{server.url}/openapi.json",
        "--header", f"Authorization: Bearer {KEY}",
        "--checks", "all",
        "--mode", "all",  # schema-valid and schema-violating data
        "--phases", ",".join(phases),
        "--max-examples", str(EXAMPLES),
        "--seed", str(SEED),
        # One worker: with two, one thread's Hypothesis raises the recursion limit while another
        # parses source (describing a lambda), and CPython 3.11.7's ast module reports a spurious
        # "AST constructor recursion depth mismatch" SystemError (fixed in later 3.11 releases).
        "--workers", "1",
        "--request-timeout", "30",
        "--report", "ndjson", "--report-ndjson-path", str(events_path),
    ]  # fmt: skip
    log_start = len(server.log_text(current_run_only=True))
    # cwd: hypothesis keeps its example database in ./.hypothesis, which belongs in the test's directory
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    return Run(result, events, server.log_text(current_run_only=True)[log_start:])


def test_schemathesis_finds_no_failure_against_a_live_server(server: ServerProcess, tmp_path: Path) -> None:
    """Every operation, the stateful phase following the schema's links from created collections and jobs."""
    run = run_schemathesis(server, tmp_path, PHASES, CONFIG)
    run.assert_clean()
    phases = run.phases()
    assert phases["examples"] in ("success", "skip"), phases  # the schema carries no examples
    for phase in PHASES[1:]:
        assert phases.get(phase) == "success", (phase, phases, run.report)
    cases = run.cases()
    assert cases["coverage"] >= 300 and cases["fuzzing"] >= 300 and cases["stateful"] >= 50, (cases, run.report)


def test_schemathesis_finds_no_failure_on_a_populated_collection(server: ServerProcess, tmp_path: Path) -> None:
    """Generated names almost never exist, so most collection operations answer 404 above: here
    every ``{name}`` is a collection with items and payloads, and ``{item_id}`` one of them, so
    upserts, searches, filters, items and migrations are tested past the lookup."""
    auth = {"Authorization": f"Bearer {KEY}"}
    created = httpx.post(f"{server.url}/v1/collections", json={"name": "pinned", "dim": 4}, headers=auth)
    assert created.status_code == 201, created.text
    items = [{"id": f"i{n}", "vector": [n, 1.0, -1.0, 0.5], "payload": {"n": n, "tag": "ab"[n % 2]}} for n in range(8)]
    upserted = httpx.put(f"{server.url}/v1/collections/pinned/items", json={"items": items}, headers=auth)
    assert upserted.status_code == 200, upserted.text
    pinned = CONFIG + '\n[parameters]\n"path.name" = "pinned"\n"path.item_id" = "i3"\n'
    run = run_schemathesis(server, tmp_path, ("coverage", "fuzzing"), pinned)
    run.assert_clean()
    assert run.phases()["coverage"] == run.phases()["fuzzing"] == "success", run.phases()
    assert run.cases()["fuzzing"] >= 300, run.cases()
