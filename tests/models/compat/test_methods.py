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
from models.core.encoder import encode
from models.core.registry import load_encoder
from models.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily, plain_state, warm_start
from models.training.fmnist import FmnistRecipe
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


def test_recipe_writes_a_compatible_artifact(tmp_path: Path, zoo_dirs: tuple[Path, Path], old_model: Path) -> None:
    old_copy = tmp_path / old_model.name  # one models directory, so `ers eval` finds the old model beside the new
    shutil.copytree(old_model, old_copy)
    request = TrainRequest(config=load_config("fmnist-tiny-new"), out=tmp_path, data_dir=zoo_dirs[1].parent,
                           compatible_with=old_copy, method="oca", progress=False)  # fmt: skip
    result = FmnistRecipe().train(request)
    new = load_encoder(result.artifact)
    assert result.artifact.name == "fmnist-tiny@2"
    assert new.spec.compatible_with == "fmnist-tiny@1" and new.spec.compat_dims == 32 and new.spec.dim == 40
    assert new.spec.config["basis"] is True
    report = json.loads((result.artifact / "metrics.json").read_text())["compatibility"]
    assert report["old"] == "fmnist-tiny@1" and report["compat_dims"] == 32
    assert "Criterion new/old > old/old" in (result.artifact / "MODEL_CARD.md").read_text()
    vectors = encode(new, [np.zeros((28, 28), np.uint8), np.full((40, 30, 3), 200, np.uint8)])
    assert vectors.shape == (2, 40)
    metrics = FmnistRecipe().evaluate(result.artifact, "100", zoo_dirs[1].parent)
    assert "compatibility" in metrics and 0.0 <= metrics["test_top1"] <= 1.0


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
