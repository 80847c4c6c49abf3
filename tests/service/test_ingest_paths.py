"""One ingest path: the same raw items (text, image, face photos, records; a corrupt image and items of
the wrong kind among them) through the REST upsert, an embedded job and a Redis worker job give the
same stored vectors (as stored float32), payloads (face boxes included), kept sources and per-item
reasons, and the same thumbnails (image and face rows only). Real tiny encoders, the real face-resnet@1
zoo encoder on real photos, a real redis-server."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.families.unified import FeatureSlot, UnifiedConfig, UnifiedTowerFamily
from service.app import create_app
from service.settings import Settings
from tests.conftest import RedisServer, install_zoo_model
from tests.face_photos import load_face_photos
from tests.service.test_jobs_redis import Workers
from tests.service.test_jobs_support import IMAGE, TEXT, build_image, build_text, finished, png, wait_for

RECORD = "tiny-record@1"
FACE = "face-resnet@1"
PATHS = ("rest", "embedded", "redis")


@dataclass(frozen=True)
class Case:
    encoder: str
    keep_sources: bool
    items: list[tuple[str, str, Any, dict[str, Any] | None]]  # (id, kind, value, payload) in source order
    refused: set[str]  # items the REST upsert refuses (the request, atomic); the jobs fail them alone
    failed: set[str]  # items no path writes (refused ones, and face photos without a face)


@dataclass(frozen=True)
class Servers:
    apis: dict[str, TestClient]  # path -> the API it goes through
    sources: Path  # the allowed root the jobs read from


def build_record(models_dir: Path) -> EncoderSpec:
    """An untrained item tower of the Unified Embedding family: a real record encoder, made in ms."""
    torch.manual_seed(0)
    slots = (FeatureSlot("d", "item:d", 2, 0, 64), FeatureSlot("dept", "item:dept", 1, 0, 64))
    model = UnifiedConfig(table_rows=64, emb_dim=4, hidden=16, dim=8, item=slots)
    name, version = RECORD.split("@")
    spec = EncoderSpec(name=name, version=version, family="unified-embedding", modality="record", dim=8,
                       config={"model": model.to_json(), "tower": "item"})  # fmt: skip
    family = UnifiedTowerFamily(spec)
    return write_artifact(family, family.build_module(), models_dir / RECORD)


def corrupt_png() -> bytes:
    """A PNG cut in half: its header passes the upfront checks, decoding fails in preprocessing."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()[:1500]


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (160, 160), (90, 140, 200)).save(out, format="PNG")
    return out.getvalue()


def cases(photos: dict[str, bytes]) -> dict[str, Case]:
    bad = corrupt_png()
    return {
        "text": Case(TEXT, True, [
            ("t1", "text", "a red heart on white", {"n": 1}),
            ("rec", "record", {"d": "1", "dept": "2"}, None),  # not what a text encoder takes
            ("t2", "text", "a cat face", None),
        ], {"rec"}, {"rec"}),
        "image": Case(IMAGE, True, [
            ("i1", "image", png(1), {"n": 1}),
            ("broken", "image", bad, {"n": 2}),
            ("i2", "image", png(2), None),
            ("words", "text", "a red circle", None),
        ], {"broken", "words"}, {"broken", "words"}),
        "face": Case(FACE, False, [  # face collections keep no sources: one photo gives several items
            ("obama", "image", photos["obama"], {"who": "obama"}),
            ("group", "image", photos["sample1"], None),
            ("sky", "image", blank_png(), None),  # no face: REST's `skipped`, a job's failure
            ("broken", "image", bad, None),
        ], {"broken"}, {"broken", "sky"}),
        "record": Case(RECORD, True, [
            ("d1", "record", {"d": "1", "dept": "4", "extra": [1]}, {"n": 1}),
            ("d2", "record", {"dept": 5, "d": 2}, None),
            ("no-dept", "record", {"d": "3"}, None),  # a feature the tower needs is missing
        ], {"no-dept"}, {"no-dept"}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def photos(zoo_dirs: tuple[Path, Path]) -> dict[str, bytes]:
    return load_face_photos(zoo_dirs[1])


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path], redis_server: RedisServer
) -> Iterator[Servers]:
    """One embedded-runner server (REST and embedded jobs) and one redis-runner server with a
    ``StreamWorker``; all read the same models directory."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("paths")
    models = root / "shared" / "models"
    models.mkdir(parents=True)
    install_zoo_model("face-resnet", root / "shared", zoo_dirs)
    for build in (build_text, build_image, build_record):
        build(models)
    sources = root / "sources"
    sources.mkdir()
    prefix = f"paths-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {"models_dir": models, "allowed_roots": [sources]}
    embedded = Settings(data_dir=root / "embedded", **common)
    redis = Settings(data_dir=root / "redis", redis_url=redis_server.url, redis_prefix=prefix, job_runner="redis",
                     **common)  # fmt: skip
    clients = [TestClient(create_app(embedded)), TestClient(create_app(redis))]
    for client in clients:
        client.__enter__()
    workers = Workers(redis_server.url, prefix)
    workers.start(models)
    yield Servers({"rest": clients[0], "embedded": clients[0], "redis": clients[1]}, sources)
    workers.close()
    for client in clients:
        client.__exit__(None, None, None)


def through_rest(api: TestClient, name: str, case: Case) -> dict[str, str]:
    """Good items in one request; each refused item alone (its 4xx names it). Returns id -> reason."""

    def body(items: list[tuple[str, str, Any, dict[str, Any] | None]]) -> dict[str, Any]:
        return {"items": [{"id": i, k: base64.b64encode(v).decode() if k == "image" else v, "payload": p}
                          for i, k, v, p in items]}  # fmt: skip

    r = api.put(f"/v1/collections/{name}/items", json=body([x for x in case.items if x[0] not in case.refused]))
    assert r.status_code == 200, r.text
    reasons = {s["id"]: s["reason"] for s in r.json().get("skipped", [])}
    for item in (x for x in case.items if x[0] in case.refused):
        r = api.put(f"/v1/collections/{name}/items", json=body([item]))
        assert r.status_code in (413, 422), r.text
        message, prefix = r.json()["error"]["message"], f"item '{item[0]}': "
        assert message.startswith(prefix), message
        reasons[item[0]] = message.removeprefix(prefix)
    return reasons


def through_job(api: TestClient, name: str, case: Case, sources: Path) -> dict[str, str]:
    """A JSONL manifest (images as files beside it) as one job. Returns id -> reason."""
    folder = sources / name
    folder.mkdir()
    lines = []
    for item_id, kind, value, payload in case.items:
        if kind == "image":
            (folder / f"{item_id}.png").write_bytes(value)
            kind, value = "path", f"{item_id}.png"
        lines.append(json.dumps({"id": item_id, kind: value, "payload": payload}))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    r = api.post(
        "/v1/jobs", json={"collection": name, "source": {"type": "manifest", "path": str(folder / "items.jsonl")}}
    )
    assert r.status_code == 202, r.text
    job = wait_for(lambda: api.get(f"/v1/jobs/{r.json()['id']}").json(), finished)
    assert job["state"] == "succeeded", job
    return {e["id"]: e["reason"] for e in job["errors"]}


def stored(api: TestClient, name: str) -> dict[str, tuple[Any, ...]]:
    """id -> (vector as stored float32, payload, encoder version, kept source, thumbnail JPEG or None)."""
    collection = api.app.state.manager.get(name)  # type: ignore[attr-defined]
    ids, _ = collection.all_vectors()
    out = {}
    for item_id in ids:
        r = api.get(f"/v1/collections/{name}/items/{quote(item_id, safe='')}", params={"with_vector": True})
        item = r.json()
        vector = np.asarray(item["vector"], dtype=np.float32).tobytes()
        kept = collection.sources.get(item_id) if collection.sources is not None else None
        thumb = api.get(f"/v1/collections/{name}/thumbnails/{quote(item_id, safe='')}")
        assert thumb.status_code in (200, 404), thumb.text
        jpeg = thumb.content if thumb.status_code == 200 else None
        out[item_id] = (vector, item["payload"], item["encoder_version"], kept, jpeg)
    return out


@pytest.mark.parametrize("kind", ["text", "image", "face", "record"])
def test_same_items_same_rows_and_reasons_on_every_path(kind: str, servers: Servers, photos: dict[str, bytes]) -> None:
    case = cases(photos)[kind]
    seen: dict[str, tuple[dict[str, tuple[Any, ...]], dict[str, str]]] = {}
    for path in PATHS:
        api, name = servers.apis[path], f"{kind}-{path}"
        r = api.post("/v1/collections", json={"name": name, "encoder": case.encoder, "keep_sources": case.keep_sources})
        assert r.status_code == 201, r.text
        reasons = through_rest(api, name, case) if path == "rest" else through_job(api, name, case, servers.sources)
        seen[path] = (stored(api, name), reasons)
    rows, reasons = seen["rest"]
    assert set(reasons) == case.failed and all(reasons.values())
    written = {x[0] for x in case.items} - case.failed
    if kind == "face":
        assert {i.split("#face")[0] for i in rows} == written and len(rows) == 4  # obama: 1 face, group: 3
        for item_id, (_, payload, _, kept, jpeg) in rows.items():
            assert payload["source_id"] == item_id.split("#")[0] and len(payload["face"]["box"]) == 4
            assert payload["face"]["score"] > 0.5 and kept is None
            assert jpeg is not None and jpeg.startswith(b"\xff\xd8")  # every face row shows its photo
    else:
        assert set(rows) == written and all(kept is not None for *_, kept, _ in rows.values())
        pictures = [jpeg is not None for *_, jpeg in rows.values()]
        assert all(pictures) if kind == "image" else not any(pictures)  # thumbnails of image items only
    for path in ("embedded", "redis"):
        assert seen[path][1] == reasons, path
        assert seen[path][0].keys() == rows.keys(), path
        for item_id, row in rows.items():
            assert seen[path][0][item_id] == row, (path, item_id)
