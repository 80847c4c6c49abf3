"""Input checks shared by every write and search path (the service adds HTTP limits on top).

The rule they enforce: nothing the index, the store or the filters cannot hold reaches the
write-ahead log. A logged record is replayed on every start, so a value that breaks replay (an
integer too big for a float, a NaN that JSON cannot carry, an id no URL can address) would break the
collection for good. The REST upsert (JSON and multipart) and every job runner reach these checks
through ``indexer.ingest.plan``; ``indexer.records.encode`` repeats the payload check as the last
line before a record is logged, for callers of ``Collection.upsert`` that bypass ingest.

Limits (documented in the README):

- payloads: a JSON object, at most ``MAX_PAYLOAD_DEPTH`` levels of nesting and ``MAX_PAYLOAD_BYTES``
  of compact UTF-8 JSON; numbers finite, integers within int64 (filters compare numbers as floats:
  a bigger integer overflowed the filter index);
- item ids: 1-``MAX_ID_LENGTH`` characters, no control characters (C0, DEL, C1), no lone
  surrogates, not "." or "..": such an id could be stored but not fetched or deleted by URL (or,
  a surrogate, not encoded as UTF-8);
- collection names: ``COLLECTION_NAME_RE`` over the whole string (``"abc\\n"`` included);
- vectors: numbers only (JSON numbers; booleans and strings are refused), finite, within float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pydantic_core import from_json

from indexer.errors import InvalidInput, LimitExceeded
from indexer.types import COLLECTION_NAME_RE, FloatArray

MAX_ID_LENGTH = 256
MAX_PAYLOAD_DEPTH = 32  # the payload object itself is level 1
MAX_PAYLOAD_BYTES = 65_536  # every payload is held in memory and in the filter index, item by item
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# C0 controls, DEL, C1 controls, and surrogates (only lone ones can occur in a str).
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_JSON_SCALARS = (str, bool, type(None))


def load_json(raw: str | bytes, what: str) -> Any:
    """Parse JSON a client sent as text: a multipart form field, a manifest line or CSV cell, a
    record file. ``InvalidInput`` names ``what`` on any fault.

    It is pydantic-core's parser, the one that reads the REST JSON bodies, so a document means the
    same whichever way it comes: ``NaN``/``Infinity`` refused, lone surrogates refused, nesting
    capped by the parser (about 200 levels, without recursion, so 10,000 levels is a clean error
    rather than ``RecursionError``), and big integers kept exact, for the value checks to refuse
    rather than silently turned into floats. ``1e400`` parses to infinity; ``check_json_value``
    refuses it.
    """
    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc


def check_json_value(value: Any, what: str, max_depth: int = MAX_PAYLOAD_DEPTH) -> None:
    """Refuse a value that is not plain, finite JSON the filters can hold: objects with string keys,
    arrays, strings, booleans, null, finite floats and int64 integers; at most ``max_depth`` levels
    of objects and arrays. Walked with an explicit stack (the depth is the client's choice), first
    quickly; only a value that may be at fault is walked again, to name where."""
    if _plain(value, max_depth):
        return
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth > max_depth:
                raise InvalidInput(f"{_where(what, path)}: nested deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, child in node.items():
                    if not isinstance(key, str):
                        raise InvalidInput(f"{_where(what, path)}: object keys must be strings")
                    stack.append((child, depth + 1, f"{path}.{key}" if path else key))
            else:
                stack.extend((child, depth + 1, f"{path}[{n}]") for n, child in enumerate(node))
        elif isinstance(node, _JSON_SCALARS):
            continue
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                raise InvalidInput(f"{_where(what, path)}: integer outside the 64-bit range (-2^63 to 2^63-1)")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidInput(f"{_where(what, path)}: NaN and Infinity are not allowed (numbers must be finite)")
        else:
            raise InvalidInput(f"{_where(what, path)}: {type(node).__name__} is not a JSON value")


def _plain(value: Any, max_depth: int) -> bool:
    """True when ``value`` certainly passes ``check_json_value`` (the common case, at about a tenth
    of its cost: exact types, no paths); False sends it to the walk that names the fault."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return False
        if type(node) is dict:
            if not all(type(key) is str for key in node):
                return False
            node = node.values()
        for child in node:
            kind = type(child)
            if kind is str or kind is bool or child is None:
                continue
            if kind is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    return False
            elif kind is float:
                if child - child != 0.0:  # NaN or +-Infinity
                    return False
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))
            else:
                return False
    return True


def _where(what: str, path: str) -> str:
    return f"{what} '{path}'" if path else what


def check_payload(payload: Any, what: str = "payload") -> None:
    """A payload is None or a JSON object within the limits above (``LimitExceeded`` for its size)."""
    if payload is None:
        return
    if not isinstance(payload, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    check_json_value(payload, what, MAX_PAYLOAD_DEPTH)
    try:
        size = len(orjson.dumps(payload))
    except TypeError as exc:  # a lone surrogate in a string: not encodable as UTF-8, so not loggable
        raise InvalidInput(f"{what}: text must be valid Unicode ({exc})") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise LimitExceeded(f"{what} is {size} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES}")


def check_payloads(payloads: Sequence[Any]) -> None:
    for row, payload in enumerate(payloads):
        check_payload(payload, f"payload {row}")


def check_ids(ids: Sequence[str]) -> None:
    for item_id in ids:
        check_id(item_id)


def check_id(item_id: Any) -> None:
    if not isinstance(item_id, str) or not item_id:
        raise InvalidInput("item ids must be non-empty strings")
    if len(item_id) > MAX_ID_LENGTH:
        raise InvalidInput(f"item id longer than {MAX_ID_LENGTH} characters")
    if _CONTROL_OR_SURROGATE.search(item_id):
        raise InvalidInput(
            f"item id {item_id!a} contains a control character or lone surrogate: it could not be addressed"
        )
    if item_id in (".", ".."):  # URL clients resolve these path segments away, even percent-encoded
        raise InvalidInput(f"item id '{item_id}' cannot be addressed in a URL")


def check_version(version: Any) -> None:
    """An ``encoder_version`` label (None: the collection's encoder): logged with the item and
    returned with it, so held to the id rules."""
    if version is None:
        return
    if not isinstance(version, str) or not version or len(version) > MAX_ID_LENGTH:
        raise InvalidInput(f"encoder_version must be a string of 1-{MAX_ID_LENGTH} characters")
    if _CONTROL_OR_SURROGATE.search(version):
        raise InvalidInput(f"encoder_version {version!a} contains a control character or lone surrogate")


def check_name(name: Any) -> None:
    """A collection name: it becomes a directory name and a Redis key part, and appears in URLs."""
    if not isinstance(name, str) or not COLLECTION_NAME_RE.fullmatch(name):
        raise InvalidInput("collection name must be 1-64 letters, digits, '_' or '-', starting alphanumeric")


def check_number_types(vectors: Any, what: str = "vector") -> None:
    """Vectors hold numbers: ints and floats (Python's or NumPy's), never booleans or strings, which
    ``np.asarray(..., float64)`` would quietly turn into 0/1 or parse. One level of nesting (a list
    of rows) is looked into; the shape is ``as_matrix``'s to check."""
    if isinstance(vectors, np.ndarray):
        if vectors.dtype.kind not in "fiu":
            raise InvalidInput(f"{what} must hold numbers, not {vectors.dtype}")
        return
    if not isinstance(vectors, list | tuple):
        return  # a scalar or other object: np.asarray and the shape check refuse it
    types = set(map(type, vectors))  # C speed: a few distinct types, checked below
    if types & {list, tuple, np.ndarray}:  # a list of rows
        types = set()
        for row in vectors:
            if isinstance(row, np.ndarray):
                check_number_types(row, what)
            elif isinstance(row, list | tuple):
                types.update(map(type, row))
            else:
                types.add(type(row))
    for kind in types:
        if issubclass(kind, bool | np.bool_) or not issubclass(kind, int | float | np.integer | np.floating):
            raise InvalidInput(f"{what} must hold numbers, not {kind.__name__} values")


def as_matrix(vectors: Any, dim: int, what: str = "vector") -> FloatArray:
    """Validate and convert to a C-contiguous float32 ``(n, dim)`` matrix.

    A float32 matrix (already validated upstream, e.g. stacked query vectors) is only checked for
    shape and finiteness, not copied through float64 again: this runs on every search.
    """
    if isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.ndim == 2:
        if vectors.shape[1] != dim:
            raise InvalidInput(f"{what} has dimension {vectors.shape[1]}, collection expects {dim}")
        if not np.isfinite(vectors).all():
            row = int(np.argwhere(~np.isfinite(vectors))[0][0])
            raise InvalidInput(f"{what} {row} contains NaN or Inf")
        return np.ascontiguousarray(vectors)
    check_number_types(vectors, what)
    try:
        arr = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{what} must be a list of numbers") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInput(f"{what} is empty; expected {dim} numbers")
    if arr.shape[1] != dim:
        raise InvalidInput(f"{what} has dimension {arr.shape[1]}, collection expects {dim}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InvalidInput(f"{what} {row} contains NaN or Inf")
    if (np.abs(arr) > np.finfo(np.float32).max).any():
        raise InvalidInput(f"{what} has values outside the float32 range")
    return np.ascontiguousarray(arr, dtype=np.float32)
