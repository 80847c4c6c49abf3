"""The fmnist recipe's knobs for issue 14's evidence: a validation split no model trains on, and the
BT²/OCA extra dims without the orthogonal basis (the ablation that measures the basis's own effect)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.compat.heads import wrap_for_compat
from models.core.registry import load_encoder
from models.data.fashion_mnist import load_fashion_mnist
from models.training.fmnist import FmnistRecipe, training_indices, validation_indices
from models.training.recipe import TrainingError, TrainRequest
from models.training.run import load_config


def test_the_validation_split_is_fixed_per_class_and_never_trained_on(zoo_dirs: tuple[Path, Path]) -> None:
    labels = load_fashion_mnist(zoo_dirs[1]).train_labels
    held = validation_indices(labels, 600)
    assert len(held) == 6000 and np.bincount(labels[held]).tolist() == [600] * 10
    np.testing.assert_array_equal(held, validation_indices(labels, 600))  # no model seed moves it
    assert len(validation_indices(labels, 0)) == 0
    for seed in (0, 1):
        every = training_indices(labels, list(range(10)), None, 600, seed)
        assert len(every) == 54000 and not np.intersect1d(every, held).size
        sample = training_indices(labels, [2, 5], 100, 600, seed)
        assert np.bincount(labels[sample], minlength=10)[[2, 5]].tolist() == [100, 100]
        assert set(labels[sample].tolist()) == {2, 5} and not np.intersect1d(sample, held).size
    # without a validation split the sample is the one the recipe drew before the knob existed
    rng = np.random.default_rng(3)
    before = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:50] for c in (1, 4)]))
    np.testing.assert_array_equal(training_indices(labels, [1, 4], 50, 0, 3), before)


def test_wrap_for_compat_without_the_basis_keeps_the_width() -> None:
    backbone = torch.nn.Linear(6, 10)
    assert wrap_for_compat(backbone, "oca", 10, basis=False).basis is None
    assert wrap_for_compat(backbone, "oca", 10).basis is not None
    x = torch.randn(3, 6)
    torch.testing.assert_close(wrap_for_compat(backbone, "bt2", 10, basis=False)(x), backbone(x))


def test_an_oca_model_without_the_basis_serves_its_extra_dims_plainly(
    tmp_path: Path, zoo_dirs: tuple[Path, Path]
) -> None:
    torch.set_num_threads(1)
    data_dir = zoo_dirs[1].parent
    old = FmnistRecipe().train(TrainRequest(config=load_config("fmnist-tiny-old"), out=tmp_path / "old",
                                            data_dir=data_dir, progress=False)).artifact  # fmt: skip
    shutil.copytree(old, tmp_path / old.name)
    artifacts = {}
    for basis in (True, False):
        config = {**load_config("fmnist-tiny-new"), "basis": basis, "version": "2" if basis else "3"}
        request = TrainRequest(config=config, out=tmp_path, data_dir=data_dir, compatible_with=tmp_path / old.name,
                               method="oca", progress=False)  # fmt: skip
        artifacts[basis] = FmnistRecipe().train(request).artifact
    plain, mixed = (load_encoder(artifacts[b]).spec for b in (False, True))
    assert plain.dim == mixed.dim == 40 and plain.compat_dims == 32  # 32 old dims + d_extra 8 either way
    assert plain.config["basis"] is False and mixed.config["basis"] is True
    assert "basis.weight" not in load_file(str(artifacts[False] / "model.safetensors"))
    assert "basis.weight" in load_file(str(artifacts[True] / "model.safetensors"))
    # a model without a basis to drop refuses the option instead of ignoring it
    for method in (None, "bct"):
        request = TrainRequest(config={**load_config("fmnist-tiny-new"), "basis": False}, out=tmp_path / "refused",
                               data_dir=data_dir, compatible_with=tmp_path / old.name if method else None,
                               method=method, progress=False)  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises(TrainingError, match="basis: false"):
            FmnistRecipe().train(request)
    # BT²'s teacher is named once: the config's or the request's, not both
    config = {**load_config("fmnist-tiny-new"), "teacher": str(tmp_path / old.name)}
    request = TrainRequest(config=config, out=tmp_path / "refused", data_dir=data_dir,
                           compatible_with=tmp_path / old.name, method="bt2", teacher=tmp_path / old.name,
                           progress=False)  # fmt: skip
    with pytest.raises(TrainingError, match="teacher once"):
        FmnistRecipe().train(request)
    # the config's teacher is --teacher in YAML: with any method but BT² it is refused, not ignored
    request = TrainRequest(config=config, out=tmp_path / "refused", data_dir=data_dir,
                           compatible_with=tmp_path / old.name, method="oca", progress=False)  # fmt: skip
    with pytest.raises(TrainingError, match="bt2 only"):
        FmnistRecipe().train(request)
