"""Binary encoding of write-ahead-log records (no pickle: a JSON header plus raw float32 bytes)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from indexer.types import FloatArray
from indexer.validation import check_payloads

# A record's items get FAISS ids ``offset << ITEM_BITS | i``: unique forever, derived from the log
# alone (no counter to persist), and every version of an item gets a new id.
ITEM_BITS = 20
MAX_ITEMS_PER_RECORD = (1 << ITEM_BITS) - 1
_LEN = struct.Struct("<I")


@dataclass
class LogRecord:
    op: Literal["upsert", "delete"]
    ids: list[str]
    # upsert: the FAISS id each item had before (-1 when new); delete: the FAISS ids removed.
    replaces: list[int]
    payloads: list[dict[str, Any] | None]
    versions: list[str | None]
    vectors: FloatArray | None = None  # (n, dim) raw float32, upsert only

    def int_ids(self, offset: int) -> np.ndarray:
        """FAISS ids of the items this upsert writes, derived from the record's log offset."""
        return (np.int64(offset) << np.int64(ITEM_BITS)) | np.arange(len(self.ids), dtype=np.int64)


def encode(record: LogRecord) -> bytes:
    """The record's bytes. An upsert's payloads are checked here too (``check_payloads``), the last
    line before the log: replay must be able to apply every record it is given, on every start."""
    if record.op == "upsert":
        check_payloads(record.payloads)
    header = {
        "op": record.op,
        "ids": record.ids,
        "replaces": record.replaces,
        "payloads": record.payloads,
        "versions": record.versions,
        "shape": list(record.vectors.shape) if record.vectors is not None else None,
    }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    body = record.vectors.astype("<f4", copy=False).tobytes() if record.vectors is not None else b""
    return _LEN.pack(len(head)) + head + body


def decode(data: bytes) -> LogRecord:
    (head_len,) = _LEN.unpack_from(data, 0)
    header = json.loads(data[_LEN.size : _LEN.size + head_len])
    vectors = None
    if header["shape"] is not None:
        rows, dim = header["shape"]
        body = data[_LEN.size + head_len :]
        vectors = np.frombuffer(body, dtype="<f4").reshape(rows, dim).astype(np.float32)
    return LogRecord(
        op=header["op"],
        ids=header["ids"],
        replaces=header["replaces"],
        payloads=header["payloads"],
        versions=header["versions"],
        vectors=vectors,
    )
