"""The ingest path's pure pieces: encoder inputs and their one set of reasons, culprit finding, face
output splitting, and the rows (faces, NaN output, kept sources, vectors) every writer gets."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.errors import InvalidInput
from indexer.ingest import (
    NO_FACE,
    NOT_FINITE,
    Destination,
    Embedded,
    Failure,
    Item,
    Plan,
    encode_inputs,
    encoder_input,
    ingest,
    labelled,
    plan,
    preprocess_each,
    refusal,
    rows_of,
    split_output,
)
from indexer.kept_sources import KeptSource
from models.core.encoder import Encoder, encode
from models.core.errors import InputTooLarge, InvalidEncoderInput
from models.core.registry import load_encoder
from tests.service.test_jobs_support import TEXT, TEXT_LIMIT, build_text


def png(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def dest(modality: str | None, encoder: str | None = "enc@1", keep: bool = False, dim: int = 3) -> Destination:
    return Destination("c", encoder, modality, lambda _v: dim, keep_sources=keep, max_pixels=10_000)


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    models = tmp_path_factory.mktemp("models")
    build_text(models)
    return load_encoder(models / TEXT)


@pytest.mark.parametrize(
    ("kind", "value", "modality", "reason"),
    [
        ("text", "hello", "image", "this collection's encoder takes image input, not text"),
        ("text", "hello", "record", "this collection's encoder takes record input, not text"),
        ("image", png(), "text", "this collection's encoder takes text input, not images"),
        ("record", {"a": 1}, "face", "this collection's encoder takes face input, not records"),
        ("path", "caf\xe9 cr\xe8me".encode("latin-1"), "text", "file is not UTF-8 text: invalid continuation byte"),
        ("image", "not base64!!", "image", "image is not valid base64"),
    ],
)
def test_one_reason_per_misfit(kind: str, value: object, modality: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as plain:
        encoder_input(kind, value, modality, 10_000)
    assert plain.value.message == reason
    with pytest.raises(InvalidInput) as named:
        encoder_input(kind, value, modality, 10_000, "query")
    assert named.value.message == f"query: {reason}"


def test_inputs_each_modality_takes() -> None:
    record = {"b": 2, "a": "x"}
    canonical = '{"a":"x","b":2}'
    assert encoder_input("record", record, "record", 1) == canonical
    assert encoder_input("path", json.dumps(record, indent=2).encode(), "record", 1) == canonical  # a file
    assert encoder_input("path", "héllo".encode(), "text", 1) == "héllo"
    image = png()
    for value in (image, base64.b64encode(image).decode(), "data:image/png;base64," + base64.b64encode(image).decode()):
        assert encoder_input("image", value, "face", 10_000) == image
    assert encoder_input("path", image, "image", 10_000) == image
    with pytest.raises(InvalidInput, match=r"^file is not a JSON record"):
        encoder_input("path", b"{nope", "record", 1)


def test_image_errors_keep_their_class_when_named() -> None:
    """A too-large image stays ``InputTooLarge`` (413) once named after its item; a corrupt one 422."""
    with pytest.raises(InputTooLarge, match=r"^item 'big': image is 200x200 = 40000 pixels; the limit is 10000$"):
        encoder_input("image", png(200), "image", 10_000, "item 'big'")
    error = labelled(InvalidEncoderInput("image is empty or not bytes"), "item 'e'")
    assert type(error) is InvalidEncoderInput and error.message == str(error) == "item 'e': image is empty or not bytes"
    assert type(refusal(Failure("x", "ValueError: odd", ValueError("odd")))) is InvalidInput
    assert refusal(Failure("x", "ValueError: odd", ValueError("odd"))).message == "item 'x': ValueError: odd"


def test_plan_checks_ids_vectors_and_inputs_before_encoding() -> None:
    items = [
        Item("t", "text", "fine"),
        Item("v", "vector", [1.0, 2.0, 3.0], version="old@1"),
        Item("short", "vector", [1.0, 2.0]),
        Item("nan", "vector", [1.0, float("nan"), 3.0]),
        Item("", "text", "no id"),
        Item("img", "image", png()),
    ]
    planned = plan(items, dest("text"))
    assert planned.inputs == {0: "fine"}
    assert planned.vectors[1].dtype == np.float32 and planned.vectors[1].tolist() == [1.0, 2.0, 3.0]
    reasons = {items[n].id: f.reason for n, f in planned.failures.items()}
    assert reasons == {
        "short": "vector has dimension 2, collection expects 3",
        "nan": "vector 0 contains NaN or Inf",
        "": "item ids must be non-empty strings",
        "img": "this collection's encoder takes text input, not images",
    }
    no_encoder = plan([Item("t", "text", "x"), Item("v", "vector", [0.0, 0.0, 1.0])], dest(None, encoder=None))
    assert no_encoder.failures[0].reason.startswith("collection 'c' has no encoder") and 1 in no_encoder.vectors


def test_culprits_fail_alone_and_the_rest_is_one_batch(text_encoder: Encoder) -> None:
    inputs = ["red heart", "x" * (TEXT_LIMIT + 1), "cat face", ""]
    good, batch, errors = preprocess_each(text_encoder, inputs)
    assert good == [0, 2] and sorted(errors) == [1, 3]
    assert str(errors[1]) == f"input 0: text has {TEXT_LIMIT + 1} characters; the limit is {TEXT_LIMIT}"
    assert batch is not None
    alone = text_encoder.preprocess(["red heart", "cat face"])
    assert batch.keys() == alone.keys() and all(np.array_equal(batch[k], alone[k]) for k in alone)
    results = encode_inputs(text_encoder, inputs)
    assert [r.error is not None for r in results] == [False, True, False, True]
    np.testing.assert_array_equal(np.vstack([results[0].vectors, results[2].vectors]),
                                  encode(text_encoder, ["red heart", "cat face"]))  # fmt: skip


def test_face_output_splits_by_owner_with_boxes() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = {"_owner": np.array([0, 0, 2]), "_boxes": np.array([[1.04, 2, 3, 4], [5, 6, 7, 8.06], [0, 0, 1, 1]]),
             "_scores": np.array([0.9, 0.8, 0.99])}  # fmt: skip
    first, none, third = split_output(vectors, batch, 3)
    np.testing.assert_array_equal(first.vectors, vectors[:2])
    assert first.faces == [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9}, {"box": [5.0, 6.0, 7.0, 8.1], "score": 0.8}]
    assert none.vectors.shape == (0, 4) and none.faces == []
    assert third.faces == [{"box": [0.0, 0.0, 1.0, 1.0], "score": 0.99}]
    plain = split_output(vectors, {"input": np.zeros((3, 1))}, 3)
    assert [p.vectors.tolist() for p in plain] == [[row] for row in vectors.tolist()] and plain[0].faces == []


def test_face_rows_ids_payloads_and_failures() -> None:
    items = [Item("group", "image", b"a", {"album": 1}), Item("sky", "image", b"b"), Item("odd", "image", b"c"),
             Item("bad", "image", b"d")]  # fmt: skip
    box = {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9}
    embedded = [
        Embedded(np.ones((2, 3), dtype=np.float32), [box, {**box, "score": 0.5}]),
        Embedded(np.zeros((0, 3), dtype=np.float32)),
        Embedded(np.array([[np.nan, 0, 0]], dtype=np.float32), [box]),
        Embedded(np.zeros((0, 0), dtype=np.float32), error=InvalidEncoderInput("image could not be decoded")),
    ]
    planned = Plan(inputs={n: item.value for n, item in enumerate(items)})
    rows = rows_of(items, planned, embedded, dest("face", keep=True))
    assert rows.ids == ["group#face0", "group#face1"] and rows.done == 1
    assert rows.payloads == [{"album": 1, "source_id": "group", "face": box},
                             {"album": 1, "source_id": "group", "face": {**box, "score": 0.5}}]  # fmt: skip
    assert rows.sources == [None, None] and rows.versions == ["enc@1", "enc@1"]  # faces keep no source
    assert [(f.id, f.reason) for f in rows.failures] == [
        ("sky", NO_FACE),
        ("odd", NOT_FINITE),
        ("bad", "image could not be decoded"),
    ]
    assert refusal(rows.failures[2]).message == "item 'bad': image could not be decoded"


def test_rows_keep_sources_in_item_order(text_encoder: Encoder) -> None:
    items = [Item("a", "text", "red heart", {"p": 1}), Item("v", "vector", [0.0] * 16), Item("b", "path", b"cat face")]
    target = Destination("c", TEXT, "text", lambda _v: 16, keep_sources=True)
    rows = ingest(items, text_encoder, target)
    assert rows.ids == ["a", "v", "b"] and rows.done == 3 and not rows.failures
    assert rows.sources == [KeptSource("text", b"red heart"), None, KeptSource("text", b"cat face")]
    assert rows.payloads == [{"p": 1}, None, None] and rows.versions == [TEXT, TEXT, TEXT]
    expected = encode(text_encoder, ["red heart", "cat face"])
    np.testing.assert_array_equal(rows.matrix(16)[[0, 2]], expected)
    records = rows_of([Item("r", "record", {"b": 1})], Plan(inputs={0: '{"b":1}'}),
                      [Embedded(np.ones((1, 2), dtype=np.float32))], dest("record", keep=True))  # fmt: skip
    assert records.sources == [KeptSource.record({"b": 1})]
    image = rows_of([Item("i", "path", b"png")], Plan(inputs={0: b"png"}), [Embedded(np.ones((1, 2)))],
                    dest("image", keep=True))  # fmt: skip
    assert image.sources == [KeptSource("image", b"png")]
    assert rows_of(items[:1], Plan(inputs={0: "x"}), [Embedded(np.ones((1, 2)))], dest("text")).sources == [None]


def test_no_encoder_needed_for_vectors_only(tmp_path: Path) -> None:
    rows = ingest([Item("v", "vector", [1, 2, 3])], None, dest(None, encoder=None))
    assert rows.ids == ["v"] and rows.versions == [None] and rows.matrix(3).dtype == np.float32


def test_plan_refuses_what_could_not_be_logged() -> None:
    """Issue 16: ids, payloads and version labels are checked with the vectors, item by item, so
    the REST upsert and every job runner refuse them before anything reaches the log."""
    items = [
        Item("ok", "vector", [1, 2, 3], payload={"x": 1}),
        Item("huge", "vector", [1, 2, 3], payload={"x": 10**400}),
        Item("nan", "vector", [1, 2, 3], payload={"x": float("nan")}),
        Item("a\nb", "vector", [1, 2, 3]),
        Item("bools", "vector", [True, False, True]),
        Item("label", "vector", [1, 2, 3], version="v1\n"),
    ]
    planned = plan(items, dest(None, encoder=None))
    assert list(planned.vectors) == [0]
    reasons = {items[n].id: f.reason for n, f in planned.failures.items()}
    assert reasons == {
        "huge": "payload 'x': integer outside the 64-bit range (-2^63 to 2^63-1)",
        "nan": "payload 'x': NaN and Infinity are not allowed (numbers must be finite)",
        "a\nb": "item id 'a\\nb' contains a control character or lone surrogate: it could not be addressed",
        "bools": "vector must hold numbers, not bool values",
        "label": "encoder_version 'v1\\n' contains a control character or lone surrogate",
    }
