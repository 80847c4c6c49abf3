"""int8 MiniLM variants: exact ONNX Runtime outputs, the spec's precision and compat fields, and
retrieval quality on real X-ray reports close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.compat.report import compat_chain, embed
from models.core.artifact import ONNX_FILE, TORCH_FILE
from models.core.encoder import encode
from models.core.errors import ArtifactError
from models.core.quantize import quantized_op_types
from models.core.registry import load_encoder
from models.data.text_retrieval import load_retrieval_set, recall_hits
from models.zoo import pull
from models.zoo.minilm import INT8_COMPATIBLE

TEXTS = ["No acute cardiopulmonary abnormality.", "Heart size is normal. The lungs are clear.", "smiling face"]


@pytest.fixture(scope="module", params=["minilm-l6@1", "minilm-l3@1"])
def pair(request: pytest.FixtureRequest, zoo_dirs: tuple[Path, Path]) -> tuple[Path, Path]:
    """(fp32 dir, int8 dir), pulled once per session into the shared zoo dirs."""
    models_dir = zoo_dirs[0]
    fp32, int8 = pull(request.param, *zoo_dirs), pull(f"{request.param}-int8", *zoo_dirs)
    return models_dir / fp32.key, models_dir / int8.key


def test_int8_vectors_are_the_int8_graph_run_directly(pair: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    _, int8_dir = pair
    encoder = load_encoder(int8_dir)
    assert encoder.backend == "onnx" and "MatMulInteger" in quantized_op_types(int8_dir / ONNX_FILE)
    batch = encoder.preprocess(TEXTS)
    session = ort.InferenceSession(str(int8_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    pooled = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]  # mean-pooled in-graph
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(encode(encoder, TEXTS), expected, atol=1e-6, rtol=0)


def test_int8_spec_and_backend_rules(pair: tuple[Path, Path]) -> None:
    fp32_dir, int8_dir = pair
    fp32, int8 = load_encoder(fp32_dir).spec, load_encoder(int8_dir).spec
    assert "precision" not in fp32.config  # absent means fp32: artifacts pulled before int8 still load
    assert int8.config["precision"] == "int8" and int8.version == "1-int8" and int8.name == fp32.name
    assert int8.config["int8"]["per_channel"] is True
    if INT8_COMPATIBLE[fp32.key]:
        assert (int8.compatible_with, int8.compat_dims) == (fp32.key, 384)
        specs = {fp32.key: fp32, int8.key: int8}
        assert compat_chain(specs.__getitem__, int8.key, fp32.key) == 384
    else:
        assert int8.compatible_with is None
    assert not (int8_dir / TORCH_FILE).exists()  # no fp32 weights to serve under the int8 name
    with pytest.raises(ArtifactError, match="ONNX Runtime only"):
        load_encoder(int8_dir, backend="torch")


def test_int8_retrieval_on_xray_reports_is_within_two_points_of_fp32(
    pair: tuple[Path, Path], zoo_dirs: tuple[Path, Path]
) -> None:
    data = load_retrieval_set("xray", "val", zoo_dirs[1])
    queries, labels = data.queries[:200], data.query_labels[:200]
    keep = np.isin(data.document_labels, labels)
    documents, doc_labels = [d for d, k in zip(data.documents, keep, strict=True) if k], data.document_labels[keep]
    recall = {}
    for name, directory in zip(("fp32", "int8"), pair, strict=True):
        encoder = load_encoder(directory)
        hits = recall_hits(embed(encoder, queries), labels, embed(encoder, documents), doc_labels, (10,))
        recall[name] = 100 * float(hits[10].mean())
    assert recall["fp32"] > 30  # the task is solvable: a broken encoder would sit near 10/200 = 5%
    assert abs(recall["int8"] - recall["fp32"]) <= 2.0, recall


def test_split_is_fixed_and_disjoint(zoo_dirs: tuple[Path, Path]) -> None:
    val, test = (load_retrieval_set("xray", split, zoo_dirs[1]) for split in ("val", "test"))
    assert (len(val.queries), len(test.queries)) == (552, 828)
    assert not set(val.query_labels) & set(test.query_labels)
    assert list(val.query_labels) == list(load_retrieval_set("xray", "val", zoo_dirs[1]).query_labels)
