"""BCT, BT² and OCA on a few hundred real Fashion-MNIST images: the losses fall, the recipe writes a
compatible artifact (spec, basis, report in its card) that loads and serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.compat.heads import bake, embedding_dim, with_basis, wrap_for_compat
from models.compat.objective import CompatObjective, prepare_targets
from models.compat.report import compatibility_report
from models.core.encoder import encode
from models.core.registry import load_encoder
from models.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily, plain_state, warm_start
from models.training.fmnist import FmnistRecipe, eval_split
from models.training.recipe import TrainingError, TrainRequest
from models.training.run import load_config


@pytest.fixture(scope="module")
def fmnist(zoo_dirs: tuple[Path, Path]) -> FashionMNIST:
    torch.set_num_threads(1)
    return load_fashion_mnist(zoo_dirs[1])


@pytest.fixture(scope="module")
def old_model(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path], fmnist: FashionMNIST) -> Path:
    out = tmp_path_factory.mktemp("fmnist-models")
    request = TrainRequest(config=load_config("fmnist-tiny-old"), out=out, data_dir=zoo_dirs[1].parent, progress=False)
    return FmnistRecipe().train(request).artifact


def test_fashion_mnist_shapes(fmnist: FashionMNIST) -> None:
    assert fmnist.train_images.shape == (60000, 28, 28) and fmnist.test_images.shape == (10000, 28, 28)
    assert np.bincount(fmnist.test_labels).tolist() == [1000] * 10


@pytest.mark.parametrize("method", ["bct", "bt2", "oca"])
def test_method_losses_fall(method: str, fmnist: FashionMNIST, old_model: Path) -> None:
    torch.manual_seed(0)
    old = load_encoder(old_model)
    images, labels = fmnist.train_images[:300], fmnist.train_labels[:300]
    targets = prepare_targets(old, images, labels, 10, teacher=old if method == "bt2" else None)
    dim = embedding_dim(method, old.spec.dim, 8)
    model = wrap_for_compat(FmnistCNN(FmnistCNNConfig(channels=(8, 16, 32), dim=dim)), method, dim)
    objective = CompatObjective(method, 10, dim, targets)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(objective.parameters()), lr=3e-3)
    x = torch.from_numpy(FmnistCNNFamily.pixels_of(images))
    y, index = torch.from_numpy(labels), torch.arange(300)
    history = []
    for _ in range(25):
        loss, parts = objective(model(x), y, index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(parts)
    assert set(history[0]) >= {"ce", "influence"}
    for term in history[0]:
        assert history[-1][term] < history[0][term], (term, history[0][term], history[-1][term])
    if method != "bct":  # the basis stays orthogonal through training and after baking
        basis = bake(model).basis
        assert basis is not None
        w = next(basis.parameters()).detach()
        assert torch.allclose(w @ w.T, torch.eye(dim), atol=1e-4)


def test_bt2_needs_a_teacher(fmnist: FashionMNIST, old_model: Path) -> None:
    targets = prepare_targets(load_encoder(old_model), fmnist.train_images[:50], fmnist.train_labels[:50] % 2, 2)
    with pytest.raises(ValueError, match="teacher"):
        CompatObjective("bt2", 2, 40, targets)


def leave_self_out_top1(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    """Cosine top-1 of item i's query vector against every other item's gallery vector (float32)."""
    scores = unit(query.astype(np.float32)) @ unit(gallery.astype(np.float32)).T
    np.fill_diagonal(scores, -np.inf)
    return float(np.mean(labels[np.argmax(scores, axis=1)] == labels))


def test_recipe_writes_a_compatible_artifact(
    tmp_path: Path, zoo_dirs: tuple[Path, Path], old_model: Path, fmnist: FashionMNIST
) -> None:
    old_copy = tmp_path / old_model.name  # one models directory, so `ers eval` finds the old model beside the new
    shutil.copytree(old_model, old_copy)
    config = load_config("fmnist-tiny-new")
    request = TrainRequest(config=config, out=tmp_path, data_dir=zoo_dirs[1].parent,
                           compatible_with=old_copy, method="oca", progress=False)  # fmt: skip
    result = FmnistRecipe().train(request)
    new = load_encoder(result.artifact)
    assert result.artifact.name == "fmnist-tiny@2"
    assert new.spec.compatible_with == "fmnist-tiny@1" and new.spec.compat_dims == 32 and new.spec.dim == 40
    assert new.spec.config["basis"] is True
    written = json.loads((result.artifact / "metrics.json").read_text())
    report = written["compatibility"]
    assert report["old"] == "fmnist-tiny@1" and report["compat_dims"] == 32 and report["n"] == config["eval_items"]
    # The criterion as the report and the card state it. The tiny config does not meet it: new/old 0.465 vs
    # old/old 0.580 on its 200 items (0.45-0.47 over seeds 0-4; 0.44 vs 0.72 on the whole test split; even
    # 600 images/class x 4 epochs gives 0.646 vs 0.716 there), as docs/compat.md records; fmnist-new.yaml's
    # full run meets it (0.805 vs 0.788). So what is asserted is that the verdict is the criterion's.
    old_old, new_old = report["old_old"]["top1"], report["new_old"]["top1"]
    assert report["criterion_met"] == (new_old > old_old)
    verdict = "met" if report["criterion_met"] else "NOT met"
    assert f"Criterion new/old > old/old: **{verdict}**" in (result.artifact / "MODEL_CARD.md").read_text()
    # The report's figures recomputed from the served encoders: the new query's first 32 dims (renormalised)
    # against the old gallery, leave-self-out cosine top-1.
    images, labels = eval_split(fmnist, config["eval_items"])
    old_vectors, new_vectors = (encode(load_encoder(p), list(images)) for p in (old_copy, result.artifact))
    assert old_old == pytest.approx(leave_self_out_top1(old_vectors, old_vectors, labels), abs=1e-5)
    assert new_old == pytest.approx(leave_self_out_top1(new_vectors[:, :32], old_vectors, labels), abs=1e-5)
    assert written["test_top1"] == pytest.approx(leave_self_out_top1(new_vectors, new_vectors, labels), abs=1e-5)
    # The baseline the compatible model must beat on new/old: the same config trained without --compatible-with
    # (the BCT paper's "Independent" row; same seed as the old model, which leaves the raw spaces partly
    # aligned, so the strongest form of it). Measured: 0.195 at seed 0, 0.09-0.195 over seeds 0-4, while OCA's
    # new/old is 0.45-0.47; a margin of 0.15 leaves 0.12 of seed 0's 0.27, ~3 sd of the independent's spread.
    independent = FmnistRecipe().train(TrainRequest(config=config, out=tmp_path / "independent",
                                                     data_dir=zoo_dirs[1].parent, progress=False))  # fmt: skip
    baseline = compatibility_report(load_encoder(old_copy), load_encoder(independent.artifact), images, labels)
    assert baseline.compat_dims is None and new_old > baseline.new_old["top1"] + 0.15, (new_old, baseline.new_old)
    vectors = encode(new, [np.zeros((28, 28), np.uint8), np.full((40, 30, 3), 200, np.uint8)])
    assert vectors.shape == (2, 40)
    # `ers eval` on the training run's items is the same computation as the metrics.json it wrote.
    metrics = FmnistRecipe().evaluate(result.artifact, str(config["eval_items"]), zoo_dirs[1].parent)
    assert metrics["test_top1"] == pytest.approx(written["test_top1"], abs=1e-5)
    assert metrics["test_mAP"] == pytest.approx(written["test_mAP"], abs=1e-5)
    assert metrics["compatibility"]["criterion_met"] == report["criterion_met"]
    for test in ("old_old", "new_old", "new_new"):
        assert metrics["compatibility"][test] == pytest.approx(report[test], abs=1e-5), test
    for key in ("negative_flips", "negative_flips_new_new"):
        assert metrics["compatibility"][key] == pytest.approx(report[key], abs=1e-5), key
    assert FmnistRecipe().evaluate(result.artifact, "100", zoo_dirs[1].parent)["compatibility"]["n"] == 100


def test_recipe_refuses_bad_classes(tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> None:
    config = {**load_config("fmnist-tiny-old"), "classes": [3, 11]}
    with pytest.raises(TrainingError, match="classes"):
        FmnistRecipe().train(TrainRequest(config=config, out=tmp_path, data_dir=zoo_dirs[1].parent, progress=False))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_warm_start_begins_at_the_old_embedding(fmnist: FashionMNIST, old_model: Path) -> None:
    from safetensors.torch import load_file

    images = fmnist.test_images[:20]
    pixels = torch.from_numpy(FmnistCNNFamily.pixels_of(images))
    cnn = FmnistCNN(FmnistCNNConfig(channels=(8, 16, 32), dim=40))  # 32 old dims + 8 extra
    warm_start(cnn, plain_state(load_file(str(old_model / "model.safetensors"))))
    with torch.no_grad():
        prefix = cnn.eval()(pixels)[:, :32].numpy()
    np.testing.assert_allclose(unit(prefix), unit(encode(load_encoder(old_model), list(images))), atol=1e-4)

    # a BT²/OCA model's baked basis folds into the projection: the next model starts at its 40-d output
    torch.manual_seed(0)
    basis_model = with_basis(cnn, 40).eval()
    with torch.no_grad():
        assert isinstance(basis_model.basis, torch.nn.Linear)
        basis_model.basis.weight.copy_(torch.linalg.qr(torch.randn(40, 40))[0])
        expected = basis_model(pixels)
        grown = FmnistCNN(FmnistCNNConfig(channels=(8, 16, 32), dim=48)).eval()
        warm_start(grown, plain_state(basis_model.state_dict()))
        torch.testing.assert_close(grown(pixels)[:, :40], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"proj\.weight"):
        warm_start(FmnistCNN(FmnistCNNConfig(channels=(8, 16, 32), dim=24)), plain_state(basis_model.state_dict()))


def test_query_tower_terms_leave_out_only_the_distillation(fmnist: FashionMNIST, old_model: Path) -> None:
    """A two-tower model's query tower gets BT²'s influence and alignment terms but not the teacher's
    relational distillation (its relations are between gallery items); the gallery tower gets all three."""
    old = load_encoder(old_model)
    images, labels = fmnist.train_images[:64], fmnist.train_labels[:64]
    targets = prepare_targets(old, images, labels, 10, teacher=old)
    dim = embedding_dim("bt2", old.spec.dim, 8)
    objective = CompatObjective("bt2", 10, dim, targets)
    z = torch.nn.functional.normalize(torch.randn(64, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    y, index = torch.from_numpy(labels), torch.arange(64)
    gallery = objective.compat_terms(z, y, index)
    query = objective.compat_terms(z, y, index, distill=False)
    assert set(gallery) == {"influence", "align", "distill"} and set(query) == {"influence", "align"}
    for term in query:
        assert torch.equal(query[term], gallery[term])
    assert float(gallery["distill"]) > 0
