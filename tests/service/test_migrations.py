"""Must-show 3, end to end through the API with real Fashion-MNIST CNNs (fmnist-cnn family):
a v1 gallery, a refused incompatible migration, the compatibility gate, a migration to a compatible
v2 without backfill, v2 queries finding v1 items, new items stored as v2, rollback, restart.

The models: v1 is the tiny old model of the BT² protocol (``fmnist-tiny-old``: 5 classes, one short
epoch). A few seconds of training cannot make a *trained* compatible model beat v1 on v1's own
gallery (measured: OCA/BCT/BT² tiny runs reach new/old top-1 0.24-0.52 against old/old 0.58-0.69),
so v2 is built the BT² way with the old part frozen: v1's backbone and projection give its first 32
dims exactly, 8 extra dims come from another projection of the same features. Its new/old equals
old/old — compatible, but not *better*, so the gate (new/old > old/old, strict) refuses it until
forced; that is asserted too. The trained compatible models are the models side's table (bench/compat.py).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from models.core.export import write_artifact
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily
from models.training.fmnist import FmnistRecipe
from models.training.recipe import TrainRequest
from models.training.run import load_config
from service.app import create_app
from service.cli.main import app as cli_app
from service.settings import Settings
from tests.service.conftest import MakeClient
from tests.service.test_cli import _free_port

V1, V2, OTHER = "fmnist-tiny@1", "fmnist-tiny@2", "fmnist-other@1"
EXTRA = 8


@pytest.fixture(scope="module")
def fmnist(zoo_dirs: tuple[Path, Path]) -> FashionMNIST:
    return load_fashion_mnist(zoo_dirs[1])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path], fmnist: FashionMNIST) -> Path:
    """v1 (trained), v2 (v1 + 8 extra dims, compatible by construction), and an unrelated model."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fm")
    data_dir, out = root / "data", root / "models"
    (data_dir / "cache").mkdir(parents=True)
    (data_dir / "cache" / "fashion-mnist").symlink_to(zoo_dirs[1] / "fashion-mnist")
    config = {**load_config("fmnist-tiny-old"), "eval_items": 20}
    request = TrainRequest(config=config, out=out, device="cpu", data_dir=data_dir, progress=False)
    v1_dir = FmnistRecipe().train(request).artifact
    v1 = load_encoder(v1_dir)
    channels = list(v1.spec.config["channels"])
    old = FmnistCNN(FmnistCNNConfig(channels=tuple(channels), dim=v1.spec.dim))
    old.load_state_dict(load_file(v1_dir / "model.safetensors"))
    new = FmnistCNN(FmnistCNNConfig(channels=tuple(channels), dim=v1.spec.dim + EXTRA))
    new.features.load_state_dict(old.features.state_dict())
    extra = torch.nn.Linear(old.proj.in_features, EXTRA)
    torch.manual_seed(1)
    torch.nn.init.orthogonal_(extra.weight)
    with torch.no_grad():
        new.proj.weight.copy_(torch.cat([old.proj.weight, extra.weight]))
        new.proj.bias.copy_(torch.cat([old.proj.bias, torch.zeros(EXTRA)]))
    width = v1.spec.dim + EXTRA
    config = {"recipe": "fmnist", "channels": channels, "dim": width, "basis": False}
    spec = EncoderSpec(name="fmnist-tiny", version="2", family="fmnist-cnn", modality="image", dim=width,
                       compatible_with=V1, compat_dims=v1.spec.dim, config=config)  # fmt: skip
    write_artifact(FmnistCNNFamily(spec), new.eval(), out / V2)
    torch.manual_seed(2)
    other = FmnistCNN(FmnistCNNConfig(channels=tuple(channels), dim=v1.spec.dim))  # same width, unrelated space
    config = {"channels": channels, "dim": v1.spec.dim, "basis": False}
    other_spec = EncoderSpec(name="fmnist-other", version="1", family="fmnist-cnn", modality="image",
                             dim=v1.spec.dim, config=config)  # fmt: skip
    write_artifact(FmnistCNNFamily(other_spec), other.eval(), out / OTHER)
    return out


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def sample(fmnist: FashionMNIST, n: int, offset: int = 0) -> tuple[list[str], list[int]]:
    """``n`` test images spread evenly over the classes (as base64 PNG) and their labels."""
    idx = np.argsort(fmnist.test_labels, kind="stable")[:: len(fmnist.test_labels) // n][:n] + offset
    return [png(fmnist.test_images[i]) for i in idx], [int(fmnist.test_labels[i]) for i in idx]


def gallery_items(prefix: str, images: list[str], labels: list[int]) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "image": im, "payload": {"label": y}}
            for i, (im, y) in enumerate(zip(images, labels, strict=True))]  # fmt: skip


def top1(client: TestClient, images: list[str], labels: list[int]) -> tuple[float, list[str]]:
    """Leave-self-out top-1 through the API: query i's best hit other than item i has its label."""
    correct, versions = 0, []
    for start in range(0, len(images), 64):
        queries = [{"image": im, "k": 2} for im in images[start : start + 64]]
        r = client.post("/v1/collections/fm/search/batch", json={"queries": queries})
        assert r.status_code == 200, r.text
        for i, hits in enumerate(r.json()["results"], start):
            best = next(h for h in hits if h["id"] != f"g{i}")
            correct += best["payload"]["label"] == labels[i]
            versions.append(best["encoder_version"])
    return correct / len(images), versions


def migrate(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/collections/fm/migrations", json=body)


def test_migration_end_to_end(make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST) -> None:
    shutil.copytree(models_dir, tmp_path / "data" / "models")
    client = make_client()
    assert client.post("/v1/collections", json={"name": "fm", "encoder": V1}).status_code == 201
    images, labels = sample(fmnist, 200)
    items = gallery_items("g", images, labels)
    assert client.put("/v1/collections/fm/items", json={"items": items}).json()["upserted"] == 200
    old_old, _ = top1(client, images, labels)
    assert client.put("/v1/collections/fm/eval-set", json={"inputs": images, "labels": labels}).json()["size"] == 200

    refused = migrate(client, to=OTHER, force=True)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "migration_refused"
    assert "not compatible" in refused.json()["error"]["message"] and V1 in refused.json()["error"]["message"]

    gated = migrate(client, to=V2)  # new/old == old/old: compatible, but the criterion wants better
    assert gated.status_code == 409 and "compatibility gate failed" in gated.json()["error"]["message"]
    assert client.get("/v1/collections/fm").json()["encoder"] == V1

    done = migrate(client, to=V2, force=True, backfill="none")
    assert done.status_code == 201, done.text
    entry = done.json()["migration"]
    report = entry["reports"][V1]
    assert entry["gate"] == "forced" and entry["eval_source"] == "collection" and report["compat_dims"] == 32
    assert report["old_old"]["top1"] == pytest.approx(old_old, abs=1e-9)  # the API agrees with the report
    info = client.get("/v1/collections/fm").json()
    assert (info["encoder"], info["dim"]) == (V2, 40)

    new_old, versions = top1(client, images, labels)  # v2 queries, v1 gallery
    assert new_old >= old_old and set(versions) == {V1}

    fresh, fresh_labels = sample(fmnist, 20, offset=1)
    added = gallery_items("n", fresh, fresh_labels)
    assert client.put("/v1/collections/fm/items", json={"items": added}).json()["upserted"] == 20
    assert client.get("/v1/collections/fm/items/n0").json()["encoder_version"] == V2
    hits = client.post("/v1/collections/fm/search", json={"image": fresh[0], "k": 5}).json()["results"]
    assert hits[0]["id"] == "n0" and hits[0]["encoder_version"] == V2
    mixed = client.post("/v1/collections/fm/search", json={"image": images[0], "k": 50}).json()["results"]
    assert {h["encoder_version"] for h in mixed} == {V1, V2}
    assert [h["score"] for h in mixed] == sorted((h["score"] for h in mixed), reverse=True)
    segments = {s["encoder_version"]: s for s in client.get("/v1/collections/fm/migrations").json()["segments"]}
    assert (segments[V1]["dim"], segments[V1]["indexed"]) == (32, 200)
    assert (segments[V2]["dim"], segments[V2]["indexed"]) == (40, 20)

    back = client.post("/v1/collections/fm/migrations/rollback")
    assert back.status_code == 201 and back.json()["active"] == V1
    assert back.json()["migration"]["unsearchable"] == {V2: 20}
    after, versions = top1(client, images, labels)
    assert after == pytest.approx(old_old) and set(versions) == {V1}
    history = client.get("/v1/collections/fm/migrations").json()
    assert [(h["kind"], h["from"], h["to"]) for h in history["history"]] == [("migrate", V1, V2), ("rollback", V2, V1)]
    assert history["active"] == V1 and history["versions"] == {V1: 200, V2: 20}
    assert migrate(client, rollback=True).status_code == 422  # nothing left to roll back


def test_mixed_collection_survives_restart(
    make_client: MakeClient, tmp_path: Path, models_dir: Path, fmnist: FashionMNIST
) -> None:
    shutil.copytree(models_dir, tmp_path / "data" / "models")
    client = make_client()
    client.post("/v1/collections", json={"name": "fm", "encoder": V1})
    images, labels = sample(fmnist, 40)
    items = gallery_items("g", images, labels)
    client.put("/v1/collections/fm/items", json={"items": items[:30]})
    assert migrate(client, to=V2).status_code == 409  # no evaluation set, no card report: refused unless forced
    assert migrate(client, to=V2, force=True).json()["migration"]["eval_source"] == "missing"
    client.put("/v1/collections/fm/items", json={"items": items[30:]})
    before = client.post("/v1/collections/fm/search", json={"image": images[3], "k": 40}).json()["results"]
    client.__exit__(None, None, None)  # a clean stop; crash recovery of segments: tests/indexer/test_segments.py
    again = make_client()
    info = again.get("/v1/collections/fm").json()
    assert (info["encoder"], info["dim"], info["count"]) == (V2, 40, 40)
    after = again.post("/v1/collections/fm/search", json={"image": images[3], "k": 40}).json()["results"]
    assert [(h["id"], h["encoder_version"]) for h in after] == [(h["id"], h["encoder_version"]) for h in before]
    assert len(again.get("/v1/collections/fm/migrations").json()["history"]) == 1


def test_migrate_command(
    tmp_path: Path, models_dir: Path, fmnist: FashionMNIST, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(models_dir, tmp_path / "data" / "models")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(data_dir=tmp_path / "data")), host="127.0.0.1",
                                           port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("ERS_URL", url)
        httpx.post(f"{url}/v1/collections", json={"name": "fm", "encoder": V1}).raise_for_status()
        images, labels = sample(fmnist, 30)
        httpx.put(f"{url}/v1/collections/fm/items", json={"items": gallery_items("g", images, labels)},
                  timeout=60).raise_for_status()  # fmt: skip
        eval_file = tmp_path / "eval.json"
        eval_file.write_text(json.dumps({"inputs": images, "labels": labels}))
        runner = CliRunner()
        r = runner.invoke(cli_app, ["migrate", "fm", "--to", OTHER])
        assert r.exit_code == 1 and "not compatible" in r.output
        r = runner.invoke(cli_app, ["migrate", "fm", "--to", V2, "--eval", str(eval_file)])
        assert r.exit_code == 1 and "compatibility gate failed" in r.output
        r = runner.invoke(cli_app, ["migrate", "fm", "--to", V2, "--eval", str(eval_file), "--force"])
        assert r.exit_code == 0, r.output
        assert "new/old" in r.output and f"fm now queries with {V2}" in r.output
        r = runner.invoke(cli_app, ["migrate", "fm", "--history"])
        assert r.exit_code == 0 and f"active encoder: {V2}" in r.output and "gate: forced" in r.output
        r = runner.invoke(cli_app, ["migrate", "fm", "--rollback"])
        assert r.exit_code == 0 and f"fm now queries with {V1}" in r.output
        assert runner.invoke(cli_app, ["migrate", "fm"]).exit_code == 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)
