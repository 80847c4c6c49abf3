"""The ``record`` modality over HTTP: a two-tower Unified Embedding model trained on real InstEval
ratings (tiny config), lecturers upserted as records, searched with a student's record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.core.encoder import encode
from models.core.registry import load_encoder
from models.data.insteval import Interactions, load_insteval
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config
from tests.models.training.test_unified import insteval_data_dir
from tests.service.conftest import MakeClient

torch.set_num_threads(1)
QUERY, ITEM = "unified-tiny-query@1", "unified-tiny-item@1"


@pytest.fixture(scope="module")
def towers(zoo_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Interactions]:
    """(models dir holding both towers, the interactions they were trained on)."""
    root = tmp_path_factory.mktemp("records")
    data_dir, out = insteval_data_dir(zoo_dirs, root / "data"), root / "models"
    config = load_config("unified-tiny")
    recipe("unified").train(TrainRequest(config=config, out=out, data_dir=data_dir, progress=False))
    return out, load_insteval(data_dir / "cache", limit=config["limit"])


@pytest.fixture
def api(make_client: MakeClient, towers: tuple[Path, Interactions]) -> TestClient:
    return make_client(models_dir=towers[0])


def _lecturers(api: TestClient, data: Interactions) -> None:
    r = api.post("/v1/collections", json={"name": "lecturers", "encoder": ITEM})
    assert r.status_code == 201, r.text
    assert r.json()["metric"] == "cosine"
    items = [{"id": f"d{rec['d']}", "record": rec, "payload": {"dept": rec["dept"]}} for rec in data.items]
    for start in range(0, len(items), 100):
        r = api.put("/v1/collections/lecturers/items", json={"items": items[start : start + 100]})
        assert r.status_code == 200 and r.json() == {"upserted": len(items[start : start + 100])}, r.text


def test_student_record_finds_the_lecturers_the_towers_rank_first(
    api: TestClient, towers: tuple[Path, Interactions]
) -> None:
    out, data = towers
    _lecturers(api, data)
    query_tower, item_tower = load_encoder(out / QUERY), load_encoder(out / ITEM)
    item_vectors = encode(item_tower, data.items)
    for student in data.queries[:5]:
        r = api.post("/v1/collections/lecturers/search", json={"record": student, "k": 10})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert len(hits) == 10 and all(h["encoder_version"] == ITEM for h in hits)
        expected = item_vectors @ encode(query_tower, [student])[0]
        order = np.argsort(-expected, kind="stable")[:10]
        assert [h["id"] for h in hits] == [f"d{data.items[i]['d']}" for i in order]
        assert [h["score"] for h in hits] == pytest.approx(expected[order].tolist(), abs=1e-5)
    # integers and strings name the same category; fields the query tower does not use are ignored
    as_ints = {"s": int(data.queries[0]["s"]), "studage": int(data.queries[0]["studage"]), "note": [1, 2]}
    r1 = api.post("/v1/collections/lecturers/search", json={"record": as_ints, "k": 3}).json()
    r2 = api.post("/v1/collections/lecturers/search", json={"record": data.queries[0], "k": 3}).json()
    assert [h["id"] for h in r1["results"]] == [h["id"] for h in r2["results"]]
    # the stored vector of a lecturer is its item-tower vector
    r = api.post("/v1/collections/lecturers/search", json={"vector": item_vectors[0].tolist(), "k": 1})
    assert r.json()["results"][0]["id"] == f"d{data.items[0]['d']}" and r.json()["results"][0]["score"] > 0.9999


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"record": {"s": "1"}}, "feature 'studage' is missing"),
        ({"record": {"s": 1.5, "studage": "2"}}, "must be a string or an integer, got float"),
        ({"record": {"s": None, "studage": "2"}}, "got NoneType"),
        ({"record": {"s": {"x": 1}, "studage": "2"}}, "got dict"),
        ({"record": ["1", "2"]}, "record"),
        ({"record": {"s": "1", "studage": "2"}, "text": "hello"}, "exactly one of"),
        ({"text": "a lecturer I liked"}, "takes record input, not text"),
    ],
)
def test_bad_records_are_422_with_a_clear_message(
    api: TestClient, towers: tuple[Path, Interactions], body: dict[str, Any], message: str
) -> None:
    assert api.post("/v1/collections", json={"name": "lecturers", "encoder": ITEM}).status_code == 201
    r = api.post("/v1/collections/lecturers/search", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]


def test_bad_item_records_and_records_for_other_modalities_are_422(
    api: TestClient, towers: tuple[Path, Interactions]
) -> None:
    api.post("/v1/collections", json={"name": "lecturers", "encoder": ITEM})
    r = api.put("/v1/collections/lecturers/items", json={"items": [{"id": "x", "record": {"d": "1"}}]})
    assert r.status_code == 422 and "feature 'dept' is missing" in r.json()["error"]["message"]
    r = api.put("/v1/collections/lecturers/items", json={"items": [{"id": "x", "record": {"d": 1, "dept": True}}]})
    assert r.status_code == 422 and "got bool" in r.json()["error"]["message"]
    api.post("/v1/collections", json={"name": "plain", "dim": 16})
    r = api.post("/v1/collections/plain/search", json={"record": {"s": "1", "studage": "2"}})
    assert r.status_code == 422 and "has no encoder" in r.json()["error"]["message"]


def test_embed_takes_records_for_record_encoders(api: TestClient, towers: tuple[Path, Interactions]) -> None:
    out, data = towers
    r = api.post("/v1/embed", json={"encoder": QUERY, "inputs": data.queries[:3]})
    assert r.status_code == 200, r.text
    expected = encode(load_encoder(out / QUERY), data.queries[:3])
    np.testing.assert_allclose(np.asarray(r.json()["vectors"]), expected, atol=1e-5)
    r = api.post("/v1/embed", json={"encoder": QUERY, "inputs": ["a student"]})
    assert r.status_code == 422 and "records (JSON objects)" in r.json()["error"]["message"]
    r = api.post("/v1/embed", json={"encoder": QUERY, "inputs": [{"studage": "2"}]})
    assert r.status_code == 422, r.text
