"""Indexing jobs over HTTP with the embedded runner: sources with broken items, path safety,
manifests, uploads, listing and cancelling."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MakeClient
from tests.service.test_jobs_support import IMAGE, TEXT, build_image, build_text, finished, png, text_tree, wait_for


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    root.mkdir()
    return root


@pytest.fixture
def api(make_client: MakeClient, tmp_path: Path, roots: Path) -> TestClient:
    build_text(tmp_path / "data" / "models")
    build_image(tmp_path / "data" / "models")
    return make_client(allowed_roots=[roots], job_batch=4, job_encode_threads=2, max_image_pixels=1_000_000)


def run_job(api: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    return wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json(), finished)


def errors_by_id(job: dict[str, Any]) -> dict[str, str]:
    return {e["id"]: e["reason"] for e in job["errors"]}


def test_directory_job_indexes_good_files_and_reports_each_bad_one(api: TestClient, roots: Path) -> None:
    src = roots / "texts"
    good, bad = text_tree(src, good=13)
    os.symlink("/etc/hostname", src / "a" / "escape.txt")  # a symlink leaving the allowed root
    bad["a/escape.txt"] = "refused"
    assert api.post("/v1/collections", json={"name": "docs", "encoder": TEXT}).status_code == 201
    job = run_job(api, {"collection": "docs", "source": {"type": "directory", "path": str(src)}})
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["failed"]) == (len(good) + len(bad), len(good), len(bad))
    reasons = errors_by_id(job)
    assert set(reasons) == set(bad)
    for item_id, word in bad.items():
        assert word.lower() in reasons[item_id].lower(), (item_id, reasons[item_id])
    assert job["eta_s"] == 0 and job["items_per_s"] and job["items_per_s"] > 0
    info = api.get("/v1/collections/docs").json()
    assert info["count"] == len(good)
    query = {"text": "document number 6 about topic 6 and colour 1", "k": 1}
    top = api.post("/v1/collections/docs/search", json=query).json()["results"][0]
    assert (top["id"], top["payload"], top["encoder_version"]) == ("b/doc-006.txt", {"path": "b/doc-006.txt"}, TEXT)
    # Re-running the same job is idempotent: the same ids are replaced, nothing is added.
    again = run_job(api, {"collection": "docs", "source": {"type": "directory", "path": str(src)}})
    assert (again["state"], again["done"], again["failed"]) == ("succeeded", len(good), len(bad))
    assert api.get("/v1/collections/docs").json()["count"] == len(good)


def test_image_directory_with_corrupt_and_non_image_files(api: TestClient, roots: Path) -> None:
    src = roots / "pics"
    src.mkdir()
    for n in range(9):
        (src / f"img-{n}.png").write_bytes(png(n))
    (src / "corrupt.png").write_bytes(png(99)[:40])  # a truncated PNG
    (src / "notes.txt").write_text("not an image at all")
    (src / "huge.png").write_bytes(png(5, size=1100))  # over ERS_MAX_IMAGE_PIXELS (1M here)
    assert api.post("/v1/collections", json={"name": "pics", "encoder": IMAGE}).status_code == 201
    job = run_job(api, {"collection": "pics", "source": {"type": "directory", "path": str(src)}})
    assert job["state"] == "succeeded", job
    reasons = errors_by_id(job)
    assert set(reasons) == {"corrupt.png", "notes.txt", "huge.png"}, reasons
    assert "corrupt" in reasons["corrupt.png"] and "corrupt" in reasons["notes.txt"], reasons
    assert "pixels" in reasons["huge.png"]
    assert (job["total"], job["done"], job["failed"]) == (12, 9, 3)
    assert api.get("/v1/collections/pics").json()["count"] == 9
    top = api.post("/v1/collections/pics/search", json={"id": "img-3.png", "k": 1}).json()["results"]
    assert top and top[0]["id"] != "img-3.png"


@pytest.mark.parametrize(
    "path",
    ["{root}/../outside", "{root}/link-out", "file://{root}/texts", "/etc", "relative/dir", "{root}/texts/../texts"],
)
def test_unsafe_source_paths_are_refused(api: TestClient, roots: Path, tmp_path: Path, path: str) -> None:
    (roots / "texts").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", roots / "link-out")
    assert api.post("/v1/collections", json={"name": "docs", "encoder": TEXT}).status_code == 201
    body = {"collection": "docs", "source": {"type": "directory", "path": path.format(root=roots)}}
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "path_refused"
    assert api.get("/v1/jobs").json()["jobs"] == []  # nothing was started


def test_no_allowed_roots_means_no_server_paths(make_client: MakeClient, tmp_path: Path) -> None:
    api = make_client()
    api.post("/v1/collections", json={"name": "v", "dim": 3})
    r = api.post("/v1/jobs", json={"collection": "v", "source": {"type": "manifest", "path": str(tmp_path)}})
    assert r.status_code == 403 and "ERS_ALLOWED_ROOTS" in r.json()["error"]["message"]


def test_submit_errors_are_clear(api: TestClient, roots: Path) -> None:
    (roots / "m.jsonl").write_text("")
    (roots / "m.txt").write_text("")
    api.post("/v1/collections", json={"name": "v", "dim": 3})
    cases = [
        ({"collection": "nope", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}}, 404),
        ({"collection": "v", "source": {"type": "directory", "path": str(roots)}}, 422),  # no encoder
        ({"collection": "v", "source": {"type": "manifest", "path": str(roots / "m.txt")}}, 422),
        ({"collection": "v", "source": {"type": "manifest", "path": str(roots / "missing.jsonl")}}, 422),
        ({"collection": "v", "source": {"type": "s3", "path": "x"}}, 422),
        ({"collection": "v", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}, "options": {"x": 1}}, 422),
        (
            {
                "collection": "v",
                "source": {"type": "manifest", "path": str(roots / "m.jsonl")},
                "options": {"batch_size": 0},
            },
            422,
        ),
    ]
    for body, status in cases:
        r = api.post("/v1/jobs", json=body)
        assert r.status_code == status, (body, r.text)
    assert api.get("/v1/jobs/does-not-exist").status_code == 404
    assert api.post("/v1/jobs/does-not-exist/cancel").status_code == 404


def manifest_lines() -> list[str]:
    rows: list[Any] = [
        {"id": "v1", "vector": [1, 0, 0], "payload": {"k": 1}},
        {"id": "v2", "vector": [0, 1, 0]},
        {"id": "short", "vector": [1, 0]},  # wrong dimension
        {"id": "nan", "vector": [1, "x", 0]},
        {"vector": [0, 0, 1]},  # no id
        {"id": "two", "vector": [0, 0, 1], "text": "and text"},
        {"id": "text", "text": "no encoder for this"},
        {"id": "badpayload", "vector": [1, 1, 1], "payload": [1]},
    ]
    return [json.dumps(r) for r in rows] + ["{not json", "", json.dumps({"id": 7, "vector": [0, 0, 2]})]


def test_manifest_jsonl_and_csv(api: TestClient, roots: Path) -> None:
    (roots / "m.jsonl").write_text("\n".join(manifest_lines()) + "\n")
    api.post("/v1/collections", json={"name": "v", "dim": 3, "metric": "l2"})
    job = run_job(api, {"collection": "v", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}})
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("succeeded", 10, 3, 7), job
    reasons = errors_by_id(job)
    assert "dimension" in reasons["short"] and "line 5" in reasons and "line 9" in reasons
    assert "exactly one" in reasons["two"] and "no encoder" in reasons["text"] and "object" in reasons["badpayload"]
    assert api.get("/v1/collections/v/items/v1").json()["payload"] == {"k": 1}
    assert api.get("/v1/collections/v/items/7").status_code == 200
    csv_text = 'id,vector,payload\nc1,"[1, 2, 3]","{""a"": 1}"\nc2,"[1, 2]",\nc3,"[0, 0, 9]",\n'
    (roots / "m.csv").write_text(csv_text)
    job = run_job(api, {"collection": "v", "source": {"type": "manifest", "path": str(roots / "m.csv")}})
    assert (job["done"], job["failed"], list(errors_by_id(job))) == (2, 1, ["c2"])
    assert api.get("/v1/collections/v/items/c1").json()["payload"] == {"a": 1}


def test_upload_manifest_with_files(api: TestClient, tmp_path: Path) -> None:
    api.post("/v1/collections", json={"name": "pics", "encoder": IMAGE})
    manifest = "\n".join(json.dumps({"id": f"p{n}", "path": f"f{n}.png", "payload": {"n": n}}) for n in range(5))
    manifest += "\n" + json.dumps({"id": "escape", "path": "../../etc/passwd"})
    manifest += "\n" + json.dumps({"id": "missing", "path": "nope.png"})
    files = [("file", (f"f{n}.png", png(n), "image/png")) for n in range(5)]
    r = api.post("/v1/jobs", data={"collection": "pics", "options": '{"batch_size": 2}'},
                 files=[("manifest", ("m.jsonl", manifest.encode(), "application/x-ndjson")), *files])  # fmt: skip
    assert r.status_code == 202, r.text
    job = wait_for(lambda: api.get(f"/v1/jobs/{r.json()['id']}").json(), finished)
    assert (job["state"], job["done"], job["failed"]) == ("succeeded", 5, 2), job
    reasons = errors_by_id(job)
    assert "refused" in reasons["escape"] and "unreadable" in reasons["missing"]
    assert api.get("/v1/collections/pics/items/p3").json()["payload"] == {"n": 3}
    assert not (tmp_path / "data" / "uploads" / job["id"]).exists()  # staged files dropped at the end
    r = api.post("/v1/jobs", data={"collection": "pics"}, files=[("file", ("a.png", png(1), "image/png"))])
    assert r.status_code == 422 and "manifest" in r.json()["error"]["message"]


def test_list_and_cancel(api: TestClient, roots: Path) -> None:
    api.post("/v1/collections", json={"name": "v", "dim": 3})
    lines = [json.dumps({"id": f"i{n}", "vector": [n, 1, 0]}) for n in range(40)]
    (roots / "m.jsonl").write_text("\n".join(lines))
    body = {"collection": "v", "source": {"type": "manifest", "path": str(roots / "m.jsonl")}}
    first = run_job(api, body)
    r = api.post(f"/v1/jobs/{first['id']}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["error"]["message"]
    listed = api.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [first["id"]] and listed[0]["done"] == 40
