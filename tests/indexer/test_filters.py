"""Payload filters select exactly the items whose payload matches."""

from __future__ import annotations

from typing import Any

import pytest

from indexer.errors import InvalidInput
from indexer.filters import PayloadIndex, validate_filter

PAYLOADS: dict[int, dict[str, Any] | None] = {
    1: {"color": "red", "price": 5, "tags": ["a", "b"], "meta": {"brand": "x"}},
    2: {"color": "blue", "price": 15.5, "tags": ["b"], "meta": {"brand": "y"}},
    3: {"color": "red", "price": 25, "tags": [], "in_stock": True},
    4: {"color": "green", "price": "25", "in_stock": 1},
    5: None,
}


@pytest.fixture
def index() -> PayloadIndex:
    idx = PayloadIndex()
    for int_id, payload in PAYLOADS.items():
        idx.add(int_id, payload)
    return idx


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"color": "red"}, {1, 3}),
        ({"color": {"eq": "blue"}}, {2}),
        ({"color": {"in": ["red", "green"]}}, {1, 3, 4}),
        ({"price": {"gte": 5, "lt": 25}}, {1, 2}),
        ({"price": {"gt": 5}}, {2, 3}),  # "25" is a string, never a number
        ({"price": {"lte": 25}, "color": "red"}, {1, 3}),
        ({"tags": "b"}, {1, 2}),
        ({"meta.brand": "y"}, {2}),
        ({"in_stock": True}, {3}),  # True and 1 stay distinct
        ({"in_stock": 1}, {4}),
        ({"price": 15.5}, {2}),
        ({"color": "purple"}, set()),
        ({"missing": "x"}, set()),
        ({}, {1, 2, 3, 4, 5}),
    ],
)
def test_match(index: PayloadIndex, flt: dict[str, Any], expected: set[int]) -> None:
    assert index.match(flt) == expected


def test_remove_forgets_item(index: PayloadIndex) -> None:
    index.remove(1)
    assert index.match({"color": "red"}) == {3}
    index.add(1, {"color": "blue"})
    assert index.match({"color": "blue"}) == {1, 2}


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"a": {"like": "x"}}, "unknown operator"),
        ({"a": {"in": "x"}}, "'in' takes a list"),
        ({"a": {"gt": "5"}}, "'gt' takes a number"),
        ({"a": [1, 2]}, "equality needs"),
        ({"a": {}}, "unknown operator"),
        ({"x": 10**400}, "filter 'x': integer outside the 64-bit range"),  # issue 16: was a 500
        ({"x": {"gte": 10**400}}, r"filter 'x\.gte': integer outside the 64-bit range"),
        ({"x": {"in": [1, 2**64]}}, "integer outside the 64-bit range"),
        ({"x": {"lt": float("nan")}}, "NaN and Infinity are not allowed"),
        ({"x": {"eq": float("inf")}}, "NaN and Infinity are not allowed"),
        ({"x": {"eq": [1]}}, "'eq' needs a string, number"),
        ({"x": {"in": [{"y": 1}]}}, r"filter 'x\.in\[0\]': nested deeper than 3 levels"),
        ({"x": {"eq": {"a": {"b": 1}}}}, "nested deeper than 3 levels"),
        ([{"x": 1}], "filter must be an object"),
    ],
)
def test_invalid_filters_are_explained(flt: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_filter(flt)


def test_values_no_float_can_hold_are_unindexable_not_fatal() -> None:
    """A payload logged before integers were limited to int64 must not stop its collection opening:
    the index (built on every start) leaves such a value out instead of raising OverflowError."""
    index = PayloadIndex()
    index.add(1, {"x": 10**400, "y": 2})
    index.add(2, {"x": 3, "y": 2})
    assert index.match({"y": 2}) == {1, 2}
    assert index.match({"x": {"gte": 0}}) == {2}
