"""JSON bodies under fuzzing: upserts (payloads, vectors, ids), searches (filters, k), batch
searches, collection creation, job submission and embedding, sent to the real app.

An input is one request: its first line names the target (``upsert vec``, ``search txt``...; an
unknown line picks a target by its hash, so byte mutations of the line still land somewhere), the
rest is the body, sent as ``application/json`` (``@JOBROOT@`` in it stands for the server-side job
sources folder, which is a temporary directory). Beyond ``FuzzApi.send``'s invariant (no exception,
no 5xx, the error body), each 2xx answer is checked against the body that was sent:

- upsert: ``upserted`` counts the distinct ids, and each item reads back with the payload (and, for
  client vectors, the float32 vector) that was sent, the last occurrence of a repeated id winning;
- create: the collection reads back as created and can be deleted again;
- search and batch search: at most k hits each, numeric scores, hits that exist;
- job: the job ends (succeeded or failed with a reason, never an internal error), its counts add up;
- embed: one finite vector per input.
"""

from __future__ import annotations

import math
import random
import zlib
from typing import Any
from urllib.parse import quote

from tests.fuzz.api import FuzzApi
from tests.fuzz.invariant import InvariantBroken
from tests.fuzz.mutators import ByteMutator, join_head, loads, mutate_json_text, split_head

NAME = "json"
TARGETS: dict[str, tuple[str, str]] = {
    "create": ("POST", "/v1/collections"),
    "upsert vec": ("PUT", "/v1/collections/vec/items"),
    "upsert cos": ("PUT", "/v1/collections/cos/items"),
    "upsert txt": ("PUT", "/v1/collections/txt/items"),
    "upsert img": ("PUT", "/v1/collections/img/items"),
    "search vec": ("POST", "/v1/collections/vec/search"),
    "search cos": ("POST", "/v1/collections/cos/search"),
    "search txt": ("POST", "/v1/collections/txt/search"),
    "batch vec": ("POST", "/v1/collections/vec/search/batch"),
    "batch txt": ("POST", "/v1/collections/txt/search/batch"),
    "job": ("POST", "/v1/jobs"),
    "embed": ("POST", "/v1/embed"),
}
JOB_ROOT = b"@JOBROOT@"  # in a saved body: the app's allowed root for server-side job sources (a temp dir)
CLIENT_VECTORS = {"vec", "cos"}  # collections without an encoder: the vector read back is the one sent


def target_of(line: bytes) -> str:
    name = line.decode("utf-8", "replace").strip()
    if name in TARGETS:
        return name
    return sorted(TARGETS)[zlib.crc32(line) % len(TARGETS)]


class JsonHarness:
    def __init__(self, api: FuzzApi) -> None:
        self.api = api

    def one(self, data: bytes) -> None:
        head, body = split_head(data, 1)
        name = target_of(head[0])
        method, path = TARGETS[name]
        body = body.replace(JOB_ROOT, str(self.api.job_root).encode())
        response = self.api.send(method, path, body)
        if not 200 <= response.status_code < 300:
            return
        try:
            answer = response.json()
        except ValueError as exc:
            raise InvariantBroken(f"{name}: {response.status_code} with a body that is not JSON") from exc
        sent = _parsed(name, body)
        kind, _, collection = name.partition(" ")
        if kind == "upsert":
            self._upserted(collection, sent, answer)
        elif kind == "create":
            self._created(answer)
        elif kind == "search":
            self.api.check_hits(name, collection, answer.get("results"), sent.get("k", 10))
        elif kind == "batch":
            self._batch(name, sent, answer)
        elif kind == "job":
            self.api.finished_job(str(answer["id"]))
        elif kind == "embed":
            _embedded(sent, answer)

    def _upserted(self, collection: str, sent: dict[str, Any], answer: dict[str, Any]) -> None:
        last: dict[str, dict[str, Any]] = {}
        for item in sent["items"]:
            last[str(item["id"])] = item
        if answer.get("upserted") != len(last):
            raise InvariantBroken(f"upsert of {len(last)} distinct ids answered {answer}")
        for item_id, item in last.items():
            vector = item.get("vector") if collection in CLIENT_VECTORS else None
            self.api.check_item(collection, item_id, item.get("payload"), vector)

    def _created(self, answer: dict[str, Any]) -> None:
        name = answer["name"]
        where = f"/v1/collections/{quote(name, safe='').replace('.', '%2E')}"
        got = self.api.send("GET", where)
        if got.status_code != 200 or _stable(got.json()) != _stable(answer):
            raise InvariantBroken(
                f"collection {name!r} was created ({answer}) but reads back {got.status_code}: {got.text}"
            )
        deleted = self.api.send("DELETE", where)
        if deleted.status_code != 204:
            raise InvariantBroken(
                f"collection {name!r} was created but DELETE answered {deleted.status_code}: {deleted.text}"
            )
        self.api.forget(name)
        if (again := self.api.send("GET", where)).status_code != 404:
            raise InvariantBroken(f"collection {name!r} still answers {again.status_code} after its delete")

    def _batch(self, what: str, sent: dict[str, Any], answer: dict[str, Any]) -> None:
        results, queries = answer.get("results"), sent["queries"]
        if not isinstance(results, list) or len(results) != len(queries):
            raise InvariantBroken(f"{what}: {len(queries)} queries, results {str(results)[:300]}")
        for query, hits in zip(queries, results, strict=True):
            self.api.check_hits(what, what.split()[-1], hits, query.get("k", 10))

    def check(self) -> None:
        self.api.restart()


def _parsed(name: str, body: bytes) -> dict[str, Any]:
    """The body the server accepted, read by Python's json (NaN and big integers included)."""
    try:
        sent = loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvariantBroken(f"{name}: the server accepted a body Python's json cannot read ({exc})") from exc
    if not isinstance(sent, dict):
        raise InvariantBroken(f"{name}: the server accepted a body that is not a JSON object: {body[:200]!r}")
    return sent


def _stable(info: dict[str, Any]) -> dict[str, Any]:
    """A collection's description less the fields an index build may change between two reads."""
    return {k: v for k, v in info.items() if k not in ("building", "active_index", "nprobe", "indexed")}


def _embedded(sent: dict[str, Any], answer: dict[str, Any]) -> None:
    vectors = answer.get("vectors")
    if not isinstance(vectors, list) or (answer.get("faces") is None and len(vectors) != len(sent["inputs"])):
        raise InvariantBroken(f"embed of {len(sent['inputs'])} inputs answered {str(answer)[:300]}")
    for vector in vectors:
        if len(vector) != answer.get("dim") or not all(isinstance(x, float) and math.isfinite(x) for x in vector):
            raise InvariantBroken(f"embed answered a vector that is not {answer.get('dim')} finite floats")


def mutate(data: bytes, max_size: int, seed: int, fallback: ByteMutator) -> bytes:
    rng = random.Random(seed)
    head, body = split_head(data, 1)
    if rng.random() < 0.05:  # the same body against another endpoint
        head = [rng.choice(sorted(TARGETS)).encode()]
    return join_head(head, mutate_json_text(body, rng, fallback, max_size - len(head[0]) - 1))


def make(api: FuzzApi | None = None) -> JsonHarness:
    assert api is not None, "the JSON harness drives the app"
    return JsonHarness(api)
