"""``ers train convirt`` on real emoji image–name pairs (300 concepts, tiny config): the loss falls, both
towers publish as artifacts that load through the registry, the served ONNX towers give the training
code's vectors (and the same held-out scores), resume continues exactly, a CheXpert-style CSV of DICOM
images + reports trains and evaluates, and the text tower scores IU X-ray report->report retrieval."""

from __future__ import annotations

import base64
import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.core.artifact import verify_artifact
from models.core.encoder import encode
from models.core.registry import load_encoder, load_torch_module
from models.data.convirt_pairs import encode_all, evaluate_artifact, load_pairs, precision_at_k, report_retrieval
from models.data.emoji import load_emoji
from models.families.convirt import ConvirtTextTower
from models.training.convirt import ConvirtRecipe
from models.training.recipe import TrainingError, TrainRequest, TrainResult
from models.training.run import load_config
from service.cli.main import app

IMAGE, TEXT = "convirt-tiny-image@1", "convirt-tiny-text@1"
TEXTS = ["grinning face", "flag: japan", "a much longer description of a smiling yellow face with big eyes and a grin"]


@pytest.fixture(scope="module")
def data_dir(zoo_dirs: tuple[Path, Path]) -> Path:
    return zoo_dirs[1].parent  # the session's zoo root: cache/ holds the packages, models/ the zoo


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("models.training.convirt.training_threads", lambda: 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


def train(config: dict[str, Any], out: Path, data_dir: Path, resume: bool = False) -> TrainResult:
    return ConvirtRecipe().train(TrainRequest(config, out, resume=resume, data_dir=data_dir, progress=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, one_thread: None) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("convirt") / "models"
    return out, train(load_config("convirt-tiny"), out, data_dir)


def label_auc(queries: np.ndarray, gallery: np.ndarray, labels: list[str]) -> float:
    """Query i against every gallery image: the share of (same-label, other-label) image pairs that
    the cosine ranks the right way round (0.5 for a random ranking), averaged over the queries."""
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T  # fmt: skip
    y = np.asarray(labels)
    shares = [np.mean(row[y == y[i]][:, None] > row[y != y[i]][None, :]) for i, row in enumerate(sims)]
    return float(np.mean(shares))


def test_loss_falls_and_text_queries_rank_their_category_above_chance(
    trained: tuple[Path, TrainResult], data_dir: Path
) -> None:
    out, result = trained
    m = result.metrics
    assert m["loss_last_epoch"] < 0.9 * m["loss_first_epoch"], m
    assert m["train_pairs"] > 200 and m["device"] == "cpu"
    # Held-out text->image by category. The tiny model's precision@k is too noisy to rank against a baseline
    # (66 queries, ~9 categories): over seeds 0-4, t2i_p@5 was 0.12-0.22 against chance 0.135 and untrained
    # 0.10-0.20 (seed 1: below its untrained self, seed 3: below chance). The AUC over every (same-category,
    # other-category) gallery pair of a query is the stable form of the same question: trained 0.550-0.582
    # over seeds 0-4 (0.558 at seed 0), untrained 0.490-0.516, chance 0.5. The stronger cheap baseline, each
    # query's nearest training name (TF-IDF) -> its frozen image features (recorded as frozen_nn_t2i_*:
    # p@5 0.245 on this split, seed-free; an earlier unrecorded estimate gave label AUC 0.61), is not beaten
    # by the tiny model; so the bar is chance with a margin: 0.525 is ~2.3 untrained-sd above 0.5 and ~2.5
    # seed-sd below seed 0's 0.558.
    cfg = load_config("convirt-tiny")
    pairs = load_pairs(cfg["data"], cfg["limit"], cfg["test_percent"], cfg["label"], data_dir, training=False)
    image, text = (load_encoder(out / key, backend="onnx") for key in (IMAGE, TEXT))
    gallery = encode_all(image, pairs.gallery)  # the held-out split the recipe scored (66 concepts)
    auc = label_auc(encode_all(text, pairs.texts), gallery, pairs.gallery_labels)
    assert auc > 0.525, auc
    # The frozen-features image->image baseline is a real one (0.41 at p@5 against chance 0.135; the tiny
    # trained head scores 0.28-0.35 and does not beat it either).
    assert m["frozen_nn_i2i_p@5"] > 2 * m["chance_i2i_p@5"], m


def test_each_query_p_at_5_is_recorded_for_the_bootstrap_with_every_baseline(
    trained: tuple[Path, TrainResult], data_dir: Path
) -> None:
    """``models.eval.seeds`` bootstraps every ``*_per_query`` list over seeds x queries and pairs the
    trained list with each baseline's (same key behind a baseline prefix): one score per query, in order."""
    out, result = trained
    m = result.metrics
    cfg = load_config("convirt-tiny")
    pairs = load_pairs(cfg["data"], cfg["limit"], cfg["test_percent"], cfg["label"], data_dir, training=False)
    for direction, queries in (("i2i", pairs.image_queries), ("t2i", pairs.texts)):
        for prefix in ("", "untrained_", "frozen_nn_"):  # frozen_nn_t2i: nearest training name -> frozen features
            each = m[f"{prefix}{direction}_p@5_per_query"]
            assert len(each) == len(queries) == 66, (prefix, direction)
            assert float(np.mean(each)) == pytest.approx(m[f"{prefix}{direction}_p@5"], abs=1e-9), (prefix, direction)
        chance = m[f"chance_{direction}_p@5_per_query"]  # a share of the gallery per query, rounded to 6 decimals
        assert len(chance) == 66 and float(np.mean(chance)) == pytest.approx(m[f"chance_{direction}_p@5"], abs=1e-6)
    recorded = json.loads((out / IMAGE / "metrics.json").read_text())
    assert recorded["frozen_nn_t2i_p@5_per_query"] == m["frozen_nn_t2i_p@5_per_query"]
    assert "| t2i_p@5_per_query | (66 values in metrics.json) |" in (out / IMAGE / "MODEL_CARD.md").read_text()


def test_towers_round_trip_as_artifacts_with_card_and_onnx_parity(trained: tuple[Path, TrainResult]) -> None:
    out, result = trained
    assert result.artifact == out / IMAGE
    for key, modality in ((IMAGE, "image"), (TEXT, "text")):
        spec = verify_artifact(out / key)  # sha256 manifest covers metrics.json and MODEL_CARD.md
        assert spec.modality == modality and spec.dim == 64 and spec.metric == "cosine"
        assert spec.config["recipe"] == "convirt" and spec.config["towers"] == {"image": IMAGE, "text": TEXT}
        assert json.loads((out / key / "metrics.json").read_text())["t2i_p@5"] == result.metrics["t2i_p@5"]
        assert "## Metrics" in (out / key / "MODEL_CARD.md").read_text()
    images = [np.full((40 + 20 * i, 64, 3), 60 * i, dtype=np.uint8) for i in range(3)]
    for key, inputs in ((IMAGE, images), (TEXT, TEXTS)):  # texts of different lengths: a free sequence axis
        onnx_vectors = encode(load_encoder(out / key, backend="onnx"), inputs)
        torch_vectors = encode(load_encoder(out / key, backend="torch"), inputs)
        np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)
        assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_served_encoders_give_the_training_code_vectors_and_scores(
    trained: tuple[Path, TrainResult], data_dir: Path
) -> None:
    out, result = trained
    image_served, text_served = (load_encoder(out / key, backend="onnx") for key in (IMAGE, TEXT))
    pngs = [e.google_png for e in load_emoji(data_dir / "cache", limit=8)]
    # The training code's paths: cached backbone features -> head; frozen prefix -> trainable suffix.
    image_tower: Any = load_torch_module(image_served.family, out / IMAGE)
    text_tower: Any = load_torch_module(text_served.family, out / TEXT)
    assert isinstance(text_tower, ConvirtTextTower)
    with torch.inference_mode():
        pixels = torch.from_numpy(image_served.preprocess(pngs)["pixels"])
        image_training = image_tower.head(image_tower.backbone(pixels)).numpy()
        batch = {k: torch.from_numpy(v) for k, v in text_served.preprocess(TEXTS).items()}
        hidden = text_tower.frozen_prefix(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], 5)
        text_training = text_tower.trainable_suffix(hidden, batch["attention_mask"], 5).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(encode(image_served, pngs), unit(image_training), atol=1e-4)
    np.testing.assert_allclose(encode(text_served, TEXTS), unit(text_training), atol=1e-4)
    # `ers eval` on the served encoders reproduces the training run's held-out precision@k.
    cli = CliRunner().invoke(app, ["eval", str(out / IMAGE), "--data-dir", str(data_dir), "--json"])
    assert cli.exit_code == 0, cli.output
    scores = json.loads(cli.output)
    for name in ("i2i_p@5", "i2i_p@10", "t2i_p@5", "t2i_p@50"):
        assert scores[name] == pytest.approx(result.metrics[name], abs=0.01), name


def test_the_service_answers_text_queries_through_the_text_tower(
    trained: tuple[Path, TrainResult], tmp_path: Path, data_dir: Path
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    out, _ = trained
    emoji = load_emoji(data_dir / "cache", limit=20)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", models_dir=out))) as client:
        r = client.post("/v1/collections", json={"name": "emoji", "encoder": IMAGE})
        assert r.status_code == 201, r.text
        items = [{"id": e.code, "image": base64.b64encode(e.google_png).decode()} for e in emoji]
        assert client.put("/v1/collections/emoji/items", json={"items": items}).json() == {"upserted": 20}
        gallery = encode(load_encoder(out / IMAGE, backend="onnx"), [e.google_png for e in emoji])
        text = load_encoder(out / TEXT, backend="onnx")
        for e in emoji[::4]:
            r = client.post("/v1/collections/emoji/search", json={"text": e.text, "k": 5})
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            expected = gallery @ encode(text, [e.text])[0]
            order = np.argsort(-expected, kind="stable")[:5]
            assert [h["id"] for h in hits[:3]] == [emoji[i].code for i in order[:3]]
            assert [h["score"] for h in hits] == pytest.approx(expected[order].tolist(), abs=1e-4)


def test_resume_continues_exactly(trained: tuple[Path, TrainResult], tmp_path: Path, data_dir: Path) -> None:
    out, result = trained
    config = load_config("convirt-tiny")
    copy = tmp_path / "models"
    shutil.copytree(out / ".checkpoints", copy / ".checkpoints")
    shutil.rmtree(copy / ".checkpoints" / "convirt-tiny" / "epoch-0003")  # interrupted during epoch 3
    resumed = train(config, copy, data_dir, resume=True)
    for name in ("loss_first_epoch", "loss_last_epoch", "t2i_p@5", "i2i_p@10", "untrained_t2i_p@5"):
        assert resumed.metrics[name] == pytest.approx(result.metrics[name], abs=1e-6), name
    with pytest.raises(TrainingError, match="another config"):
        train({**config, "lr": 0.01}, copy, data_dir, resume=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config, tmp_path / "empty", data_dir, resume=True)
    with pytest.raises(TrainingError, match="unknown config keys"):
        train({**config, "temprature": 0.2}, tmp_path / "typo", data_dir)


def test_a_chexpert_style_csv_of_dicom_files_evaluates_and_dicom_is_served(
    trained: tuple[Path, TrainResult], tmp_path: Path, data_dir: Path
) -> None:
    from pydicom.data import get_testdata_file

    from models.data.medical import dicom_to_rgb

    sources = [Path(str(get_testdata_file(n))) for n in ("CT_small.dcm", "MR_small.dcm")]
    rows = []
    for i in range(12):  # real DICOM pixels; reports and labels alternate between two findings
        path = tmp_path / "images" / f"study{i:02d}.dcm"
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(sources[i % 2], path)
        finding = "Cardiomegaly" if i % 2 else "Pleural Effusion"
        rows.append({"Path": f"images/{path.name}", "Sex": "Female", "Age": str(40 + i),
                     "Report": f"Study {i}: findings consistent with {finding.lower()}.",
                     "Cardiomegaly": "1.0" if i % 2 else "", "Pleural Effusion": "" if i % 2 else "1.0"})  # fmt: skip
    csv_path = tmp_path / "studies.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scores = evaluate_artifact(trained[0] / IMAGE, str(csv_path), data_dir)  # not the training data: all held out
    # Each image is in the gallery 6 times (two DICOM files, one label each): its 5 twins are the top 5.
    assert scores["held_out"] == 12 and scores["i2i_p@5"] == 1.0 and scores["chance_t2i_p@5"] == 0.5
    # Text->image: the gallery holds only two distinct images, 6 copies each, so a report's top 5 are all
    # copies of whichever image its vector is closer to: precision@5 is the share of reports closer to their
    # own finding's image than to the other one. Recomputed here from the served encoders.
    image = load_encoder(trained[0] / IMAGE, backend="onnx")
    text = load_encoder(trained[0] / TEXT, backend="onnx")
    views = encode(image, [p.read_bytes() for p in sources])  # (2, 64): CT (pleural effusion), MR (cardiomegaly)
    sims = encode(text, [row["Report"] for row in rows]) @ views.T  # (12, 2)
    own = np.arange(12) % 2  # study i's image and finding are sources[i % 2]
    closer = sims[np.arange(12), own] > sims[np.arange(12), 1 - own]
    assert scores["t2i_p@5"] == pytest.approx(float(closer.mean()), abs=1e-5), (scores, sims)
    raw = sources[0].read_bytes()
    np.testing.assert_allclose(encode(image, [raw]), encode(image, [dicom_to_rgb(raw)]), atol=1e-6)


def test_report_retrieval_on_iu_xray_reports(trained: tuple[Path, TrainResult], data_dir: Path) -> None:
    """The text tower (initialised from MiniLM, trained on emoji names) retrieves IU reports with the same
    MeSH heading well above chance; the TF-IDF baseline is scored beside it (docs/models.md has both)."""
    tower = load_encoder(trained[0] / TEXT, backend="onnx")
    scores = report_retrieval(lambda texts: encode(tower, texts), data_dir, max_per_label=20)
    assert scores["reports"] == 260 and scores["mesh_labels"] == 13  # 13 headings with >= 20 reports
    assert scores["r2r_p@5"] > 1.5 * scores["chance_r2r_p@5"], scores
    assert scores["bow_r2r_p@5"] > scores["chance_r2r_p@5"], scores


def test_precision_at_k_by_hand() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 1.0]])
    scores = precision_at_k(q, g, ["a", "b"], ["a", "b", "b", "a"], False, ks=(1, 2))
    assert scores == {"p@1": 0.5, "p@2": 0.5}  # query a ranks g1 (b) then g0 (a); query b: g2 (b) then g3 (a)
    chance = precision_at_k(None, None, ["a", "b"], ["a", "b", "b", "a"], False, ks=(1,))
    assert chance == {"p@1": 0.5}
    loo = precision_at_k(g, g, ["a", "a", "b", "b"], ["a", "a", "b", "b"], True, ks=(1, 3))
    assert loo == {"p@1": 1.0, "p@3": pytest.approx(1 / 3)}
