"""Input validation: vectors (lists converted, float32 matrices passed through without a copy, numbers
only), payloads (finite JSON within the limits), ids, names, and the one JSON loader for client text."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from indexer.errors import InvalidInput, LimitExceeded
from indexer.validation import (
    MAX_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    as_matrix,
    check_id,
    check_ids,
    check_json_value,
    check_name,
    check_payload,
    check_payloads,
    check_version,
    load_json,
)


def test_float32_matrix_is_checked_not_copied() -> None:
    x = np.ones((3, 4), dtype=np.float32)
    assert as_matrix(x, 4) is x
    with pytest.raises(InvalidInput, match="dimension 4, collection expects 5"):
        as_matrix(x, 5)
    x[2, 1] = np.nan
    with pytest.raises(InvalidInput, match="vector 2 contains NaN or Inf"):
        as_matrix(x, 4)


def test_lists_are_converted_and_checked() -> None:
    out = as_matrix([[1, 2], [3, 4]], 2)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InvalidInput, match="float32 range"):
        as_matrix([[1e39, 0]], 2)


def test_vectors_hold_numbers_not_booleans_or_strings() -> None:
    assert as_matrix([1, 2.5, np.float32(3), np.int64(4)], 4).tolist() == [[1, 2.5, 3, 4]]
    for bad, kind in (([True, False, True, False], "bool"), ([1.0, True, 0, 0], "bool"), (["1", 0, 0, 0], "str"),
                      ([[1.0, 0, 0, 0], [0, 0, 0, None]], "NoneType")):  # fmt: skip
        with pytest.raises(InvalidInput, match=f"must hold numbers, not {kind} values"):
            as_matrix(bad, 4)
    with pytest.raises(InvalidInput, match="must hold numbers, not bool"):
        as_matrix(np.array([[True, False]]), 2)
    with pytest.raises(InvalidInput, match="must be a list of numbers"):
        as_matrix([[10**400, 0]], 2)  # too big for a float64: refused, not OverflowError


@pytest.mark.parametrize(
    "raw",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1', '"\\ud800"', "[" * 10_000 + "]" * 10_000],
)
def test_load_json_refuses_what_json_does_not_allow_and_never_recurses(raw: str) -> None:
    with pytest.raises(InvalidInput, match=r"^filter is not valid JSON: "):
        load_json(raw, "filter")


def test_load_json_keeps_big_integers_exact_and_infinity_visible() -> None:
    """Big integers and 1e400 parse (exactly / as inf), so the value checks can refuse them by name."""
    assert load_json('{"x": ' + "1" + "0" * 400 + "}", "payload") == {"x": 10**400}
    assert load_json('{"x": 1e400}', "payload") == {"x": float("inf")}
    assert load_json(b'{"a": [1, 2.5, "\\u00e9", true, null]}', "payload") == {"a": [1, 2.5, "é", True, None]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"x": 10**400}, "payload 'x': integer outside the 64-bit range"),
        ({"x": 2**63}, "payload 'x': integer outside the 64-bit range"),
        ({"a": {"b": [0, -(2**63) - 1]}}, r"payload 'a\.b\[1\]': integer outside the 64-bit range"),
        ({"x": float("nan")}, "payload 'x': NaN and Infinity are not allowed"),
        ({"x": [float("inf")]}, r"payload 'x\[0\]': NaN and Infinity"),
        ({"x": float("-inf")}, "NaN and Infinity"),
        ([1, 2], "payload must be a JSON object"),
        ("text", "payload must be a JSON object"),
        ({"x": {1: "a"}}, "payload 'x': object keys must be strings"),
        ({"x": b"bytes"}, "payload 'x': bytes is not a JSON value"),
        ({"x": np.float32(1)}, "float32 is not a JSON value"),
        ({"x": "\ud800"}, "payload: text must be valid Unicode"),
    ],
)
def test_payloads_that_could_not_be_logged_or_filtered_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_payload(payload)


def test_payload_limits() -> None:
    edge = {"x": [2**63 - 1, -(2**63), 1.5e308, "é" * 10, True, None, {"y": []}]}
    check_payload(edge)
    check_payload(None)
    deepest: dict[str, Any] = {}
    node = deepest
    for _ in range(MAX_PAYLOAD_DEPTH - 1):
        node["a"] = {}
        node = node["a"]
    check_payload(deepest)  # exactly MAX_PAYLOAD_DEPTH levels
    node["a"] = {}
    with pytest.raises(InvalidInput, match=f"nested deeper than {MAX_PAYLOAD_DEPTH} levels"):
        check_payload(deepest)
    check_payload({"t": "x" * (MAX_PAYLOAD_BYTES - 20)})
    with pytest.raises(LimitExceeded, match=f"the limit is {MAX_PAYLOAD_BYTES}"):
        check_payload({"t": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(InvalidInput, match=r"^payload 1 'x': integer outside"):
        check_payloads([{"x": 1}, {"x": 2**64}])


def test_check_json_value_walks_deep_values_without_recursion() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested deeper than 3 levels"):
        check_json_value(deep, "filter", 3)


@pytest.mark.parametrize("item_id", ["a\nb", "abc\n", "\x00", "tab\there", "del\x7f", "c1\x85", "lone\ud800", ""])
def test_ids_with_control_characters_are_refused(item_id: str) -> None:
    with pytest.raises(InvalidInput, match=r"control character|non-empty"):
        check_ids(["fine", item_id])


def test_ids_that_are_fine() -> None:
    check_ids(["a", "a b", "dir/file.png", "x#face0", "Zürich ☃ 東京 🚀", "a" * MAX_ID_LENGTH])
    with pytest.raises(InvalidInput, match="longer than"):
        check_id("a" * (MAX_ID_LENGTH + 1))
    for dots in (".", ".."):  # a URL path segment clients resolve away
        with pytest.raises(InvalidInput, match="cannot be addressed in a URL"):
            check_id(dots)
    check_ids(["...", ".a", "a/../b"])  # sent as one encoded segment, these stay as they are
    check_version(None)
    check_version("minilm-l6@1")
    with pytest.raises(InvalidInput, match="encoder_version 'v1\\\\n' contains a control character"):
        check_version("v1\n")


@pytest.mark.parametrize("name", ["abc\n", "abc\r", "\nabc", "a" * 65, "-abc", "a b", "", "é"])
def test_collection_names_are_matched_in_full(name: str) -> None:
    with pytest.raises(InvalidInput, match="collection name must be"):
        check_name(name)


def test_good_collection_names() -> None:
    for name in ("abc", "A-b_c9", "a" * 64):
        check_name(name)
