"""Payload filters: parse a filter document and answer it from an in-memory inverted index.

Filter syntax (all conditions are ANDed; keys are payload fields, dotted for nesting)::

    {"color": "red"}                        equality (also {"color": {"eq": "red"}})
    {"tag": {"in": ["a", "b"]}}             membership
    {"price": {"gte": 10, "lt": 20}}        numeric range (gt, gte, lt, lte)

A list-valued field matches when any element matches, as in Qdrant. The index maps
``field -> typed value -> set of FAISS ids`` so equality and ``in`` are set look-ups and ranges scan
only the distinct numeric values of one field.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from indexer.errors import InvalidInput
from indexer.validation import check_json_value

RANGE_OPS = ("gt", "gte", "lt", "lte")
FILTER_DEPTH = 3  # {field: {"in": [values]}}: the deepest a valid filter goes
Key = tuple[str, Any]


def _typed(value: Any) -> Key | None:
    """Make 1 == 1.0 but keep True, 1 and "1" apart; None for unindexable values.

    Never raises: it runs on every payload while a collection opens, and a value written before
    payloads were checked (an integer too big for a float) must not stop the collection opening.
    """
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return ("n", number) if math.isfinite(number) else None
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


def _leaves(payload: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Key]]:
    for name, value in payload.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _leaves(value, f"{path}.")
            continue
        for element in value if isinstance(value, list) else [value]:
            key = _typed(element)
            if key is not None:
                yield path, key


def validate_filter(flt: Any) -> None:
    """Raise InvalidInput with a precise message for malformed filters.

    The values obey the payload rules (``check_json_value``: finite numbers, int64 integers), so
    every value a filter compares with converts to a float, as the indexed payload values do.
    """
    if not isinstance(flt, dict):
        raise InvalidInput("filter must be an object of {field: condition}")
    check_json_value(flt, "filter", FILTER_DEPTH)
    for field, cond in flt.items():
        if not isinstance(cond, dict):
            _check_scalar(field, "equality", cond)
            continue
        unknown = set(cond) - {"eq", "in", *RANGE_OPS}
        if unknown or not cond:
            raise InvalidInput(
                f"filter on '{field}': unknown operator(s) {sorted(unknown) or '{}'}; use eq, in, gt, gte, lt, lte"
            )
        if "eq" in cond:
            _check_scalar(field, "'eq'", cond["eq"])
        if "in" in cond and not isinstance(cond["in"], list):  # FILTER_DEPTH keeps its values scalars
            raise InvalidInput(f"filter on '{field}': 'in' takes a list")
        for op in RANGE_OPS:
            if op in cond and (isinstance(cond[op], bool) or not isinstance(cond[op], int | float)):
                raise InvalidInput(f"filter on '{field}': '{op}' takes a number")


def _check_scalar(field: str, what: str, value: Any) -> None:
    if _typed(value) is None:
        raise InvalidInput(f"filter on '{field}': {what} needs a string, number, bool or null")


class PayloadIndex:
    def __init__(self) -> None:
        self._postings: dict[str, dict[Key, set[int]]] = defaultdict(lambda: defaultdict(set))
        # Tuples, not lists: a tuple of atoms is untracked by the cyclic GC, so 1M items add nothing
        # to each full collection (lists did: 60k empty lists were a fifth of a 72 ms gen-2 pause).
        self._keys: dict[int, tuple[tuple[str, Key], ...]] = {}

    def add(self, int_id: int, payload: dict[str, Any] | None) -> None:
        leaves = tuple(_leaves(payload)) if payload else ()
        self._keys[int_id] = leaves
        for field, key in leaves:
            self._postings[field][key].add(int_id)

    def remove(self, int_id: int) -> None:
        for field, key in self._keys.pop(int_id, ()):
            ids = self._postings[field][key]
            ids.discard(int_id)
            if not ids:
                del self._postings[field][key]

    def _condition(self, field: str, cond: Any) -> set[int]:
        postings = self._postings.get(field, {})
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        result: set[int] | None = None

        def narrow(ids: set[int]) -> None:
            nonlocal result
            result = ids if result is None else result & ids

        if "eq" in cond:
            key = _typed(cond["eq"])
            narrow(set(postings.get(key, set())) if key else set())
        if "in" in cond:
            found: set[int] = set()
            for value in cond["in"]:
                key = _typed(value)
                if key is not None:
                    found |= postings.get(key, set())
            narrow(found)
        bounds = {op: float(cond[op]) for op in RANGE_OPS if op in cond}
        if bounds:
            found = set()
            for (kind, value), ids in postings.items():
                if kind == "n" and _in_range(value, bounds):
                    found |= ids
            narrow(found)
        return result if result is not None else set()

    def match(self, flt: dict[str, Any]) -> set[int]:
        """FAISS ids of items whose payload satisfies every condition of ``flt``."""
        result: set[int] | None = None
        for field, cond in flt.items():
            ids = self._condition(field, cond)
            result = ids if result is None else result & ids
            if not result:
                return set()
        return result if result is not None else set(self._keys)


def _in_range(value: float, bounds: dict[str, float]) -> bool:
    return (
        ("gt" not in bounds or value > bounds["gt"])
        and ("gte" not in bounds or value >= bounds["gte"])
        and ("lt" not in bounds or value < bounds["lt"])
        and ("lte" not in bounds or value <= bounds["lte"])
    )
