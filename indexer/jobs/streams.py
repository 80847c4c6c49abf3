"""The Redis Streams wire format between the server and ``ers worker`` processes.

* ``{prefix}:jobs:tasks`` (group ``workers``): one entry per batch, written by the server, which
  reads the source (it alone holds the allowed roots), so workers need only Redis and the model
  artefacts. Fields: job, seq, target (collection, dim, encoder), max_pixels, entries (JSON, file
  bytes base64).
* ``{prefix}:jobs:results`` (group ``server``): one entry per encoded batch, written by a worker:
  job, seq, task (the task entry id), ids, vectors (raw little-endian float32), payloads,
  versions, done, failures, dead.

The server writes a result through ``Collection.upsert``, counts it, and only then XACKs (and
deletes) both the result and the task: a task stays pending until its vectors are durable.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from indexer.jobs.encode import Target
from indexer.jobs.model import Encoded, Entry, Failure, Item
from indexer.kept_sources import KeptSource
from indexer.thumbnails import Thumbnail

TASK_GROUP = "workers"
RESULT_GROUP = "server"
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_VEC = np.dtype("<f4")


def tasks_key(prefix: str) -> str:
    return f"{prefix}:jobs:tasks"


def results_key(prefix: str) -> str:
    return f"{prefix}:jobs:results"


def posted_key(prefix: str, job_id: str) -> str:
    """Set of batch seqs whose result a worker has posted (a reclaimed one is not encoded again)."""
    return f"{prefix}:job:{job_id}:posted"


def attempts_key(prefix: str, job_id: str) -> str:
    """Hash seq -> deliveries begun, and ``err:{seq}`` -> the last error (for dead letters)."""
    return f"{prefix}:job:{job_id}:attempts"


def connect(url: str) -> redis.Redis:
    # The socket timeout must exceed the XREADGROUP block time; one quick reconnect, then errors.
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1))


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pack_task(job_id: str, seq: int, target: Target, entries: list[Entry], max_pixels: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for e in entries:
        if isinstance(e, Failure):
            rows.append({"failure": e.to_json()})
        else:
            value = base64.b64encode(e.value).decode() if isinstance(e.value, bytes) else e.value
            rows.append({"id": e.id, "kind": e.kind, "value": value, "payload": e.payload})
    head = {"collection": target.collection, "dim": target.dim, "encoder": target.encoder, "keep": target.keep_sources}
    return {"job": job_id, "seq": seq, "target": json.dumps(head), "max_pixels": max_pixels,
            "entries": json.dumps(rows, ensure_ascii=False)}  # fmt: skip


def unpack_task(fields: dict[bytes, bytes]) -> tuple[str, int, Target, list[Entry], int]:
    head = json.loads(fields[b"target"])
    entries: list[Entry] = []
    for row in json.loads(fields[b"entries"]):
        if "failure" in row:
            entries.append(Failure(**row["failure"]))
        else:
            value = base64.b64decode(row["value"]) if row["kind"] == "path" else row["value"]
            entries.append(Item(row["id"], row["kind"], value, row["payload"]))
    # tasks queued before "keep" existed: keep the sources (the server drops them if not wanted)
    target = Target(head["collection"], int(head["dim"]), head["encoder"], bool(head.get("keep", True)))
    return _s(fields[b"job"]), int(fields[b"seq"]), target, entries, int(fields[b"max_pixels"])


def pack_result(job_id: str, task_id: str, enc: Encoded, dead: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "job": job_id,
        "seq": enc.seq,
        "task": task_id,
        "ids": json.dumps(enc.ids, ensure_ascii=False),
        "dim": int(enc.vectors.shape[1]) if enc.vectors.ndim == 2 else 0,
        "vectors": np.ascontiguousarray(enc.vectors, dtype=_VEC).tobytes(),
        "payloads": json.dumps(enc.payloads, ensure_ascii=False),
        "versions": json.dumps(enc.versions),
        "done": enc.done,
        "failures": json.dumps([f.to_json() for f in enc.failures], ensure_ascii=False),
        "dead": json.dumps(dead, ensure_ascii=False),
        # the raw inputs, for collections that keep sources (the server never sees a worker's inputs)
        "sources": json.dumps(None if enc.sources is None else [s and s.to_json() for s in enc.sources]),
        "thumbnails": json.dumps(None if enc.thumbnails is None else [t and t.to_json() for t in enc.thumbnails]),
    }


def unpack_result(fields: dict[bytes, bytes]) -> tuple[str, str, Encoded, list[dict[str, Any]]]:
    ids = json.loads(fields[b"ids"])
    dim = int(fields[b"dim"])
    vectors = np.frombuffer(fields[b"vectors"], dtype=_VEC).astype(np.float32).reshape(len(ids), dim)
    enc = Encoded(
        seq=int(fields[b"seq"]),
        ids=ids,
        vectors=vectors,
        payloads=json.loads(fields[b"payloads"]),
        versions=json.loads(fields[b"versions"]),
        done=int(fields[b"done"]),
        failures=[Failure(**f) for f in json.loads(fields[b"failures"])],
    )
    sources = json.loads(fields.get(b"sources", b"null"))  # absent: a worker of an older version
    if isinstance(sources, list) and len(sources) == len(ids):
        enc.sources = [KeptSource.from_json(s) for s in sources]
    thumbnails = json.loads(fields.get(b"thumbnails", b"null"))  # absent: a worker of an older version
    if isinstance(thumbnails, list) and len(thumbnails) == len(ids):
        enc.thumbnails = [Thumbnail.from_json(t) for t in thumbnails]
    return _s(fields[b"job"]), _s(fields[b"task"]), enc, json.loads(fields[b"dead"])
