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
    ],
)
def test_invalid_filters_are_explained(flt: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_filter(flt)
