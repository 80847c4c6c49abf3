"""Issue 14, per encoder family: ``ers train`` trains v1 and a backward-compatible v2 on real data
(tiny configs), and the upgrade runs through the API (``tests.service.compat_flow``): REST cross-test
figures equal to ``ers compat``'s, v2 queries on the v1 gallery, a mixed gallery, an exact rollback.

FaceNet: emoji concepts as identities (Google's and Twitter's drawing of each), 64 held-out concepts
(128 images) as the evaluation items. v2 is OCA (extra dims behind an orthogonal basis) trained twice
as long as v1 on the same training identities.
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
from PIL import Image
from typer.testing import CliRunner

from models.core.spec import EncoderSpec
from models.data.identities import load_emoji_identities, split_by_identity
from models.training.run import load_config
from service.cli.main import app as cli_app
from tests.service.compat_flow import EvalItems, offline_report, upgrade_through_the_api
from tests.service.conftest import MakeClient

FACE_V1, FACE_V2 = "facenet-tiny@1", "facenet-tiny@2"


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


@pytest.fixture(scope="module")
def face_models(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    """``facenet-tiny@1`` and its OCA-compatible ``facenet-tiny@2``, trained with ``ers train``."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("face-compat")
    (root / "data").mkdir()
    (root / "data" / "cache").symlink_to(zoo_dirs[1])
    models = root / "models"
    common = ["--out", str(models), "--data-dir", str(root / "data")]
    ers_train("facenet", "--config", "facenet-tiny", *common)
    v2 = {**load_config("facenet-tiny"), "version": "2", "epochs": 6, "d_extra": 16}  # twice the training
    (root / "v2.yaml").write_text(yaml.safe_dump(v2))
    ers_train("facenet", "--config", str(root / "v2.yaml"), *common,
              "--compatible-with", str(models / FACE_V1), "--method", "oca")  # fmt: skip
    return models


def test_facenet_v2_is_declared_compatible_with_extra_dims(face_models: Path) -> None:
    spec = EncoderSpec.load(face_models / FACE_V2)
    assert (spec.compatible_with, spec.compat_dims, spec.dim) == (FACE_V1, 128, 144)
    assert spec.config["network"]["basis"] is True


def test_facenet_upgrade_through_the_api(
    face_models: Path, zoo_dirs: tuple[Path, Path], make_client: MakeClient, tmp_path: Path
) -> None:
    cfg = load_config("facenet-tiny")
    data = load_emoji_identities(zoo_dirs[1], cfg["image_size"], cfg["limit"])
    train, test = split_by_identity(data, cfg["holdout"], cfg["seed"])
    items = image_items(list(test.crops), [test.names[y] for y in test.labels])
    extra = image_items(list(train.crops[:6]), [train.names[y] for y in train.labels[:6]])
    report = offline_report(face_models / FACE_V1, face_models / FACE_V2, items, tmp_path / "eval")
    assert report["compat_dims"] == 128 and report["n"] == len(items.values) == 128
    models_dir = tmp_path / "data" / "models"
    models_dir.mkdir(parents=True)
    for key in (FACE_V1, FACE_V2):
        shutil.copytree(face_models / key, models_dir / key)
    upgrade_through_the_api(make_client(), FACE_V1, FACE_V2, items, extra, report)


@pytest.mark.parametrize(("family", "config"), [("two-branch", "two-branch-tiny"), ("convirt", "convirt-tiny"),
                                                 ("unified", "unified-tiny")])  # fmt: skip
def test_families_without_compatible_training_refuse_the_option(family: str, config: str, tmp_path: Path) -> None:
    """Not built yet for these families: ``ers train`` says so instead of training an incompatible model."""
    (tmp_path / "old").mkdir()
    result = CliRunner().invoke(cli_app, ["train", family, "--config", config, "--out", str(tmp_path / "m"),
                                          "--data-dir", str(tmp_path), "--compatible-with", str(tmp_path / "old"),
                                          "--method", "oca"])  # fmt: skip
    assert result.exit_code == 1
    assert "backward-compatible" in result.output and not (tmp_path / "m").exists()
