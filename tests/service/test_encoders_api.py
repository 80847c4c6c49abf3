"""Encoder-bound collections over HTTP, with a tiny hashed n-gram text model built in the test."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.families.text_hash import HashedNgramFamily
from tests.service.conftest import MakeClient

TINY = "tiny-text@1"


def build_tiny_text(models_dir: Path, key: str = TINY, dim: int = 32) -> EncoderSpec:
    torch.manual_seed(0)
    name, version = key.split("@")
    spec = EncoderSpec(name=name, version=version, family="hashed-ngram", modality="text", dim=dim,
                       config={"buckets": 512, "hidden": 64, "dim": dim, "max_chars": 200})  # fmt: skip
    family = HashedNgramFamily(spec)
    return write_artifact(family, family.build_module(), models_dir / key)


@pytest.fixture
def text_client(make_client: MakeClient, tmp_path: Path) -> TestClient:
    build_tiny_text(tmp_path / "data" / "models")
    return make_client()


DOCS = ["red running shoes", "blue denim jacket", "leather hand bag", "red summer dress", "steel wrist watch"]


def test_bound_collection_takes_text_and_searches_by_text(text_client: TestClient) -> None:
    r = text_client.post("/v1/collections", json={"name": "shop", "encoder": TINY})
    assert r.status_code == 201, r.text
    assert r.json()["dim"] == 32 and r.json()["metric"] == "cosine" and r.json()["encoder"] == TINY
    items = [{"id": f"p{i}", "text": t, "payload": {"i": i}} for i, t in enumerate(DOCS)]
    assert text_client.put("/v1/collections/shop/items", json={"items": items}).json() == {"upserted": 5}
    for i, text in enumerate(DOCS):
        hits = text_client.post("/v1/collections/shop/search", json={"text": text, "k": 1}).json()["results"]
        assert hits[0]["id"] == f"p{i}" and hits[0]["encoder_version"] == TINY
    # raw inputs and vectors mix in one collection
    vec = text_client.post("/v1/embed", json={"encoder": TINY, "inputs": ["leather hand bag"]}).json()
    assert vec["encoder"] == TINY and vec["dim"] == 32 and len(vec["vectors"]) == 1
    hits = text_client.post("/v1/collections/shop/search", json={"vector": vec["vectors"][0], "k": 1}).json()
    assert hits["results"][0]["id"] == "p2" and hits["results"][0]["score"] > 0.999


def test_binding_errors_name_the_fix(text_client: TestClient) -> None:
    r = text_client.post("/v1/collections", json={"name": "x", "encoder": "minilm-l6@1"})
    assert r.status_code == 422 and "ers zoo pull minilm-l6" in r.json()["error"]["message"]
    r = text_client.post("/v1/collections", json={"name": "x", "encoder": TINY, "dim": 31})
    assert r.status_code == 422 and "makes 32-d vectors" in r.json()["error"]["message"]
    text_client.post("/v1/collections", json={"name": "plain", "dim": 32})
    r = text_client.put("/v1/collections/plain/items", json={"items": [{"id": "a", "text": "hello"}]})
    assert r.status_code == 422 and "has no encoder" in r.json()["error"]["message"]
    text_client.post("/v1/collections", json={"name": "shop", "encoder": TINY})
    r = text_client.put("/v1/collections/shop/items", json={"items": [{"id": "a", "image": "aGVsbG8="}]})
    assert r.status_code == 422 and "takes text input, not images" in r.json()["error"]["message"]
    r = text_client.put("/v1/collections/shop/items", json={"items": [{"id": "a", "text": "x" * 201}]})
    assert r.status_code == 422 and "limit is 200" in r.json()["error"]["message"]
    r = text_client.put("/v1/collections/shop/items", json={"items": [{"id": "a", "text": "hi", "vector": [0] * 32}]})
    assert r.status_code == 422 and "exactly one of" in r.json()["error"]["message"]
    r = text_client.post("/v1/embed", json={"encoder": TINY, "inputs": []})
    assert r.status_code == 422
    assert text_client.get("/v1/collections/shop").json()["count"] == 0


def test_encoder_pulled_while_running_is_found(text_client: TestClient, tmp_path: Path) -> None:
    build_tiny_text(tmp_path / "data" / "models", "later-text@2", dim=16)
    r = text_client.post("/v1/collections", json={"name": "late", "encoder": "later-text@2"})
    assert r.status_code == 201 and r.json()["dim"] == 16


def test_cache_serves_repeated_inputs(text_client: TestClient) -> None:
    cache = text_client.app.state.hub.cache  # type: ignore[attr-defined]
    first = text_client.post("/v1/embed", json={"encoder": TINY, "inputs": ["cached words"]}).json()
    hits = cache.hits
    second = text_client.post("/v1/embed", json={"encoder": TINY, "inputs": ["cached words", "new words"]}).json()
    assert cache.hits == hits + 1
    assert second["vectors"][0] == first["vectors"][0]


def _concurrently(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _hold_forwards(batcher: Any, gate: threading.Event) -> Any:
    """Make ``batcher``'s forwards wait for ``gate``; returns the original forward to put back."""
    forward = batcher.encoder.forward

    def held_forward(batch: Any, threads: int = 1) -> Any:
        assert gate.wait(60), "the test never opened the gate"
        return forward(batch, threads=threads)

    batcher.encoder.forward = held_forward
    return forward


def _wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_concurrent_requests_share_forward_passes(make_client: MakeClient, tmp_path: Path) -> None:
    build_tiny_text(tmp_path / "data" / "models")
    client = make_client(batch_wait_ms=50, batch_concurrency=1, embed_cache_size=0)
    assert client.post("/v1/embed", json={"encoder": TINY, "inputs": ["warm"]}).status_code == 200
    batcher = client.app.state.hub.batchers[TINY]  # type: ignore[attr-defined]
    rows, batches = batcher.rows_run, batcher.batches_run
    gate = threading.Event()
    forward = _hold_forwards(batcher, gate)
    results: list[Any] = [None] * 8

    def post(i: int) -> None:
        results[i] = client.post("/v1/embed", json={"encoder": TINY, "inputs": [f"text {i}"]})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        _wait_until(lambda: batcher._active == 8)  # one row held in a forward, seven queued behind it
    finally:
        gate.set()
        for t in threads:
            t.join(60)
        batcher.encoder.forward = forward
    assert all(r.status_code == 200 for r in results)
    assert batcher.rows_run - rows == 8 and batcher.batches_run - batches <= 2  # the queued rows shared one
    # batched vectors equal unbatched ones
    solo = client.post("/v1/embed", json={"encoder": TINY, "inputs": ["text 3"]}).json()["vectors"][0]
    assert max(abs(a - b) for a, b in zip(solo, results[3].json()["vectors"][0], strict=True)) < 1e-6


def test_overload_answers_429_with_retry_after(make_client: MakeClient, tmp_path: Path) -> None:
    """Forwards are held on a gate, so the queue fills whatever the machine's load; then it drains."""
    build_tiny_text(tmp_path / "data" / "models")
    client = make_client(batch_wait_ms=5, batch_max=4, batch_queue=8, batch_concurrency=1, embed_cache_size=0)
    assert client.post("/v1/embed", json={"encoder": TINY, "inputs": ["warm"]}).status_code == 200
    batcher = client.app.state.hub.batchers[TINY]  # type: ignore[attr-defined]
    gate = threading.Event()
    forward = _hold_forwards(batcher, gate)
    results: list[Any] = []
    threads: list[threading.Thread] = []
    try:
        for i in range(6):  # 1 held forward of 4 rows + 8 queued rows: the 4th request cannot fit
            box: list[Any] = []
            active = batcher._active
            t = threading.Thread(
                target=lambda b=box, i=i: b.append(
                    client.post("/v1/embed", json={"encoder": TINY, "inputs": [f"t{i}-{j}" for j in range(4)]})
                )
            )
            t.start()
            threads.append(t)
            results.append(box)
            # the request is queued (or was refused) before the next one goes
            _wait_until(lambda a=active, t=t: batcher._active != a or not t.is_alive())
            if not t.is_alive() and box[0].status_code == 429:
                break
    finally:
        gate.set()
        for t in threads:
            t.join(60)
        batcher.encoder.forward = forward
    codes = [box[0].status_code for box in results]
    assert codes == [200, 200, 200, 429], codes  # in flight, queued, queued, refused
    refused = results[-1][0]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert client.post("/v1/embed", json={"encoder": TINY, "inputs": ["after"]}).status_code == 200


def test_items_record_the_encoder_version_that_made_them(text_client: TestClient) -> None:
    text_client.post("/v1/collections", json={"name": "shop", "encoder": TINY})
    old = [0.1] * 32
    items = [{"id": "new", "text": "fresh words"}, {"id": "old", "vector": old, "encoder_version": "tiny-text@0"}]
    text_client.put("/v1/collections/shop/items", json={"items": items})
    hits = text_client.post("/v1/collections/shop/search", json={"vector": old, "k": 2}).json()["results"]
    assert {h["id"]: h["encoder_version"] for h in hits} == {"new": TINY, "old": "tiny-text@0"}
    bad = text_client.post("/v1/collections", json={"name": "x", "dim": 2, "encoder": "no-version"})
    assert bad.status_code == 422 and "name@version" in bad.json()["error"]["message"]


def test_torch_runs_with_the_configured_threads_in_every_thread() -> None:
    from models.core.backends import ensure_torch_threads, set_torch_threads

    set_torch_threads(1)
    seen: list[int] = []

    def worker() -> None:
        torch.set_num_threads(2)  # a thread that started with a different count
        ensure_torch_threads()  # what TorchRunner and face detection call before running torch
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1]
