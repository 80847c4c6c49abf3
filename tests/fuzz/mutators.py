"""Structure-aware mutations for the JSON, multipart and manifest harnesses.

libFuzzer's byte mutations alone rarely keep a JSON body parseable, so most executions would end in
the parser's first 422. These mutators parse the input, change one node of its tree to a value
chosen for what ERS must refuse or hold (huge integers, NaN, deep nesting, control characters,
booleans for numbers, duplicate ids, unknown operators...) and write it back. A share of calls still
goes to plain byte mutation (``fallback``), which keeps the parsers' own error paths covered.

Every function here is pure Python over ``random.Random(seed)``: the atheris entry points pass
``atheris.Mutate`` as the fallback, and the same code can run without atheris.
"""

from __future__ import annotations

import copy
import json
import random
import re
import zlib
from collections.abc import Callable
from typing import Any

ByteMutator = Callable[[bytes, int], bytes]

DEEP = 3000  # past CPython's default recursion limit (1000) when nested as lists or objects

# Values chosen for the validation rules: what must be refused, and what must round-trip exactly.
INTERESTING: list[Any] = [
    0,
    -1,
    1,
    2,
    3,
    4,
    10,
    1000,
    1001,
    10**6,
    2**31,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**400,
    -(10**400),
    0.5,
    -0.0,
    1e-320,
    1e308,
    3.5e38,
    -3.5e38,
    1e39,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    "",
    " ",
    "a",
    "abc",
    "abc\n",
    "\n",
    "\r\n",
    "\t",
    "a\x00b",
    "\x7f",
    "\u2028",
    "é",
    "😀",
    "\ud800",
    "..",
    "../x",
    "/",
    "a/b",
    "%41",
    "x" * 300,
    "1",
    "1e400",
    "NaN",
    "abc\n",
    [],
    {},
    [1, 2, 3, 4],
    [1.0, 2.0, 3.0, 4.0],
    [True, False, True, False],
    ["1", "2", "3", "4"],
    [1, 2, 3],
    [1, 2, 3, 4, 5],
    [[1, 2, 3, 4]],
    [None, None, None, None],
    [1e39, 0, 0, 0],
    {"eq": 1},
    {"in": [1, "a", True, None]},
    {"gte": 1, "lt": 5},
    {"gt": 10**400},
    {"lte": float("nan")},
    {"in": []},
    {"in": 1},
    {"bogus": 1},
    {"eq": {"x": 1}},
    {"a": {"b": {"c": 1}}},
]
KEYS = [
    "id",
    "vector",
    "text",
    "image",
    "record",
    "payload",
    "encoder_version",
    "k",
    "filter",
    "items",
    "queries",
    "eq",
    "in",
    "gt",
    "gte",
    "lt",
    "lte",
    "name",
    "dim",
    "metric",
    "encoder",
    "index",
    "keep_sources",
    "collection",
    "source",
    "type",
    "path",
    "options",
    "batch_size",
    "pattern",
    "inputs",
    "a.b",
    "",
    "\n",
]


def deep_marker(depth: int, rng: random.Random) -> str:
    """A placeholder that ``dumps`` writes as a list or object nested ``depth`` deep: the nesting
    itself cannot live in the tree, because Python's json and ``copy`` recurse (and stop near 1000)."""
    return f"__ers_fuzz_deep_{depth}_{rng.choice('lo')}__"


def _expand_deep(text: bytes) -> bytes:
    for match in set(re.findall(rb'"__ers_fuzz_deep_(\d+)_([lo])__"', text)):
        depth, kind = int(match[0]), match[1]
        opening, closing = (b"[", b"]") if kind == b"l" else (b'{"a":', b"}")
        nested = opening * depth + b"1" + closing * depth
        text = text.replace(b'"__ers_fuzz_deep_' + match[0] + b"_" + kind + b'__"', nested)
    return text


def _paths(doc: Any, limit: int = 400) -> list[list[Any]]:
    """Paths (lists of keys/indexes) to the nodes of ``doc``, breadth first, at most ``limit``."""
    out: list[list[Any]] = [[]]
    queue: list[tuple[list[Any], Any]] = [([], doc)]
    while queue and len(out) < limit:
        path, node = queue.pop(0)
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in children:
            out.append([*path, key])
            queue.append(([*path, key], child))
    return out


def _get(doc: Any, path: list[Any]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def mutate_value(doc: Any, rng: random.Random) -> Any:
    """One structural change somewhere in ``doc`` (a fresh copy; ``doc`` is left alone)."""
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    path = rng.choice(paths)
    node = _get(doc, path)
    op = rng.randrange(9)
    if op == 0:  # replace with an interesting value
        return _set(doc, path, copy.deepcopy(rng.choice(INTERESTING)))
    if op == 1:  # replace with a copy of another node (ids, vectors and payloads travel)
        return _set(doc, path, copy.deepcopy(_get(doc, rng.choice(paths))))
    if op == 2 and isinstance(node, dict):  # add a key
        node[rng.choice(KEYS)] = copy.deepcopy(rng.choice(INTERESTING))
        return doc
    if op == 3 and isinstance(node, dict) and node:  # drop or rename a key
        key = rng.choice(list(node))
        value = node.pop(key)
        if rng.random() < 0.5:
            node[rng.choice(KEYS)] = value
        return doc
    if op == 4 and isinstance(node, list) and node:  # duplicate or drop an element
        i = rng.randrange(len(node))
        if rng.random() < 0.6:
            node.insert(i, copy.deepcopy(node[i]))
        else:
            del node[i]
        return doc
    if op == 5:  # nest deeply
        return _set(doc, path, deep_marker(rng.choice([10, 100, 900, 1100, DEEP]), rng))
    if op == 6 and isinstance(node, int | float) and not isinstance(node, bool):  # nudge a number
        return _set(doc, path, rng.choice([node + 1, node - 1, -node, node * 10 ** rng.randrange(1, 400), node / 3]))
    if op == 7 and isinstance(node, str):  # change a string
        pos = rng.randrange(len(node) + 1)
        piece = rng.choice(["\n", "\x00", "\x1f", "/", "..", "%", "#", "?", " ", "é", "\ud800", "x" * 64])
        return _set(doc, path, node[:pos] + piece + node[pos:])
    if op == 8 and isinstance(node, list):  # a long list
        return _set(doc, path, node * rng.choice([2, 10, 100]))
    return _set(doc, path, copy.deepcopy(rng.choice(INTERESTING)))


def dumps(doc: Any, rng: random.Random) -> bytes:
    """JSON text the way clients write it; NaN and Infinity stay (as Python's json writes them), and
    lone surrogates are escaped (``ensure_ascii``) so the bytes stay valid UTF-8."""
    indent = 1 if rng.random() < 0.1 else None
    text = json.dumps(doc, allow_nan=True, ensure_ascii=rng.random() < 0.8, indent=indent)
    return _expand_deep(text.encode("utf-8", "surrogatepass"))


def loads(text: bytes) -> Any:
    """Python's json reads NaN, Infinity and any integer; deep nesting raises RecursionError."""
    return json.loads(text.decode("utf-8", "surrogatepass"))


def mutate_json_text(text: bytes, rng: random.Random, fallback: ByteMutator, max_size: int) -> bytes:
    """A JSON document changed structurally (or, when it does not parse, byte-wise)."""
    if rng.random() < 0.25:
        return fallback(text, max_size)
    try:  # a document nested close to the recursion limit may parse, and then not copy or write
        doc = loads(text)
        for _ in range(1 + (rng.random() < 0.3)):
            doc = mutate_value(doc, rng)
        out = dumps(doc, rng)
    except (ValueError, RecursionError, OverflowError):
        return fallback(text, max_size)
    return out if len(out) <= max_size else fallback(text, max_size)


def split_head(data: bytes, lines: int) -> tuple[list[bytes], bytes]:
    """The first ``lines`` header lines of a corpus input and the rest (the body)."""
    parts = data.split(b"\n", lines)
    while len(parts) <= lines:
        parts.append(b"")
    return parts[:lines], parts[lines]


def join_head(head: list[bytes], body: bytes) -> bytes:
    return b"\n".join([*head, body])


def bytes_fallback(data: bytes, max_size: int) -> bytes:
    """A byte mutation without atheris (used when replaying or testing the mutators): flip, insert or cut."""
    rng = random.Random(zlib.crc32(data))
    buf = bytearray(data)
    op = rng.randrange(3)
    if op == 0 and buf:
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
    elif buf:
        del buf[rng.randrange(len(buf)) :]
    return bytes(buf[:max_size])
