"""Issue 14, per encoder family: ``ers train`` trains v1 and a backward-compatible v2 on real data
(tiny configs), and the upgrade runs through the API (``tests.service.compat_flow``): REST cross-test
figures equal to ``ers compat``'s, v2 queries on the v1 gallery, a mixed gallery, an exact rollback.

FaceNet: emoji concepts as identities (Google's and Twitter's drawing of each), 64 held-out concepts
(128 images) as the evaluation items. v2 is OCA (extra dims behind an orthogonal basis) trained twice
as long as v1 on the same training identities.

Unified: the item tower is the gallery; user records search it with the query tower. The items'
own report (lecturers, labelled by department) is what the migration's gate measures; REST searches
by user records follow ``ers compat --queries`` (each student labelled by the department of the first
lecturer they rated).

Two-branch and ConVIRT: the image (gallery) tower is what a collection stores; v2's image *and* text
towers are trained to search v1's image vectors. Two-branch items: both drawings of 40 concepts,
labelled by concept; ConVIRT items: the held-out concepts' drawings, labelled by category. After the
migration, v2 text queries on the v1 gallery must return what the v2 text tower's prefix finds among
the v1 image vectors offline.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from models.core.spec import EncoderSpec
from models.data.identities import load_emoji_identities, split_by_identity
from models.training.run import load_config
from service.cli.main import app as cli_app
from tests.service.compat_flow import EvalItems, offline_report, upgrade_through_the_api
from tests.service.conftest import MakeClient

FACE_V1, FACE_V2 = "facenet-tiny@1", "facenet-tiny@2"
TB = "emoji2b-tiny"
TB_V1, TB_V2, TB_TEXT_V2 = f"{TB}-image@1", f"{TB}-image@2", f"{TB}-text@2"
UN = "unified-tiny"
UN_V1, UN_V2 = f"{UN}-item@1", f"{UN}-item@2"
CV = "convirt-tiny"
CV_V1, CV_V2, CV_TEXT_V2 = f"{CV}-image@1", f"{CV}-image@2", f"{CV}-text@2"


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def image_items(images: list[np.ndarray], labels: list[str]) -> EvalItems:
    files = [png(im) for im in images]
    return EvalItems("image", [base64.b64encode(f).decode() for f in files], labels, files)


def ers_train(*args: str) -> None:
    result = CliRunner().invoke(cli_app, ["train", *args, "--device", "cpu"])
    assert result.exit_code == 0, result.output


def train_pair(factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path], family: str, config: str,
               old_key: str, v2: dict[str, object]) -> Path:  # fmt: skip
    """``ers train FAMILY`` v1 from the shipped ``config``, then an OCA-compatible v2 (``config`` with
    ``v2`` over it) against the v1 artifact ``old_key``; the models directory."""
    torch.set_num_threads(1)
    root = factory.mktemp(f"{family}-compat")
    (root / "data").mkdir()
    (root / "data" / "cache").symlink_to(zoo_dirs[1])
    models = root / "models"
    common = ["--out", str(models), "--data-dir", str(root / "data")]
    ers_train(family, "--config", config, *common)
    (root / "v2.yaml").write_text(yaml.safe_dump({**load_config(config), **v2}))
    ers_train(family, "--config", str(root / "v2.yaml"), *common,
              "--compatible-with", str(models / old_key), "--method", "oca")  # fmt: skip
    return models


@pytest.fixture(scope="module")
def face_models(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    """``facenet-tiny@1`` and its OCA-compatible ``facenet-tiny@2``, trained with ``ers train``."""
    v2 = {"version": "2", "epochs": 6, "d_extra": 16}  # twice the training
    return train_pair(tmp_path_factory, zoo_dirs, "facenet", "facenet-tiny", FACE_V1, v2)


def install(models: Path, keys: tuple[str, ...], tmp_path: Path) -> None:
    """The artifacts in the test server's models directory."""
    models_dir = tmp_path / "data" / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for key in keys:
        shutil.copytree(models / key, models_dir / key)


def test_facenet_v2_is_declared_compatible_with_extra_dims(face_models: Path) -> None:
    spec = EncoderSpec.load(face_models / FACE_V2)
    assert (spec.compatible_with, spec.compat_dims, spec.dim) == (FACE_V1, 128, 144)
    assert spec.config["network"]["basis"] is True


def test_facenet_upgrade_through_the_api(
    face_models: Path, zoo_dirs: tuple[Path, Path], make_client: MakeClient, tmp_path: Path
) -> None:
    cfg = load_config("facenet-tiny")
    data = load_emoji_identities(zoo_dirs[1], cfg["image_size"], cfg["limit"])
    train, test = split_by_identity(data, cfg["holdout"], cfg.get("split_seed", 0))
    items = image_items(list(test.crops), [test.names[y] for y in test.labels])
    extra = image_items(list(train.crops[:6]), [train.names[y] for y in train.labels[:6]])
    report = offline_report(face_models / FACE_V1, face_models / FACE_V2, items, tmp_path / "eval")
    assert report["compat_dims"] == 128 and report["n"] == len(items.values) == 128
    install(face_models, (FACE_V1, FACE_V2), tmp_path)
    upgrade_through_the_api(make_client(), FACE_V1, FACE_V2, items, extra, report)


@pytest.fixture(scope="module")
def two_branch_models(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    """``emoji2b-tiny`` v1 and an OCA-compatible v2 (twice the epochs, 16 extra dims), with ``ers train``."""
    train = load_config("two-branch-tiny")["train"]
    v2 = {"version": "2", "train": {**train, "epochs": 8}, "compat": {"d_extra": 16}}
    return train_pair(tmp_path_factory, zoo_dirs, "two-branch", "two-branch-tiny", TB_V1, v2)


def test_two_branch_v2_towers_are_declared_compatible_with_the_old_image_tower(two_branch_models: Path) -> None:
    for key in (TB_V2, TB_TEXT_V2):
        spec = EncoderSpec.load(two_branch_models / key)
        assert (spec.compatible_with, spec.compat_dims, spec.dim) == (TB_V1, 64, 80)
        assert spec.config["compatible_tower"] == "image" and spec.config["towers"]["text"] == TB_TEXT_V2


def image_text_upgrade(
    models: Path,
    towers: tuple[str, str, str, str],
    files: list[bytes],
    labels: list[str],
    captions: list[str],
    later: list[bytes],
    client: MakeClient,
    tmp_path: Path,
) -> None:
    """The upgrade of an image collection from image tower v1 to v2 (``towers``: image v1, text v1,
    image v2, text v2), through ``compat_flow``; after the migration, v2 text queries on the v1 gallery
    must return what the v2 text tower's prefix finds among the v1 image vectors offline."""
    from models.core.encoder import encode
    from models.core.registry import load_encoder

    v1, _, v2, text_v2 = towers
    items = EvalItems("image", [base64.b64encode(f).decode() for f in files], labels, files)
    extra = EvalItems("image", [base64.b64encode(f).decode() for f in later], ["later"] * len(later))
    report = offline_report(models / v1, models / v2, items, tmp_path / "eval")
    d_old = EncoderSpec.load(models / v1).dim
    assert report["compat_dims"] == d_old and report["n"] == len(files)
    gallery = encode(load_encoder(models / v1), files)  # (n, d_old) v1 image vectors
    queries = encode(load_encoder(models / text_v2), captions)[:, :d_old]  # v2 text, on v1's dims
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    expected = [f"g{j}" for j in np.argmax(queries @ gallery.T, axis=1)]

    def text_queries_search_the_v1_gallery(api: TestClient) -> None:
        found = []
        for caption in captions:
            hits = api.post("/v1/collections/c/search", json={"text": caption, "k": 1}).json()["results"]
            assert hits[0]["encoder_version"] == v1
            found.append(hits[0]["id"])
        assert found == expected

    install(models, towers, tmp_path)
    upgrade_through_the_api(client(), v1, v2, items, extra, report, text_queries_search_the_v1_gallery)


def test_two_branch_upgrade_through_the_api(
    two_branch_models: Path, zoo_dirs: tuple[Path, Path], make_client: MakeClient, tmp_path: Path
) -> None:
    from models.data.pairs import load_pair_data

    data = load_pair_data("emoji", zoo_dirs[1], load_config("two-branch-tiny")["data"]["limit"], None, 0.1, 0)
    drawn = {it.key: it for it in data.train}
    pairs = [(it, drawn[it.key]) for it in data.eval if it.key in drawn][:40]
    files = [item.image for pair in pairs for item in pair]  # Twitter's and Google's drawing of each concept
    labels = [pair[0].key for pair in pairs for _ in pair]
    captions = [pair[0].captions[0] for pair in pairs[:20]]
    towers = (TB_V1, f"{TB}-text@1", TB_V2, TB_TEXT_V2)
    later = [it.image for it in data.train[-4:]]  # written after the migration: stored as v2
    image_text_upgrade(two_branch_models, towers, files, labels, captions, later, make_client, tmp_path)


@pytest.fixture(scope="module")
def convirt_models(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    """``convirt-tiny`` v1 and an OCA-compatible v2 (twice the epochs, 16 extra dims), with ``ers train``."""
    v2 = {"version": "2", "epochs": 6, "compat": {"d_extra": 16}}
    return train_pair(tmp_path_factory, zoo_dirs, "convirt", "convirt-tiny", CV_V1, v2)


def test_convirt_upgrade_through_the_api(
    convirt_models: Path, zoo_dirs: tuple[Path, Path], make_client: MakeClient, tmp_path: Path
) -> None:
    """Held-out emoji concepts (Twitter's drawings) labelled by category, as ConVIRT's P@k is scored."""
    from models.data.convirt_pairs import load_pairs

    for key in (CV_V2, CV_TEXT_V2):
        spec = EncoderSpec.load(convirt_models / key)
        assert (spec.compatible_with, spec.compat_dims, spec.dim) == (CV_V1, 64, 80)
    data_dir = tmp_path / "pairs"
    data_dir.mkdir()
    (data_dir / "cache").symlink_to(zoo_dirs[1])
    cfg = load_config("convirt-tiny")
    data = load_pairs("emoji", cfg["limit"], cfg["test_percent"], cfg["label"], data_dir)
    towers = (CV_V1, f"{CV}-text@1", CV_V2, CV_TEXT_V2)
    later = data.train_images[0][:1] + data.train_images[1][:1]
    image_text_upgrade(convirt_models, towers, data.gallery, data.gallery_labels, data.texts[:20], later,
                       make_client, tmp_path)  # fmt: skip


@pytest.fixture(scope="module")
def unified_models(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    """``unified-tiny`` v1 and an OCA-compatible v2 (twice the epochs, 8 extra dims), with ``ers train``."""
    v2 = {"version": "2", "epochs": 8, "compat": {"d_extra": 8}}
    return train_pair(tmp_path_factory, zoo_dirs, "unified", UN, UN_V1, v2)


def test_unified_upgrade_through_the_api(
    unified_models: Path, zoo_dirs: tuple[Path, Path], make_client: MakeClient, tmp_path: Path
) -> None:
    from models.data.insteval import load_insteval

    for key in (UN_V2, f"{UN}-query@2"):
        spec = EncoderSpec.load(unified_models / key)
        assert (spec.compatible_with, spec.compat_dims, spec.dim) == (UN_V1, 16, 24)
        assert spec.config["compatible_tower"] == "item"
    data = load_insteval(zoo_dirs[1], load_config(UN)["limit"])
    items = EvalItems("record", list(data.items), [str(r["dept"]) for r in data.items])
    first_item = {int(q): int(i) for q, i in reversed(list(zip(data.query_index, data.item_index, strict=True)))}
    students = sorted(first_item)[:40]
    queries = EvalItems("record", [data.queries[q] for q in students],
                        [str(data.items[first_item[q]]["dept"]) for q in students])  # fmt: skip
    report = offline_report(unified_models / UN_V1, unified_models / UN_V2, items, tmp_path / "items")
    by_users = offline_report(unified_models / UN_V1, unified_models / UN_V2, items, tmp_path / "users", queries)
    assert report["compat_dims"] == by_users["compat_dims"] == 16 and by_users["n"] == 40
    more = load_insteval(zoo_dirs[1], 3 * load_config(UN)["limit"])
    known = {r["d"] for r in data.items}
    later = [r for r in more.items if r["d"] not in known][:3]
    extra = EvalItems("record", later, [str(r["dept"]) for r in later])
    install(unified_models, (UN_V1, f"{UN}-query@1", UN_V2, f"{UN}-query@2"), tmp_path)
    upgrade_through_the_api(make_client(), UN_V1, UN_V2, items, extra, report, queries=(queries, by_users))
