"""Face collections over HTTP with the real face-resnet@1 zoo encoder on real photos: one item per
detected face, verification with the encoder's threshold, clustering by identity."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import install_zoo_model
from tests.face_photos import load_face_photos
from tests.service.conftest import MakeClient


@pytest.fixture(scope="module")
def photos(zoo_dirs: tuple[Path, Path]) -> dict[str, bytes]:
    return load_face_photos(zoo_dirs[1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def faces(make_client: MakeClient, tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> TestClient:
    key = install_zoo_model("face-resnet", tmp_path / "data", zoo_dirs)
    client = make_client()
    r = client.post("/v1/collections", json={"name": "people", "encoder": key})
    assert r.status_code == 201 and r.json()["dim"] == 128 and r.json()["metric"] == "l2"
    return client


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 140, 200)).save(out, format="PNG")
    return out.getvalue()


def test_each_face_becomes_an_item_and_search_finds_the_person(faces: TestClient, photos: dict[str, bytes]) -> None:
    names = ["obama", "obama2", "biden", "sample1"]
    items = [{"id": n, "image": b64(photos[n]), "payload": {"photo": n}} for n in names]
    items.append({"id": "sky", "image": b64(blank_png())})
    body = faces.put("/v1/collections/people/items", json={"items": items}).json()
    assert body["skipped"] == [{"id": "sky", "reason": "no face found"}]
    ids = {f"{n}#face0" for n in ("obama", "obama2", "biden")} | {f"sample1#face{i}" for i in range(3)}
    assert body["upserted"] == len(ids) == 6
    item = faces.get("/v1/collections/people/items/sample1%23face2").json()  # "#" must be URL-encoded
    assert item["payload"]["source_id"] == "sample1" and item["payload"]["photo"] == "sample1"
    assert len(item["payload"]["face"]["box"]) == 4 and item["encoder_version"] == "face-resnet@1"
    hits = faces.post("/v1/collections/people/search", json={"image": b64(photos["obama3"]), "k": 3}).json()
    assert {h["id"] for h in hits["results"][:2]} == {"obama#face0", "obama2#face0"}
    assert hits["results"][0]["score"] > -0.36  # l2 scores are -squared distance: same person < 0.6
    r = faces.post("/v1/collections/people/search", json={"image": b64(blank_png())})
    assert r.status_code == 422 and "no face found" in r.json()["error"]["message"]


def test_verify_same_and_different_person(faces: TestClient, photos: dict[str, bytes]) -> None:
    same = faces.post("/v1/collections/people/verify",
                      json={"image_a": b64(photos["obama"]), "image_b": b64(photos["obama3"])}).json()  # fmt: skip
    assert same["same"] is True and same["distance"] < same["threshold"] == 0.6
    other = faces.post("/v1/collections/people/verify",
                       json={"image_a": b64(photos["obama"]), "image_b": b64(photos["biden"])}).json()  # fmt: skip
    assert other["same"] is False and other["distance"] > 0.6
    r = faces.post("/v1/collections/people/verify", json={"image_a": b64(photos["obama"]), "image_b": b64(blank_png())})
    assert r.status_code == 422


def test_cluster_groups_faces_by_identity(faces: TestClient, photos: dict[str, bytes]) -> None:
    names = ["obama", "obama2", "obama3", "obama_partial_face", "biden"]
    faces.put("/v1/collections/people/items", json={"items": [{"id": n, "image": b64(photos[n])} for n in names]})
    body = faces.post("/v1/collections/people/cluster", json={}).json()
    assert body["threshold"] == 0.6
    assert body["clusters"] == [{"size": 4, "ids": sorted(f"{n}#face0" for n in names[:4])}]
    assert body["unclustered"] == 1
    loose = faces.post("/v1/collections/people/cluster", json={"threshold": 0.2, "min_size": 1}).json()
    assert sum(c["size"] for c in loose["clusters"]) == 5 and len(loose["clusters"]) > 1


def test_embed_reports_each_face(faces: TestClient, photos: dict[str, bytes]) -> None:
    body = faces.post("/v1/embed", json={"encoder": "face-resnet@1",
                                        "inputs": [b64(photos["sample1"]), b64(photos["biden"])]}).json()  # fmt: skip
    assert len(body["vectors"]) == len(body["faces"]) == 4
    assert [f["input"] for f in body["faces"]] == [0, 0, 0, 1]
