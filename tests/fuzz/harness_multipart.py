"""Multipart forms under fuzzing: image upserts (file, id, payload parts), image searches (file, k,
filter) and job uploads (collection, manifest, file, options), sent to the real app.

An input is one request: the first line names the target, the second is the Content-Type header
(its boundary included, so that a mutated boundary is tried too), the rest is the raw body. Beyond
``FuzzApi.send``'s invariant (no exception, no 5xx, the error body), a 2xx answer is checked against
the form as the server's own parser (Starlette's) reads it:

- upsert: ``upserted`` counts the distinct ids (the 'id' parts, else the file names) and each item
  reads back with the payload part that was sent;
- search: at most k hits, numeric scores, hits that exist;
- job upload: the job ends (succeeded, or failed with a reason that is not an internal error), its
  counts add up, and every manifest id it did not report as failed reads back.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from tests.fuzz.api import FuzzApi, item_path
from tests.fuzz.invariant import InvariantBroken
from tests.fuzz.mutators import INTERESTING, ByteMutator, join_head, mutate_json_text, split_head

NAME = "multipart"
TARGETS: dict[str, tuple[str, str]] = {
    "upsert img": ("PUT", "/v1/collections/img/items"),
    "upsert vec": ("PUT", "/v1/collections/vec/items"),
    "search img": ("POST", "/v1/collections/img/search"),
    "search vec": ("POST", "/v1/collections/vec/search"),
    "job": ("POST", "/v1/jobs"),
}
JSON_FIELDS = {b"payload", b"filter", b"options"}
FIELD_NAMES = [b"file", b"id", b"payload", b"k", b"filter", b"collection", b"manifest", b"options", b"extra"]
K_VALUES = [b"abc", b"", b"0", b"-1", b"1", b"10", b"1001", b"1e3", b" 5", b"5 ", b"0x10", b"99999999999999999999999",
            b"1.5", b"NaN", b"\xff", b"\x00"]  # fmt: skip
FILENAMES = [b"a.png", b"", b"../up.png", b"/abs.png", b"a\\b.png", b"x" * 300, b"a\nb.png", b"%41.png",
             b"\xc3\xa9.png", b"manifest.csv", b"manifest.jsonl", b"m.txt", b".hidden"]  # fmt: skip


def target_of(line: bytes) -> str:
    name = line.decode("utf-8", "replace").strip()
    return name if name in TARGETS else sorted(TARGETS)[zlib.crc32(line) % len(TARGETS)]


class MultipartHarness:
    def __init__(self, api: FuzzApi) -> None:
        self.api = api

    def one(self, data: bytes) -> None:
        (line, content_type), body = split_head(data, 2)
        name = target_of(line)
        method, path = TARGETS[name]
        headers = {"content-type": _header_value(content_type)}
        response = self.api.send(method, path, body, headers)
        if not 200 <= response.status_code < 300:
            return
        answer = response.json()
        form = self._form(headers, body)
        if name.startswith("upsert"):
            self._upserted(name.split()[1], form, answer)
        elif name.startswith("search"):
            self._hits(name, answer.get("results"), form)
        else:
            self._job(form, answer)

    def _form(self, headers: dict[str, bytes], body: bytes) -> FormData:
        async def parse() -> FormData:
            async def stream():  # type: ignore[no-untyped-def]
                yield body

            raw = [(name.encode(), value) for name, value in headers.items()]
            return await MultiPartParser(Headers(raw=raw), stream()).parse()

        try:
            return self.api.run_async(parse)
        except MultiPartException as exc:
            raise InvariantBroken(f"the server accepted a form its own parser refuses: {exc}") from exc

    def _upserted(self, collection: str, form: FormData, answer: dict[str, Any]) -> None:
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        ids = [str(i) for i in form.getlist("id")] or [f.filename or f"upload-{n}" for n, f in enumerate(files)]
        payload = json.loads(str(form["payload"])) if "payload" in form else None
        distinct = list(dict.fromkeys(ids))
        if answer.get("upserted") != len(distinct) and not answer.get("skipped"):
            raise InvariantBroken(f"multipart upsert of ids {distinct[:10]} answered {answer}")
        for item_id in distinct:
            self.api.check_item(collection, item_id, payload, None)

    def _hits(self, what: str, hits: Any, form: FormData) -> None:
        try:
            k = int(str(form.get("k", 10)))
        except ValueError as exc:
            raise InvariantBroken(f"{what}: answered 200 to k={form.get('k')!r}") from exc
        self.api.check_hits(what, what.split()[1], hits, k)

    def _job(self, form: FormData, answer: dict[str, Any]) -> None:
        job = self.api.finished_job(str(answer["id"]))
        if job["state"] != "succeeded":
            return
        manifest, errors = form.get("manifest"), job.get("errors") or []
        if not isinstance(manifest, UploadFile) or len(errors) < job.get("failed", 0):
            return  # only the first errors of a job are kept: the ids that failed are not all known
        if (Path(manifest.filename or "").suffix.lower() or ".jsonl") not in (".jsonl", ".ndjson"):
            return
        failed = {str(error.get("id")) for error in errors if isinstance(error, dict)}
        collection = str(form["collection"])
        for line, item_id in _jsonl_ids(self.api.run_async(manifest.read)):
            if item_id in failed or line in failed:
                continue
            got = self.api.send("GET", item_path(collection, item_id))
            if got.status_code != 200:
                raise InvariantBroken(
                    f"job {job['id']} succeeded without failing {item_id!r}, which reads back {got.status_code}"
                )

    def check(self) -> None:
        self.api.restart()


def _header_value(raw: bytes) -> bytes:
    """The Content-Type line as an HTTP server would pass it on: bytes (obs-text included), without
    the control characters that its parser refuses before any application sees the request."""
    return bytes(b for b in raw.strip() if (b >= 0x20 and b != 0x7F) or b == 0x09)


def _jsonl_ids(data: bytes) -> list[tuple[str, str]]:
    """(``line N``, id) of the manifest lines that Python's json reads as objects with a string or
    integer id. The job may still refuse a line (its parser is stricter: NaN, lone surrogates); it
    then names the failure by its line, so either name counts as reported."""
    out = []
    for number, line in enumerate(data.decode("utf-8-sig", "replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        item_id = record.get("id") if isinstance(record, dict) else None
        if isinstance(item_id, str | int) and not isinstance(item_id, bool) and str(item_id):
            out.append((f"line {number}", str(item_id)))
    return out


# -- mutation ---------------------------------------------------------------------------------
def _boundary(content_type: bytes) -> bytes | None:
    match = re.search(rb'boundary="?([^";\s]+)"?', content_type)
    return match.group(1) if match else None


def _parts(body: bytes, boundary: bytes) -> list[tuple[bytes, bytes]] | None:
    """(headers, content) of each part, or None when the body is not a well-formed form."""
    chunks = body.split(b"--" + boundary)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        return None
    parts = []
    for chunk in chunks[1:-1]:
        inner = chunk[2:-2]
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n") or b"\r\n\r\n" not in inner:
            return None
        headers, content = inner.split(b"\r\n\r\n", 1)
        parts.append((headers, content))
    return parts


def _serialise(parts: list[tuple[bytes, bytes]], boundary: bytes) -> bytes:
    out = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts)
    return out + b"--" + boundary + b"--\r\n"


def _field(headers: bytes) -> bytes:
    match = re.search(rb'name="([^"]*)"', headers)
    return match.group(1) if match else b""


def _mutate_part(headers: bytes, content: bytes, rng: random.Random, fallback: ByteMutator) -> tuple[bytes, bytes]:
    name = _field(headers)
    if b"filename=" in headers and rng.random() < 0.3:
        return re.sub(rb'filename="[^"]*"', b'filename="' + rng.choice(FILENAMES) + b'"', headers), content
    if name in JSON_FIELDS:
        return headers, mutate_json_text(content, rng, fallback, 8192)
    if name == b"k":
        return headers, rng.choice(K_VALUES)
    if name == b"id" or name == b"collection":
        value = rng.choice([v for v in INTERESTING if isinstance(v, str)])
        return headers, value.encode("utf-8", "surrogatepass")
    if name == b"manifest" and rng.random() < 0.6:
        lines = content.split(b"\n")
        i = rng.randrange(len(lines))
        lines[i] = mutate_json_text(lines[i], rng, fallback, 4096)
        return headers, b"\n".join(lines)
    return headers, fallback(content, max(16, len(content) * 2))


def mutate(data: bytes, max_size: int, seed: int, fallback: ByteMutator) -> bytes:
    rng = random.Random(seed)
    (line, content_type), body = split_head(data, 2)
    boundary = _boundary(content_type)
    parts = _parts(body, boundary) if boundary else None
    if boundary is None or parts is None or rng.random() < 0.2:
        return fallback(data, max_size)
    op = rng.randrange(10)
    if op < 6 and parts:
        i = rng.randrange(len(parts))
        parts[i] = _mutate_part(*parts[i], rng, fallback)
    elif op == 6 and parts:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(parts))
    elif op == 7 and parts:
        del parts[rng.randrange(len(parts))]
    elif op == 8:
        field = rng.choice(FIELD_NAMES)
        value = rng.choice(K_VALUES) if field == b"k" else b'{"a": 1}' if field in JSON_FIELDS else b"x"
        parts.append((b'Content-Disposition: form-data; name="' + field + b'"', value))
    else:
        line = rng.choice(sorted(TARGETS)).encode()
    out = join_head([line, content_type], _serialise(parts, boundary))
    return out if len(out) <= max_size else fallback(data, max_size)


def make(api: FuzzApi | None = None) -> MultipartHarness:
    assert api is not None, "the multipart harness drives the app"
    return MultipartHarness(api)
