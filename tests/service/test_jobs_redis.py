"""The Redis Streams runner in one process: the API (TestClient) with ERS_JOB_RUNNER=redis, and
``StreamWorker`` loops on threads, against the real redis-server fixture."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from indexer.jobs.model import JobOptions
from indexer.jobs.worker import StreamWorker
from tests.service.conftest import MakeClient
from tests.service.test_jobs_support import TEXT, build_text, finished, wait_for


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


class Workers:
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.workers: list[StreamWorker] = []

    def start(self, models_dir: Path, **options: Any) -> StreamWorker:
        opts = JobOptions(**{"claim_idle_ms": 300, "max_attempts": 2, **options})
        worker = StreamWorker(self.url, self.prefix, models_dir, opts, name=f"w{len(self.workers)}")
        thread = threading.Thread(target=worker.run, args=(self.stop,), daemon=True)
        thread.start()
        self.workers.append(worker)
        self.threads.append(thread)
        return worker

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def setup(make_client: MakeClient, tmp_path: Path, redis_server: Any) -> Iterator[tuple[TestClient, Workers, Path]]:
    prefix = f"jobs-{uuid.uuid4().hex[:8]}"
    roots = tmp_path / "sources"
    roots.mkdir()
    build_text(tmp_path / "data" / "models")
    api = make_client(redis_url=redis_server.url, redis_prefix=prefix, job_runner="redis", allowed_roots=[roots],
                      job_batch=5, job_backlog=4)  # fmt: skip
    workers = Workers(redis_server.url, prefix)
    yield api, workers, roots  # keys stay under their unique prefix: the API may still be consuming
    workers.close()


def write_manifest(path: Path, n: int, bad: int = 0) -> None:
    lines = [json.dumps({"id": f"t{i}", "text": f"item {i} in group {i % 9}", "payload": {"i": i}}) for i in range(n)]
    lines += [json.dumps({"id": f"bad{i}", "text": "x " * 300}) for i in range(bad)]  # over the text limit
    path.write_text("\n".join(lines) + "\n")


def test_two_workers_index_a_manifest(setup: tuple[TestClient, Workers, Path], tmp_path: Path) -> None:
    api, workers, roots = setup
    write_manifest(roots / "m.jsonl", 60, bad=3)
    assert api.post("/v1/collections", json={"name": "docs", "encoder": TEXT}).status_code == 201
    body = {"collection": "docs", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}}
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    for _ in range(2):
        workers.start(tmp_path / "data" / "models")
    job = wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json(), finished)
    assert (job["state"], job["runner"], job["total"], job["done"], job["failed"]) == ("succeeded", "redis", 63, 60, 3)
    assert all("limit" in e["reason"] for e in job["errors"]) and len(job["errors"]) == 3
    assert api.get("/v1/collections/docs").json()["count"] == 60
    assert api.get("/v1/collections/docs/items/t17").json()["payload"] == {"i": 17}
    assert sum(w.batches for w in workers.workers) >= 13  # 63 items in batches of 5
    assert all(w.batches > 0 for w in workers.workers) or len(workers.workers) == 1


def test_batches_no_worker_can_encode_become_dead_letters(
    setup: tuple[TestClient, Workers, Path], tmp_path: Path
) -> None:
    """A worker without the encoder's artefacts fails every delivery; after ERS_JOB_MAX_ATTEMPTS
    (2 here) the items are given up as dead letters with the error, and the job still ends."""
    api, workers, roots = setup
    write_manifest(roots / "m.jsonl", 7)
    api.post("/v1/collections", json={"name": "docs", "encoder": TEXT})
    body = {"collection": "docs", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}}
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    (tmp_path / "empty-models").mkdir()
    workers.start(tmp_path / "empty-models")
    job = wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json(), finished)
    assert (job["state"], job["done"], job["failed"], job["dead_letters"]) == ("succeeded", 0, 7, 7)
    assert all("gave up after 2 attempts" in e["reason"] and TEXT in e["reason"] for e in job["errors"]), job
    assert api.get("/v1/collections/docs").json()["count"] == 0


def test_cancel_stops_a_job_the_workers_have_not_finished(setup: tuple[TestClient, Workers, Path]) -> None:
    api, workers, roots = setup
    write_manifest(roots / "m.jsonl", 40)
    api.post("/v1/collections", json={"name": "docs", "encoder": TEXT})
    body = {"collection": "docs", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}}
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json(), lambda j: j["state"] == "running")
    r = api.post(f"/v1/jobs/{job_id}/cancel")  # no worker yet: nothing can have been processed
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    worker = workers.start(Path("/nonexistent"))
    # The worker drops the cancelled job's queued batches (acks them) without encoding any.
    client = redis.Redis.from_url(workers.url)
    wait_for(lambda: {"n": client.xlen(f"{workers.prefix}:jobs:tasks")}, lambda d: d["n"] == 0)
    client.close()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["state"], job["done"], job["failed"], worker.batches) == ("cancelled", 0, 0, 0)
    assert api.get("/v1/collections/docs").json()["count"] == 0
