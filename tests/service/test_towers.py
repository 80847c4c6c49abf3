"""Multi-tower encoders over HTTP: a collection bound to a two-branch model's image tower holds
emoji images and answers text queries through the model's text tower (``spec.config["towers"]``)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.core.encoder import encode
from models.core.registry import load_encoder
from models.data.pairs import PairItem, emoji_pairs
from models.training.recipe import TrainRequest
from models.training.run import load_config
from models.training.two_branch import TwoBranchRecipe
from service.runtime.embedding import query_encoder_key
from tests.conftest import install_zoo_model
from tests.service.conftest import MakeClient

N = 100  # emoji concepts: the model is trained on their Google-style drawings and names, then indexed


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> tuple[Path, list[PairItem]]:
    """A small two-branch model trained for a few seconds on N emojis; its models directory."""
    torch.set_num_threads(1)
    config = load_config("two-branch-tiny")
    config["data"] = {"source": "emoji", "limit": N}
    config["train"] = {**config["train"], "epochs": 30, "batch_size": 50}
    out = tmp_path_factory.mktemp("towers") / "models"
    data_dir = zoo_dirs[1].parent  # the session's emoji cache is <zoo root>/cache
    TwoBranchRecipe().train(TrainRequest(config=config, out=out, data_dir=data_dir, progress=False))
    return out, emoji_pairs(data_dir / "cache", N, "google")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bound_to_image_tower(make_client: MakeClient, models: Path, items: list[PairItem]) -> TestClient:
    client = make_client(models_dir=models)
    r = client.post("/v1/collections", json={"name": "emoji", "encoder": "emoji2b-tiny-image@1"})
    assert r.status_code == 201, r.text
    body = {"items": [{"id": it.key, "image": b64(it.image), "payload": {"name": it.captions[0]}} for it in items]}
    assert client.put("/v1/collections/emoji/items", json=body).json() == {"upserted": len(items)}
    return client


def test_a_text_query_searches_images_through_the_text_tower(
    make_client: MakeClient, towers: tuple[Path, list[PairItem]]
) -> None:
    models, items = towers
    client = bound_to_image_tower(make_client, models, items)
    image_tower = load_encoder(models / "emoji2b-tiny-image@1", backend="onnx")
    text_tower = load_encoder(models / "emoji2b-tiny-text@1", backend="onnx")
    assert query_encoder_key(image_tower.spec, "text") == "emoji2b-tiny-text@1"
    assert query_encoder_key(image_tower.spec, "image") == "emoji2b-tiny-image@1"
    gallery = encode(image_tower, [it.image for it in items])
    found_in_top5 = 0
    for item in items[::5]:  # 20 names
        res = client.post("/v1/collections/emoji/search", json={"text": item.captions[0], "k": 5})
        assert res.status_code == 200, res.text
        ids = [hit["id"] for hit in res.json()["results"]]
        # The service ranks exactly as the towers' own vectors do.
        expected = np.argsort(-(gallery @ encode(text_tower, [item.captions[0]])[0]), kind="stable")[:5]
        assert ids[:3] == [items[i].key for i in expected[:3]]
        found_in_top5 += item.key in ids
    # 20 names among 100 images: chance puts 1 of them in the top 5; the trained model most.
    assert found_in_top5 >= 12, found_in_top5


def test_an_image_query_still_uses_the_image_tower(
    make_client: MakeClient, towers: tuple[Path, list[PairItem]]
) -> None:
    models, items = towers
    client = bound_to_image_tower(make_client, models, items[:20])
    res = client.post("/v1/collections/emoji/search", json={"image": b64(items[3].image), "k": 1})
    assert res.status_code == 200, res.text
    assert res.json()["results"][0]["id"] == items[3].key


def test_text_query_against_a_single_tower_image_encoder_is_a_clear_422(
    make_client: MakeClient, tmp_path: Path, zoo_dirs: tuple[Path, Path]
) -> None:
    key = install_zoo_model("effnet-lite0", tmp_path / "data", zoo_dirs)
    client = make_client()
    assert client.post("/v1/collections", json={"name": "pics", "encoder": key}).status_code == 201
    res = client.post("/v1/collections/pics/search", json={"text": "red heart", "k": 3})
    assert res.status_code == 422
    assert "takes image input, not text" in res.text


def test_a_tower_of_another_dimension_is_refused(
    make_client: MakeClient, towers: tuple[Path, list[PairItem]], tmp_path: Path
) -> None:
    """A spec naming a text tower whose vectors do not fit the collection's is a clear error, not a crash."""
    import shutil

    from models.core.artifact import write_manifest
    from models.core.spec import EncoderSpec

    models = towers[0]
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    text_dir = copy / "emoji2b-tiny-text@1"
    spec: dict[str, Any] = EncoderSpec.load(text_dir).to_json()
    spec["dim"] = 32
    EncoderSpec.from_json(spec).save(text_dir)
    write_manifest(text_dir)
    client = make_client(models_dir=copy)
    assert client.post("/v1/collections", json={"name": "emoji", "encoder": "emoji2b-tiny-image@1"}).status_code == 201
    res = client.post("/v1/collections/emoji/search", json={"text": "red heart", "k": 3})
    assert res.status_code == 422
    assert "not towers of one model" in res.text
