"""``ERSClient`` against a live ``ers serve`` (tests/service/client/conftest.py): every group of
REST v1 methods, their typed answers, and the typed errors the API's statuses become."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import (
    Collection,
    Conflict,
    ERSClient,
    ERSClientError,
    ERSConnectionError,
    Forbidden,
    InvalidRequest,
    Job,
    NewItem,
    NotFound,
    PayloadTooLarge,
    Query,
    Unauthorized,
    Upload,
)
from tests.service.client.conftest import TEXT_OTHER, TEXT_V2, LiveServer
from tests.service.server_proc import free_port
from tests.service.test_jobs_support import IMAGE, TEXT, png, text_tree


@pytest.fixture
def ers(live: LiveServer) -> Iterator[ERSClient]:
    with ERSClient(live.url, live.key) as client:
        yield client


def test_the_client_imports_nothing_of_the_server() -> None:
    """A client user needs httpx and pydantic, not FastAPI, FAISS or torch."""
    server_side = {"fastapi", "starlette", "uvicorn", "torch", "faiss", "onnxruntime", "numpy", "indexer", "models"}
    probe = "import json, sys, service.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "httpx" in loaded and not server_side & {m.split(".")[0] for m in loaded}
    assert [m for m in loaded if m.startswith("service") and not m.startswith("service.client")] == ["service"]


def test_health_and_a_wrong_key(live: LiveServer, ers: ERSClient) -> None:
    assert ers.healthz().status == "ok"
    assert ers.readyz().status == "ready"
    for key in ("wrong", None):
        with ERSClient(live.url, key) as stranger, pytest.raises(Unauthorized) as caught:
            stranger.list_collections()
        assert caught.value.status == 401 and caught.value.code == "unauthorized"
        assert "API key" in caught.value.message and str(caught.value).startswith("HTTP 401: ")
    with ERSClient(live.url, "wrong") as stranger:
        assert stranger.healthz().status == "ok"  # health stays open, as for load balancers


def test_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with ERSClient(url, timeout=2) as client, pytest.raises(ERSConnectionError) as caught:
        client.healthz()
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ERSClientError)
    assert caught.value.url == url and f"cannot reach ERS at {url}" in str(caught.value)


def test_collections_create_list_get_delete(ers: ERSClient) -> None:
    made = ers.create_collection("c-life", 3, metric="l2", index="Flat")
    assert isinstance(made, Collection)
    assert (made.name, made.dim, made.metric, made.index, made.count) == ("c-life", 3, "l2", "Flat", 0)
    assert made.encoder is None and made.keep_sources is False
    assert "c-life" in {c.name for c in ers.list_collections()}
    assert ers.get_collection("c-life").to_json()["dim"] == 3
    with pytest.raises(Conflict) as dup:
        ers.create_collection("c-life", 3)
    assert dup.value.status == 409 and dup.value.code == "already_exists" and "c-life" in dup.value.message
    assert ers.delete_collection("c-life") is None
    with pytest.raises(NotFound) as missing:
        ers.get_collection("c-life")
    assert missing.value.status == 404 and missing.value.code == "collection_not_found"
    assert missing.value.message == "collection 'c-life' does not exist"
    with pytest.raises(InvalidRequest) as no_dim:
        ers.create_collection("c-nodim")
    assert no_dim.value.code == "invalid_input" and "dim is required" in no_dim.value.message


def test_items_search_and_batch_search(ers: ERSClient) -> None:
    ers.create_collection("c-vec", 3, metric="l2")
    items: list[NewItem | dict[str, object]] = [
        NewItem(f"v{i}", vector=[float(i), 0.0, 0.0], payload={"i": i, "odd": i % 2 == 1}) for i in range(5)
    ]
    items.append({"id": "path/with#hash", "vector": np.array([9.0, 1.0, 0.0], np.float32), "payload": {"i": 9}})
    assert ers.upsert("c-vec", items).upserted == 6
    got = ers.get_item("c-vec", "path/with#hash", with_vector=True)
    assert got.vector == [9.0, 1.0, 0.0] and got.payload == {"i": 9} and got.encoder_version is None
    assert ers.get_item("c-vec", "v1").vector is None

    found = ers.search("c-vec", vector=[3.1, 0, 0], k=2)
    assert [h.id for h in found.results] == ["v3", "v4"] and found.took_ms >= 0
    assert found.results[0].score > found.results[1].score  # l2: -squared distance, higher is better
    by_id = ers.search("c-vec", id="v0", k=3, filter={"odd": True})
    assert [h.id for h in by_id.results] == ["v1", "v3"]  # itself left out; the filter keeps odd ones
    batch = ers.search_batch("c-vec", [Query(vector=[0, 0, 0], k=1), {"id": "v4", "k": 2, "filter": {"i": {"gte": 3}}}])
    assert [[h.id for h in hits] for hits in batch.results] == [["v0"], ["v3", "path/with#hash"]]

    with pytest.raises(InvalidRequest) as bad_dim:
        ers.upsert("c-vec", [NewItem("bad", vector=[1.0, 2.0])])
    assert bad_dim.value.status == 422 and "dimension 2" in bad_dim.value.message
    with pytest.raises(InvalidRequest, match="exactly one of"):
        ers.search("c-vec", k=2)
    with pytest.raises(PayloadTooLarge) as big:
        ers.search("c-vec", vector=[0, 0, 0], k=100_000)
    assert big.value.status == 413 and big.value.code == "limit_exceeded" and "ERS_MAX_K" in big.value.message
    assert ers.delete_item("c-vec", "path/with#hash") == 1
    with pytest.raises(NotFound) as gone:
        ers.delete_item("c-vec", "path/with#hash")
    assert gone.value.code == "item_not_found"
    assert ers.get_collection("c-vec").count == 5


def test_raw_text_and_image_items_and_embed(ers: ERSClient) -> None:
    ers.create_collection("c-text", encoder=TEXT)
    words = ["red apple pie", "blue ocean wave", "green forest tree"]
    ers.upsert("c-text", [NewItem(f"t{i}", text=w, payload={"w": w}) for i, w in enumerate(words)])
    assert ers.search("c-text", text="blue ocean wave", k=1).results[0].id == "t1"
    assert ers.get_item("c-text", "t1").encoder_version == TEXT
    embedded = ers.embed(TEXT, words[:2])
    assert (embedded.encoder, embedded.dim, len(embedded.vectors)) == (TEXT, 16, 2) and embedded.faces is None
    assert ers.search("c-text", vector=embedded.vectors[0], k=1).results[0].id == "t0"

    ers.create_collection("c-img", encoder=IMAGE)
    assert ers.upsert("c-img", [NewItem("p0", image=png(0)), {"id": "p1", "image": png(1)}]).upserted == 2
    uploaded = ers.upsert_files("c-img", [("p2.png", png(2)), ("p3.png", png(3))], payload={"from": "files"})
    assert uploaded.upserted == 2 and ers.get_item("c-img", "p3.png").payload == {"from": "files"}
    assert ers.upsert_files("c-img", [("x.png", png(4))], ids=["p4"]).upserted == 1 and ers.get_item("c-img", "p4")
    assert ers.search("c-img", image=png(2), k=1).results[0].id == "p2.png"
    corrupt = io.BytesIO()
    Image.new("RGB", (4, 4)).save(corrupt, "PNG")
    with pytest.raises(InvalidRequest):
        ers.search("c-img", image=corrupt.getvalue()[:20], k=1)  # truncated PNG


def test_job_progress_reaches_a_terminal_state(live: LiveServer, ers: ERSClient, tmp_path: Path) -> None:
    ers.create_collection("c-jobs", encoder=TEXT)
    good, bad = text_tree(live.sources / "texts", good=10)
    job = ers.submit_job("c-jobs", str(live.sources / "texts"), batch_size=4)
    assert isinstance(job, Job) and job.collection == "c-jobs" and job.source.type == "directory"
    seen = list(ers.watch_job(job.id, interval=0.05))
    final = seen[-1]
    assert final.terminal and final.state == "succeeded" and all(not j.terminal for j in seen[:-1])
    assert (final.done, final.failed, final.total) == (len(good), len(bad), len(good) + len(bad))
    assert {e.id for e in final.errors} == set(bad) and final.eta_s == 0
    assert [s.processed for s in seen] == sorted(s.processed for s in seen)  # progress only grows
    assert job.id in {j.id for j in ers.list_jobs()} and ers.get_job(job.id).state == "succeeded"
    with pytest.raises(Conflict):
        ers.cancel_job(job.id)  # it has finished
    with pytest.raises(NotFound):
        ers.get_job("no-such-job")
    with pytest.raises(Forbidden) as refused:
        ers.submit_job("c-jobs", "/etc")
    assert refused.value.status == 403 and refused.value.code == "path_refused"

    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "a.txt").write_text("alpha text")
    (local / "b.txt").write_text("beta text")
    uploaded = ers.submit_upload("c-jobs", Upload.from_path(local))
    last = list(ers.watch_job(uploaded.id, interval=0.05))[-1]
    assert (last.state, last.done, uploaded.source.type) == ("succeeded", 2, "upload")
    assert ers.get_item("c-jobs", "sub/a.txt").payload == {"path": "sub/a.txt"}
    lines = [json.dumps({"id": f"m{i}", "text": f"line {i}"}) for i in range(3)]
    manifest = Upload("m.jsonl", "\n".join(lines).encode())
    assert list(ers.watch_job(ers.submit_upload("c-jobs", manifest).id, interval=0.05))[-1].done == 3


def test_migrations_and_eval_sets(ers: ERSClient) -> None:
    ers.create_collection("c-mig", encoder=TEXT)
    texts = ["cat", "kitten", "dog", "puppy", "car", "truck", "apple", "pear"]
    ers.upsert("c-mig", [NewItem(f"g{i}", text=t) for i, t in enumerate(texts)])
    with pytest.raises(NotFound, match="has no evaluation set"):
        ers.get_eval_set("c-mig")
    stored = ers.put_eval_set("c-mig", texts, [i // 2 for i in range(8)])
    assert (stored.size, stored.labels) == (8, 4) and stored.updated_at is not None
    with pytest.raises(Conflict) as gate:  # v2 makes the very same vectors: new/old is not above old/old
        ers.migrate("c-mig", TEXT_V2)
    assert "compatibility gate failed" in gate.value.message
    with pytest.raises(Conflict, match="not compatible by spec"):
        ers.migrate("c-mig", TEXT_OTHER, force=True)
    moved = ers.migrate("c-mig", TEXT_V2, force=True)
    assert moved.active == TEXT_V2 and moved.migration.kind == "migrate" and moved.migration.from_ == TEXT
    assert moved.migration.gate == "forced" and moved.migration.eval_source == "collection"
    report = moved.migration.reports[TEXT]
    assert report.n == 8 and not report.criterion_met and report.new_old.top1 == report.old_old.top1
    assert ers.search("c-mig", text="kitten", k=1).results[0].id == "g1"  # old vectors stay searchable
    history = ers.migrations("c-mig")
    assert (history.active, history.dim, history.versions) == (TEXT_V2, 16, {TEXT: 8})
    assert [m.kind for m in history.history] == ["migrate"] and history.history[0].to_json()["from"] == TEXT
    back = ers.rollback("c-mig")
    assert back.active == TEXT and back.migration.kind == "rollback" and back.migration.unsearchable == {}
    assert ers.delete_eval_set("c-mig") is None
    with pytest.raises(NotFound):  # gone, as any deleted resource
        ers.get_eval_set("c-mig")
    with_eval = ers.migrate("c-mig", TEXT_V2, force=True, eval_set={"inputs": texts[:4], "labels": [0, 0, 1, 1]})
    assert with_eval.migration.eval_source == "request" and with_eval.migration.reports[TEXT].n == 4
    assert [m.kind for m in ers.migrations("c-mig").history] == ["migrate", "rollback", "migrate"]


def test_face_verify_and_cluster(live: LiveServer, ers: ERSClient) -> None:
    ers.create_collection("c-faces", encoder=live.face)
    names = ["obama", "obama2", "obama3", "biden"]
    added = ers.upsert("c-faces", [NewItem(n, image=live.photos[n]) for n in names])
    assert added.upserted == 4 and added.skipped == []
    same = ers.verify("c-faces", live.photos["obama"], live.photos["obama3"])
    assert same.same and same.distance < same.threshold and same.encoder == live.face
    assert not ers.verify("c-faces", live.photos["obama"], live.photos["biden"]).same
    grouped = ers.cluster("c-faces")
    assert [c.ids for c in grouped.clusters] == [["obama#face0", "obama2#face0", "obama3#face0"]]
    assert grouped.unclustered == 1 and grouped.threshold == same.threshold
    faces = ers.embed(live.face, [live.photos["obama"]]).faces
    assert faces is not None and faces[0].input == 0 and len(faces[0].box) == 4
    ers.create_collection("c-text-faces", encoder=TEXT)
    with pytest.raises(InvalidRequest, match="verify needs a face collection"):
        ers.verify("c-text-faces", live.photos["obama"], live.photos["obama"])
