"""Indexing jobs survive crashes, end to end, with real processes and SIGKILL:

* the API server (embedded runner, SQLite) killed mid-job resumes the job on restart;
* one of two ``ers worker`` processes killed while it holds a batch: another takes it over;
* Redis (AOF on) killed and restarted mid-job: the API answers 503 meanwhile, the job completes.

Each ends with: state succeeded, done == total == items, nothing failed, the collection count ==
items and every id present (upserts replace by id, so a count equal to the items means no copies).
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from indexer.store.sqlite import SqliteStore
from tests.service.server_proc import ServerProcess
from tests.service.test_jobs_support import (
    TEXT,
    build_text,
    finished,
    missing_items,
    start_worker,
    stop_process,
    text_manifest,
    wait_for,
)

TIMEOUT = httpx.Timeout(10.0)  # a hung answer fails the test instead of blocking it


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    root.mkdir()
    build_text(tmp_path / "data" / "models")
    return root


def submit(url: str, manifest: Path) -> str:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert client.post("/v1/collections", json={"name": "docs", "encoder": TEXT}).status_code == 201
        r = client.post("/v1/jobs", json={"collection": "docs", "source": {"type": "manifest", "path": str(manifest)}})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def job_of(server: ServerProcess, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def processed(job: dict[str, Any]) -> int:
    return int(job["done"]) + int(job["failed"])


def check_complete(server: ServerProcess, job_id: str, ids: list[str]) -> dict[str, Any]:
    job = wait_for(lambda: job_of(server, job_id), finished, timeout=120)
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["failed"], job["dead_letters"]) == (len(ids), len(ids), 0, 0), job
    info = httpx.get(f"{server.url}/v1/collections/docs", timeout=TIMEOUT).json()
    assert info["count"] == info["indexed"] == len(ids)
    assert missing_items(server.url, "docs", ids) == []
    print(f"job {job['id']}: {job['items_per_s']} items/s in its last run")
    return job


def test_embedded_job_resumes_after_the_server_is_killed(tmp_path: Path, sources: Path) -> None:
    ids = text_manifest(sources / "m.jsonl", 600)
    data = tmp_path / "data"
    server = ServerProcess(data, {"ERS_ALLOWED_ROOTS": str(sources), "ERS_JOB_BATCH": 2})
    try:
        server.start()
        job_id = submit(server.url, sources / "m.jsonl")
        wait_for(lambda: job_of(server, job_id), lambda j: processed(j) > 0)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # freeze it, read the durable progress, then kill it
        store = SqliteStore(data / "meta.sqlite3")
        frozen = store.get_job(job_id)
        store.close()
        assert frozen is not None and frozen["state"] == "running"
        before = processed(frozen)
        if not 0 < before < len(ids):
            pytest.fail(f"the job was not mid-way when frozen ({before} of {len(ids)}): make it longer")
        assert server.kill9() == -9
        server.start()
        after = job_of(server, job_id)
        assert processed(after) >= before  # it continues: the progress was not reset
        check_complete(server, job_id, ids)
        assert f"resuming job {job_id}" in server.log_text(current_run_only=True)
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path, sources: Path, redis_server: Any) -> Iterator[dict[str, Any]]:
    """A server on the Redis runner and two workers, each with its own models dir."""
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    env = {"ERS_REDIS_URL": redis_server.url, "ERS_REDIS_PREFIX": prefix, "ERS_JOB_RUNNER": "redis",
           "ERS_ALLOWED_ROOTS": str(sources), "ERS_JOB_BATCH": 8, "ERS_JOB_BACKLOG": 6}  # fmt: skip
    server = ServerProcess(tmp_path / "data", env)
    workers = []
    try:
        server.start()
        for n in range(2):
            models = tmp_path / f"worker{n}-models"
            shutil.copytree(tmp_path / "data" / "models", models)
            log = tmp_path / f"worker{n}.log"
            workers.append(start_worker(redis_server.url, prefix, models, log, job_claim_idle_ms="1000",
                                        job_max_attempts="5", threads="1"))  # fmt: skip
        yield {"server": server, "workers": workers, "prefix": prefix, "redis": redis_server, "dir": tmp_path}
    finally:
        redis_server.start()  # no-op when running; other tests share it
        for proc in workers:
            stop_process(proc)
        server.stop()


def batch_in_hand(client: redis.Redis, prefix: str, consumer: str) -> bool:
    """Does ``consumer`` hold a task it has not posted a result for (i.e. is it mid-batch)?"""
    pending = client.xpending_range(f"{prefix}:jobs:tasks", "workers", "-", "+", 50, consumername=consumer)
    for entry in pending:
        found = client.xrange(f"{prefix}:jobs:tasks", entry["message_id"], entry["message_id"])
        if found:
            fields = found[0][1]
            posted = f"{prefix}:job:{fields[b'job'].decode()}:posted"
            if not client.sismember(posted, fields[b"seq"]):
                return True
    return False


def consumer_of(client: redis.Redis, prefix: str, pid: int) -> str | None:
    for c in client.xinfo_consumers(f"{prefix}:jobs:tasks", "workers"):
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if f"-{pid}-" in name:
            return str(name)
    return None


def test_a_worker_killed_mid_batch_loses_nothing(redis_cluster: dict[str, Any], sources: Path) -> None:
    server, (victim, survivor), prefix = redis_cluster["server"], redis_cluster["workers"], redis_cluster["prefix"]
    ids = text_manifest(sources / "m.jsonl", 600)
    job_id = submit(server.url, sources / "m.jsonl")
    wait_for(lambda: job_of(server, job_id), lambda j: processed(j) > 0)
    client = redis.Redis.from_url(redis_cluster["redis"].url)
    # While the victim is being caught, the survivor is frozen: alone it could finish the job first.
    survivor.send_signal(signal.SIGSTOP)
    try:
        name = wait_for(lambda: {"n": consumer_of(client, prefix, victim.pid)}, lambda d: d["n"] is not None)["n"]
        for _ in range(500):  # freeze the victim until it is caught holding a batch, then kill it
            victim.send_signal(signal.SIGSTOP)
            if batch_in_hand(client, prefix, name):
                break
            victim.send_signal(signal.SIGCONT)
            if finished(job_of(server, job_id)):
                pytest.fail("the job ended before the victim was caught mid-batch: make it longer")
        else:
            pytest.fail("never caught the victim worker holding a batch")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -9
        assert not finished(job_of(server, job_id))
    finally:
        survivor.send_signal(signal.SIGCONT)
        client.close()
    check_complete(server, job_id, ids)
    assert "took over" in (redis_cluster["dir"] / "worker1.log").read_text()
    assert survivor.poll() is None


def test_redis_restart_mid_job(redis_cluster: dict[str, Any], sources: Path) -> None:
    server, redis_server = redis_cluster["server"], redis_cluster["redis"]
    ids = text_manifest(sources / "m.jsonl", 600)
    job_id = submit(server.url, sources / "m.jsonl")
    job = wait_for(lambda: job_of(server, job_id), lambda j: processed(j) > 0)
    redis_server.kill()
    if finished(job):
        pytest.fail("the job ended before Redis was killed: make it longer")
    body = {"collection": "docs", "source": {"type": "manifest", "path": str(sources / "m.jsonl")}}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for _ in range(3):  # quick 503s with Retry-After, never a hang (TIMEOUT) or a 500
            for r in (client.get(f"/v1/jobs/{job_id}"), client.get("/v1/jobs"), client.post("/v1/jobs", json=body)):
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] and r.json()["error"]["code"] == "store_unavailable"
    redis_server.start()
    check_complete(server, job_id, ids)
    assert (
        len(httpx.get(f"{server.url}/v1/jobs", timeout=TIMEOUT).json()["jobs"]) == 1
    )  # the refused submit left nothing
