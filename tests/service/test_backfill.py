"""Kept sources and the background backfill of a migration, through the API, on the Fashion-MNIST
CNNs of test_migrations (v1 trained briefly, v2 = v1 + 8 extra dims, compatible by construction):
keep_sources round trip, backfill refused without kept sources, a v1 gallery moved to v2 by a job
while searches keep finding k distinct items, idempotent re-run, rollback during a backfill, and a job
whose encoder was captured before a migration writes its own version afterwards."""

from __future__ import annotations

import base64
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from indexer.collection import Collection
from indexer.jobs.embedded import EmbeddedRunner
from indexer.jobs.encode import encode_batch
from indexer.jobs.model import Item
from indexer.jobs.runner import JobRunner
from models.data.fashion_mnist import FashionMNIST
from tests.service.conftest import MakeClient
from tests.service.test_jobs_support import finished, wait_for
from tests.service.test_migrations import V1, V2, fmnist, gallery_items, models_dir, sample

__all__ = ["fmnist", "models_dir"]  # module fixtures shared with test_migrations (v1 is trained once here)


def setup(make_client: MakeClient, tmp_path: Path, models_dir: Path, keep: bool = True, **settings: Any) -> TestClient:
    shutil.copytree(models_dir, tmp_path / "data" / "models")
    client = make_client(**settings)
    r = client.post("/v1/collections", json={"name": "fm", "encoder": V1, "keep_sources": keep})
    assert r.status_code == 201, r.text
    return client


def coll(client: TestClient) -> Collection:
    found: Collection = client.app.state.manager.get("fm")  # type: ignore[attr-defined]
    return found


def runner_of(client: TestClient) -> JobRunner:
    found: JobRunner = client.app.state.jobs  # type: ignore[attr-defined]
    return found


def versions(client: TestClient) -> dict[str, int]:
    found: dict[str, int] = client.get("/v1/collections/fm/migrations").json()["versions"]
    return found


def test_keep_sources_round_trip(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    client = setup(make_client, tmp_path, models_dir)
    assert client.get("/v1/collections/fm").json()["keep_sources"] is True
    assert client.post("/v1/collections", json={"name": "plain", "encoder": V1}).json()["keep_sources"] is False
    r = client.post("/v1/collections", json={"name": "vec", "dim": 4, "keep_sources": True})
    assert r.status_code == 422 and "needs an encoder" in r.json()["error"]["message"]
    images, labels = sample(fmnist, 6)
    client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)})
    kept = coll(client).sources
    assert kept is not None and kept.count() == 6
    got = kept.get("g2")
    assert got is not None and got.kind == "image" and got.data == base64.b64decode(images[2])
    vector = client.get("/v1/collections/fm/items/g1", params={"with_vector": True}).json()["vector"]
    client.put("/v1/collections/fm/items", json={"items": [{"id": "g1", "vector": vector}]})
    assert kept.get("g1") is None  # a client vector replaced it: its old input no longer describes it
    assert client.delete("/v1/collections/fm/items/g2").status_code == 200
    assert kept.get("g2") is None and kept.count() == 4
    client.__exit__(None, None, None)
    again = make_client()  # the flag and the sources survive a restart
    assert again.get("/v1/collections/fm").json()["keep_sources"] is True
    assert coll(again).sources is not None and coll(again).sources.get("g0") is not None  # type: ignore[union-attr]
    directory = coll(again).directory
    assert again.delete("/v1/collections/fm").status_code == 204 and not directory.exists()


def test_backfill_refused_without_kept_sources(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    client = setup(make_client, tmp_path, models_dir, keep=False)
    images, labels = sample(fmnist, 10)
    client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)})
    r = client.post("/v1/collections/fm/migrations", json={"to": V2, "force": True, "backfill": "background"})
    assert r.status_code == 409 and "does not keep sources" in r.json()["error"]["message"]
    assert client.get("/v1/collections/fm").json()["encoder"] == V1 and client.get("/v1/jobs").json()["jobs"] == []


def test_background_backfill(make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST) -> None:
    client = setup(make_client, tmp_path, models_dir, job_batch=8)
    n, k = 96, 10
    images, labels = sample(fmnist, n)
    assert client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)}).status_code == 200
    collection = coll(client)
    probe = images[5]
    checks: list[tuple[int, int, set[str]]] = []  # after every backfill write: hits, distinct ids, versions
    original = collection.upsert

    def upsert_then_search(*args: Any, **kwargs: Any) -> int:
        written = original(*args, **kwargs)
        if kwargs.get("only_moving_to"):
            hits = client.post("/v1/collections/fm/search", json={"image": probe, "k": k}).json()["results"]
            checks.append((len(hits), len({h["id"] for h in hits}), {h["encoder_version"] for h in hits}))
        return written

    collection.upsert = upsert_then_search  # type: ignore[method-assign]
    concurrent: list[list[str]] = []
    stop = threading.Event()

    def search_meanwhile() -> None:
        while not stop.is_set():
            hits = client.post("/v1/collections/fm/search", json={"image": images[7], "k": k}).json()["results"]
            concurrent.append([h["id"] for h in hits])

    searcher = threading.Thread(target=search_meanwhile)
    searcher.start()
    try:
        r = client.post("/v1/collections/fm/migrations", json={"to": V2, "force": True, "backfill": "background"})
        assert r.status_code == 201, r.text
        job_id = r.json()["migration"]["backfill_job"]
        job = wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json(), finished)
    finally:
        stop.set()
        searcher.join(timeout=30)
    assert job["state"] == "succeeded" and (job["total"], job["done"], job["failed"]) == (n, n, 0), job
    assert job["source"] == {"type": "backfill", "to": V2}
    assert len(checks) == n // 8  # one search after each batch moved
    assert all(hits == k and distinct == k for hits, distinct, _ in checks), checks
    assert any(seen == {V1, V2} for *_, seen in checks)  # mid-way states mix both versions
    assert concurrent and all(len(ids) == k == len(set(ids)) for ids in concurrent)
    assert versions(client) == {V2: n} and client.get("/v1/collections/fm").json()["count"] == n
    history = client.get("/v1/collections/fm/migrations").json()["history"]
    assert history[-1]["backfill"] == "background" and history[-1]["backfill_job"] == job_id
    # v2 queries against v2 vectors now: each image finds itself first
    hits = client.post("/v1/collections/fm/search", json={"image": images[3], "k": 1}).json()["results"]
    assert hits[0]["id"] == "g3" and hits[0]["encoder_version"] == V2
    assert client.get("/v1/collections/fm/items/g3").json()["payload"] == {"label": labels[3]}  # payload kept
    runner = runner_of(client)  # re-running finds nothing left
    again = runner.start_backfill(runner.prepare_backfill("fm", V2))["id"]
    job = wait_for(lambda: client.get(f"/v1/jobs/{again}").json(), finished)
    assert (job["state"], job["total"], job["done"]) == ("succeeded", 0, 0)


def test_rollback_during_backfill(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    client = setup(make_client, tmp_path, models_dir, job_batch=4)
    n = 64
    images, labels = sample(fmnist, n)
    client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)})
    collection = coll(client)
    original, moved = collection.upsert, threading.Event()

    def upsert_slowly(*args: Any, **kwargs: Any) -> int:
        written = original(*args, **kwargs)
        if kwargs.get("only_moving_to"):
            moved.set()
            stop_here.wait(timeout=10)  # hold the job after its first batch until the rollback is done
        return written

    stop_here = threading.Event()
    collection.upsert = upsert_slowly  # type: ignore[method-assign]
    r = client.post("/v1/collections/fm/migrations", json={"to": V2, "force": True, "backfill": "background"})
    job_id = r.json()["migration"]["backfill_job"]
    assert moved.wait(timeout=30)
    back = client.post("/v1/collections/fm/migrations", json={"rollback": True})
    stop_here.set()
    # the batch it moved is restored from the archive before the switch back: 202 with the task
    assert back.status_code == 202 and back.json()["active"] == V2
    task_id = back.json()["task"]["id"]
    task = wait_for(lambda: client.get(f"/v1/collections/fm/migrations/tasks/{task_id}").json(),
                    lambda t: t["state"] != "running")  # fmt: skip
    assert task["state"] == "succeeded", task
    entry = task["migration"]
    assert (entry["to"], entry["cancelled_backfills"], entry["unsearchable"]) == (V1, [job_id], {})
    assert entry["restored"] >= 4  # the held batch, and any that landed before the cancel took effect
    job = wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json(), finished)
    assert job["state"] == "cancelled"
    runner_of(client).stop()  # the job's threads are done: nothing moves after the rollback
    assert versions(client) == {V1: n}  # every item has its old vector again
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # already over


def test_job_encoder_captured_before_a_migration(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    """A job keeps the encoder it started with: after a migration its batches are still labelled
    with that version (and accepted at that width), not taken for the new active encoder's."""
    client = setup(make_client, tmp_path, models_dir)
    images, labels = sample(fmnist, 8)
    client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images[:4], labels[:4])})
    runner = runner_of(client)
    job = {"collection": "fm", "source": {"type": "manifest", "path": "/nowhere.jsonl"}}
    target = runner.target(job)  # as a job running at the migration captured it
    assert client.post("/v1/collections/fm/migrations", json={"to": V2, "force": True}).status_code == 201
    entries = [Item(f"j{i}", "path", base64.b64decode(im), {"label": y}) for i, (im, y) in
               enumerate(zip(images[4:], labels[4:], strict=True))]  # fmt: skip
    encoded = encode_batch(0, list(entries), target, client.app.state.hub.get)  # type: ignore[attr-defined]
    assert encoded.vectors.shape == (4, 32) and set(encoded.versions) == {V1}
    runner.store.create_job("j", {**job, "state": "running", "created_at": 0.0, "runner": runner.name})
    runner.write("j", encoded)
    assert client.get("/v1/collections/fm/items/j0").json()["encoder_version"] == V1
    assert coll(client).sources.get("j0").data == base64.b64decode(images[4])  # type: ignore[union-attr]
    vector = np.asarray(client.get("/v1/collections/fm/items/j0", params={"with_vector": True}).json()["vector"])
    assert vector.shape == (32,)


def test_backfill_resumes_after_a_stop(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    """A server stopping mid-backfill leaves the job running in the store; the next runner lists only
    the items left, numbers its batches after the counted ones and ends with every item moved once."""
    client = setup(make_client, tmp_path, models_dir, job_batch=4)
    n = 24
    images, labels = sample(fmnist, n)
    client.put("/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)})
    collection, runner = coll(client), runner_of(client)
    original, moved, release = collection.upsert, threading.Event(), threading.Event()

    def upsert_then_hold(*args: Any, **kwargs: Any) -> int:
        written = original(*args, **kwargs)
        if kwargs.get("only_moving_to") and not moved.is_set():
            moved.set()
            release.wait(timeout=10)
        return written

    collection.upsert = upsert_then_hold  # type: ignore[method-assign]
    r = client.post("/v1/collections/fm/migrations", json={"to": V2, "force": True, "backfill": "background"})
    job_id = r.json()["migration"]["backfill_job"]
    assert moved.wait(timeout=30)
    stopper = threading.Thread(target=runner.stop)  # a shutdown: halts between batches
    stopper.start()
    release.set()
    stopper.join(timeout=60)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "running" and job["done"] == 4 and versions(client) == {V1: n - 4, V2: 4}
    fresh = EmbeddedRunner(runner.store, runner.manager, runner.options, runner.get_encoder)
    fresh.start()  # resumes the job
    try:
        job = wait_for(lambda: fresh.get(job_id), finished)
    finally:
        fresh.stop()
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("succeeded", n, n, 0), job
    assert versions(client) == {V2: n} and client.get("/v1/collections/fm").json()["count"] == n
