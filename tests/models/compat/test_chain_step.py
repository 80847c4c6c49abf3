"""The chain-step knobs of the fmnist recipe: frozen conv stages, perturbed-view anchoring, OCA's
feature term, and the stationary target of the chain's first model (root_feature)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.compat.objective import CompatObjective, CompatTargets, CompatWeights
from models.data.fashion_mnist import load_fashion_mnist
from models.families.fmnist_cnn import plain_state
from models.training.fmnist import FmnistRecipe
from models.training.fmnist_anchor import perturbed_views
from models.training.recipe import TrainingError, TrainRequest
from models.training.run import load_config


@pytest.fixture(scope="module")
def old_model(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fmnist-chain")
    request = TrainRequest(config=load_config("fmnist-tiny-old"), out=out, data_dir=zoo_dirs[1].parent, progress=False)
    return FmnistRecipe().train(request).artifact


def test_perturbed_views_are_seeded_copies(zoo_dirs: tuple[Path, Path]) -> None:
    images = load_fashion_mnist(zoo_dirs[1]).train_images[:50]
    views = perturbed_views(images, 3, seed=7)
    assert views.shape == (150, 28, 28) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, perturbed_views(images, 3, seed=7))
    changed = (views != np.tile(images, (3, 1, 1))).any(axis=(1, 2))
    assert changed.mean() > 0.9  # (a flip of a symmetric image may leave it unchanged)
    with pytest.raises(ValueError, match="views"):
        perturbed_views(images, 0, seed=0)


def test_oca_feature_term_pulls_to_the_item_feature() -> None:
    feats = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(2, 6), dim=1)
    targets = CompatTargets(feats, protos, protos.clone())
    labels, index = torch.tensor([0, 1, 0, 1]), torch.arange(4)
    plain = CompatObjective("oca", 2, 8, targets).compat_terms(torch.randn(4, 8), labels, index)
    assert "feature" not in plain
    z = torch.cat([feats, torch.zeros(4, 2)], dim=1)  # prefix == the old features: no feature loss
    terms = CompatObjective("oca", 2, 8, targets, CompatWeights(feature=3.0)).compat_terms(z, labels, index)
    assert float(terms["feature"]) == pytest.approx(0.0, abs=1e-6) and float(terms["align"]) > 0.01


def test_frozen_stages_keep_the_old_weights(tmp_path: Path, zoo_dirs: tuple[Path, Path], old_model: Path) -> None:
    shutil.copytree(old_model, tmp_path / old_model.name)
    config = {**load_config("fmnist-tiny-new"), "freeze_stages": 2, "anchor": 5.0, "feature": 5.0}
    request = TrainRequest(config=config, out=tmp_path, data_dir=zoo_dirs[1].parent,
                           compatible_with=tmp_path / old_model.name, method="oca", progress=False)  # fmt: skip
    new = plain_state(load_file(str(FmnistRecipe().train(request).artifact / "model.safetensors")))
    old = load_file(str(old_model / "model.safetensors"))
    for key in old:  # stages 0-1 are features.0-7: conv and BN weights and BN statistics unchanged
        if key.startswith("features.") and int(key.split(".")[1]) < 8 and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(new[key], old[key], msg=key)
    assert not torch.allclose(new["features.8.weight"], old["features.8.weight"])  # stage 2 trained
    with pytest.raises(TrainingError, match="freeze_stages"):
        FmnistRecipe().train(TrainRequest(config={**config, "freeze_stages": 4}, out=tmp_path / "x",
                                          data_dir=zoo_dirs[1].parent, compatible_with=tmp_path / old_model.name,
                                          method="oca", progress=False))  # fmt: skip


def test_root_feature_holds_a_chain_step_to_the_first_model(
    tmp_path: Path, zoo_dirs: tuple[Path, Path], old_model: Path
) -> None:
    """v3's first dims, trained with root_feature, stay nearer v1's features than without it; the
    chain's first model must lie beside the others."""
    from models.compat.report import embed
    from models.core.registry import load_encoder

    shutil.copytree(old_model, tmp_path / old_model.name)
    data_dir = zoo_dirs[1].parent
    base = {**load_config("fmnist-tiny-new"), "freeze_stages": 2}

    def step(version: str, parent: Path, out: Path, **extra: float) -> Path:
        config = {**base, "version": version, **extra}
        request = TrainRequest(config=config, out=out, data_dir=data_dir, compatible_with=parent, method="oca",
                               progress=False)  # fmt: skip
        return FmnistRecipe().train(request).artifact

    v2 = step("2", tmp_path / old_model.name, tmp_path)
    images = load_fashion_mnist(zoo_dirs[1]).test_images[:300]
    v1_vectors = embed(load_encoder(old_model), images)
    d1 = v1_vectors.shape[1]

    def closeness(artifact: Path) -> float:
        prefix = embed(load_encoder(artifact), images)[:, :d1]
        prefix /= np.linalg.norm(prefix, axis=1, keepdims=True)
        return float((prefix * v1_vectors / np.linalg.norm(v1_vectors, axis=1, keepdims=True)).sum(1).mean())

    held = closeness(step("3", v2, tmp_path, root_feature=200.0))
    free = closeness(step("3", v2, tmp_path / "free", root_feature=0.0))
    assert held > free + 0.01
    alone = tmp_path / "alone"
    shutil.copytree(v2, alone / v2.name)  # v1 is not beside it
    with pytest.raises(TrainingError, match="side by side"):
        step("3", alone / v2.name, alone, root_feature=1.0)
