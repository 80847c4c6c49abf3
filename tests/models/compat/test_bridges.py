"""Bridges (``models.compat.bridges``): a fitted fuse / adapter / transform published as an artefact and served
through the ``Encoder`` protocol must give exactly the fitted model's vectors, batch like any encoder, and
declare the compatibility the collections rely on. The composed encoders are deterministic linear maps of
numeric inputs: the bridge's own arithmetic is what is under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.compat.bridges import TransformBridge, load_any, load_bridge, load_transform, write_bridge
from models.compat.pretrained import Calibration, fit_adapter, fit_fuse, fit_transform, unit
from models.core.batching import collate, row_lengths, split_rows
from models.core.encoder import Batch, encode
from models.core.errors import ArtifactError
from models.core.spec import EncoderSpec

D_OLD, D_NEW, D_IN = 12, 16, 8


class LinearEncoder:
    """Inputs are lists of D_IN numbers; the vector is unit(x @ W) — what a real encoder looks like from outside."""

    backend = "numpy"

    def __init__(self, name: str, dim: int, seed: int) -> None:
        self.spec = EncoderSpec(name=name, version="1", family="test-linear", modality="text", dim=dim)
        self.weight = np.random.default_rng(seed).normal(size=(D_IN, dim)).astype(np.float32)

    def preprocess(self, inputs: Any) -> Batch:
        rows = np.asarray(inputs, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != D_IN:
            raise ValueError(f"inputs must be lists of {D_IN} numbers")
        return {"input": rows}

    def forward(self, batch: Batch, threads: int | None = None) -> np.ndarray:
        return batch["input"] @ self.weight

    def postprocess(self, raw: np.ndarray, batch: Batch) -> np.ndarray:
        return unit(raw)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, LinearEncoder], np.ndarray, Calibration]:
    encoders = {"old@1": LinearEncoder("old", D_OLD, 1), "new@1": LinearEncoder("new", D_NEW, 2)}
    inputs = np.random.default_rng(3).normal(size=(300, D_IN)).astype(np.float32)
    cal = Calibration(encode(encoders["old@1"], inputs), encode(encoders["new@1"], inputs),
                      labels=np.arange(300) % 60)  # fmt: skip
    return tmp_path, encoders, inputs, cal


def test_fuse_bridge_serves_the_fitted_fuse_and_is_compatible_with_the_old_encoder(setup: Any) -> None:
    models_dir, encoders, inputs, cal = setup
    fuse = fit_fuse(cal, seed=0)
    spec = write_bridge(models_dir, "fuse", encoders["old@1"].spec, encoders["new@1"].spec, fuse)
    assert (spec.family, spec.dim, spec.compatible_with, spec.compat_dims) == ("bridge", D_OLD, "old@1", D_OLD)
    assert spec.key.startswith("new@1.fuse-")
    bridge = load_any(models_dir / spec.key, encoders.__getitem__)
    expected = fuse.query(encode(encoders["old@1"], inputs), encode(encoders["new@1"], inputs))
    np.testing.assert_allclose(encode(bridge, inputs), expected, atol=1e-5)
    # publishing the same fit again is the same immutable artefact
    assert write_bridge(models_dir, "fuse", encoders["old@1"].spec, encoders["new@1"].spec, fuse).key == spec.key


def test_adapter_bridge_serves_the_head_and_its_prefix_is_old_compatible(setup: Any) -> None:
    models_dir, encoders, inputs, cal = setup
    adapter = fit_adapter(cal.new, cal.old, d_extra=4, steps=30, hidden=32)
    spec = write_bridge(models_dir, "adapter", encoders["old@1"].spec, encoders["new@1"].spec, adapter)
    assert (spec.dim, spec.compatible_with, spec.compat_dims) == (D_OLD + 4, "old@1", D_OLD)
    bridge = load_bridge(models_dir / spec.key, encoders.__getitem__)
    out = encode(bridge, inputs)
    np.testing.assert_allclose(out, adapter.apply(encode(encoders["new@1"], inputs)), atol=1e-5)
    # the served prefix is the old-space part the adapter was trained to align
    cos = np.sum(unit(out[:, :D_OLD]) * cal.old, axis=1)
    assert float(np.mean(cos)) > 0.5


def test_transform_bridge_queries_with_the_new_encoder_and_rewrites_old_vectors(setup: Any) -> None:
    models_dir, encoders, inputs, cal = setup
    transform = fit_transform(cal.old, cal.new, steps=30, hidden=32)
    spec = write_bridge(models_dir, "transform", encoders["old@1"].spec, encoders["new@1"].spec, transform)
    assert (spec.dim, spec.compatible_with) == (D_NEW, None)
    bridge = load_bridge(models_dir / spec.key, encoders.__getitem__)
    assert isinstance(bridge, TransformBridge)
    np.testing.assert_allclose(encode(bridge, inputs), cal.new, atol=1e-5)
    np.testing.assert_allclose(
        load_transform(models_dir / spec.key).apply(cal.old), transform.apply(cal.old), atol=1e-5
    )
    np.testing.assert_allclose(bridge.rewrite(cal.old), transform.apply(cal.old), atol=1e-5)


def test_a_bridge_batch_splits_and_collates_like_any_encoder_batch(setup: Any) -> None:
    """The service's batcher cuts requests into rows and merges rows of several requests."""
    models_dir, encoders, inputs, cal = setup
    spec = write_bridge(models_dir, "fuse", encoders["old@1"].spec, encoders["new@1"].spec, fit_fuse(cal))
    bridge = load_bridge(models_dir / spec.key, encoders.__getitem__)
    batch = bridge.preprocess(list(inputs[:5]))
    assert row_lengths(batch).tolist() == [1] * 5
    merged = collate(split_rows(batch)[::-1])
    np.testing.assert_allclose(bridge.forward(merged), encode(bridge, inputs[:5][::-1]), atol=1e-6)
    with pytest.raises(ValueError, match="lists of 8 numbers"):
        bridge.preprocess([[1.0, 2.0]])  # a part's own error, before any forward


def test_a_corrupt_bridge_is_refused(setup: Any) -> None:
    models_dir, encoders, _, cal = setup
    spec = write_bridge(models_dir, "fuse", encoders["old@1"].spec, encoders["new@1"].spec, fit_fuse(cal))
    weights = models_dir / spec.key / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_bridge(models_dir / spec.key, encoders.__getitem__)


def test_held_out_groups_keep_query_and_answer_together_and_fit_only_pairs_help() -> None:
    """An eval set of (query, answer) pairs sharing a label: the held-out part must hold whole pairs, or no
    held-out query has an answer and every figure is ~0."""
    labels = np.repeat(np.arange(100), 2)
    rng = np.random.default_rng(0)
    cal = Calibration(unit(rng.normal(size=(200, 8))), unit(rng.normal(size=(200, 8))), labels=labels)
    fit, held = cal.split(0.2, seed=0)
    assert len(held) == 40 and not set(fit) & set(held)
    assert set(np.bincount(labels[held])[labels[held]]) == {2}  # both members of every held-out pair
    few = Calibration(cal.old, cal.new, labels=np.arange(200) % 10)  # few big classes: items are split
    assert len(np.unique(few.labels[few.split(0.2, 0)[1]])) == 10


def test_fit_only_pairs_fix_a_map_the_labelled_items_alone_cannot() -> None:
    """With 10 labelled items a rotation of 16 dims is under-determined; 2,000 unlabelled pairs (kept
    sources) fix it: the fuse map then aligns unseen inputs almost perfectly."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    latent = rng.normal(size=(2010, 16))
    old = unit(latent + 0.1 * rng.normal(size=latent.shape))
    new = unit(latent @ q + 0.05 * rng.normal(size=latent.shape))
    task = Calibration(old[:10], new[:10], labels=np.repeat(np.arange(5), 2))
    unseen_old, unseen_new = old[-500:], new[-500:]

    def alignment(extra: Any) -> float:
        fuse = fit_fuse(task, extra=extra)
        return float(np.mean(np.sum(fuse.procrustes.apply(unseen_new) * unseen_old, axis=1)))

    alone, helped = alignment(None), alignment((old[10:1510], new[10:1510]))
    assert helped > 0.95 and helped > alone + 0.2, (alone, helped)
