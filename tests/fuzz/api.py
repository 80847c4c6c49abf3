"""The API under fuzzing: the real app in-process over its own data directory, and the invariant.

Every fuzz harness that speaks HTTP goes through ``FuzzApi.send``, which asserts what must hold for
*any* request: the server answers (no exception escapes the app), with a status below 500, and an
error answer carries the one error body ``{"error": {"code", "message"}}``. The harnesses add the
write invariant on top: a 2xx write is readable back, exactly, right away and after a restart.

The app is the one ``ers serve`` runs (``create_app`` and its lifespan). Starlette's ``TestClient``
runs the lifespan and the event loop; requests go through httpx's ``ASGITransport`` on that loop,
because it builds the ASGI scope as uvicorn does (the path percent-decoded once), while the
TestClient decodes it twice (an id '%41' would be looked up as 'A'). No sockets: an input costs a
few milliseconds. The encoders are tiny ones built here (the job tests' builders), so no download
is needed and the text and image paths run for real.
"""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fuzz.invariant import InvariantBroken
from tests.service.test_jobs_support import IMAGE, TEXT, build_image, build_text, png

T = TypeVar("T")

# The fixture collections, created at start; inputs address them by name.
VECTOR_DIM = 4
COLLECTIONS: dict[str, dict[str, Any]] = {
    "vec": {"dim": VECTOR_DIM, "metric": "l2"},  # vectors given by the client, stored as sent
    "cos": {"dim": VECTOR_DIM, "metric": "cosine", "index": "HNSW8"},
    "txt": {"encoder": TEXT, "keep_sources": True},  # text embedded by the tiny encoder, sources kept
    "img": {"encoder": IMAGE},
}
TERMINAL_JOB_STATES = {"succeeded", "failed", "cancelled"}
JOB_DEADLINE_S = 20.0
# Items whose readback is compared across a restart (the most recent acknowledged writes).
TRACKED_LIMIT = 500
HITS_CHECKED = 5  # hits of a search read back one by one


def item_path(collection: str, item_id: str) -> str:
    """The URL path of one item, every character escaped (dots too, so that an id such as '..' is not
    folded away as a dot segment by the client: it is the server's handling that is under test)."""
    return f"/v1/collections/{collection}/items/{quote(item_id, safe='').replace('.', '%2E')}"


def same_json_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 == 1.0 (the store may give back either), but True is not 1 and NaN is
    never equal (a NaN that reads back as null is a broken write)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


_MODELS: list[Path] = []  # the tiny encoders, built once per process and copied into each data dir


def _built_models() -> Path:
    if not _MODELS:
        models = Path(tempfile.mkdtemp(prefix="ers-fuzz-models-"))
        atexit.register(shutil.rmtree, models, True)
        build_text(models)
        build_image(models)
        _MODELS.append(models)
    return _MODELS[0]


class FuzzApi:
    """The app over a private data directory, with the fixture collections and encoders in place."""

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ers-fuzz-")) if root is None else root
        self.data_dir = self.root / "data"
        self.job_root = self.root / "jobsrc"  # ERS_ALLOWED_ROOTS: server-side job sources live here
        self.client: TestClient | None = None
        self.http: httpx.AsyncClient | None = None
        # (collection, id) -> (payload, vector or None), in write order: what must read back the same
        self.tracked: dict[tuple[str, str], tuple[Any, list[float] | None]] = {}
        self.requests = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FuzzApi:
        models = self.data_dir / "models"
        if not models.is_dir():
            shutil.copytree(_built_models(), models)
            self._job_sources()
        self._open()
        for name, body in COLLECTIONS.items():
            if self._raw("GET", f"/v1/collections/{name}").status_code == 404:
                created = self._raw("POST", "/v1/collections", content=json.dumps({"name": name, **body}).encode())
                if created.status_code != 201:
                    raise RuntimeError(f"fixture collection {name}: {created.status_code} {created.text}")
        return self

    def _job_sources(self) -> None:
        """Server-side sources a fuzzed JSON job may name (``@JOBROOT@/docs`` in a saved body)."""
        docs = self.job_root / "docs"
        docs.mkdir(parents=True)
        for n in range(3):
            (docs / f"doc-{n}.txt").write_text(f"server document {n}")
        pics = self.job_root / "pics"
        pics.mkdir()
        for n in range(2):
            (pics / f"pic-{n}.png").write_bytes(png(n))
        lines = [{"id": f"job-m{n}", "text": f"manifest line {n}", "payload": {"n": n}} for n in range(3)]
        (self.job_root / "texts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        (self.job_root / "vectors.csv").write_text('id,vector,payload\njob-c0,"[1,2,3,4]","{""n"": 0}"\n')

    def settings(self) -> Settings:
        return Settings(
            data_dir=self.data_dir,
            allowed_roots=[self.job_root],
            max_body_bytes=4 << 20,
            max_image_pixels=1_000_000,
            batch_wait_ms=0.5,  # one request at a time: waiting for a fuller encoder batch only costs time
            snapshot_every=200,  # snapshots and their reload are exercised within a short run
            wal_segment_bytes=256 << 10,
        )

    def _open(self) -> None:
        app = create_app(self.settings())
        client = TestClient(app)
        client.__enter__()  # the lifespan: the store, collections, encoders and job runner are built
        self.client = client
        # raise_app_exceptions: an error no handler answered reaches the harness with its traceback
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://ers.fuzz")

    def _shut(self) -> None:
        if self.client is not None:
            if self.http is not None:
                self.run_async(self.http.aclose)
            client = self.client
            self.client = self.http = None
            client.__exit__(None, None, None)

    def close(self) -> None:
        self._shut()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start the app over the same data directory: every collection must open again, and
        everything readable before must read back the same (the log, snapshots and store agree)."""
        before = self._readback_all()
        listed = self._collection_counts()
        self._shut()
        try:
            self._open()
        except Exception as exc:  # the start-up itself failed: the worst outcome an input can have
            raise InvariantBroken(f"the server did not start again over the fuzzed data: {exc!r}") from exc
        ready = self._raw("GET", "/readyz")
        if ready.status_code != 200:
            raise InvariantBroken(f"/readyz after restart: {ready.status_code} {ready.text}")
        if (after_counts := self._collection_counts()) != listed:
            raise InvariantBroken(f"collections before restart {listed}, after {after_counts}")
        after = self._readback_all()
        changed = {key: (before[key], after.get(key)) for key in before if after.get(key) != before[key]}
        if changed:
            sample = dict(list(changed.items())[:3])
            raise InvariantBroken(f"{len(changed)} items read back differently after restart, e.g. {sample}")

    def _collection_counts(self) -> dict[str, int]:
        body = self._raw("GET", "/v1/collections").json()
        return {c["name"]: c["count"] for c in body["collections"]}

    def _readback_all(self) -> dict[tuple[str, str], tuple[int, str]]:
        out = {}
        for collection, item_id in self.tracked:
            r = self._raw("GET", item_path(collection, item_id) + "?with_vector=true")
            out[(collection, item_id)] = (r.status_code, r.text)
        return out

    def healthy(self) -> bool:
        """After a failure: does the app still serve every fixture collection, reads and a probe write?
        If not (a collection poisoned by the input), the fuzzer starts over on a fresh data directory."""
        probe = json.dumps({"items": [{"id": "__probe__", "vector": [1.0] * VECTOR_DIM, "payload": {"p": 1}}]})
        try:
            if self._raw("GET", "/readyz").status_code != 200:
                return False
            if any(self._raw("GET", f"/v1/collections/{name}").status_code != 200 for name in COLLECTIONS):
                return False
            wrote = self._raw("PUT", "/v1/collections/vec/items", probe.encode()).status_code == 200
            return wrote and self._raw("DELETE", item_path("vec", "__probe__")).status_code == 200
        except Exception:
            return False

    # -- requests ----------------------------------------------------------------------------
    def _raw(
        self, method: str, path: str, content: bytes = b"", headers: dict[str, bytes] | None = None
    ) -> httpx.Response:
        assert self.client is not None and self.http is not None, "FuzzApi.start() first"
        heads = {"content-type": b"application/json"} if content and headers is None else headers or {}
        raw = [(name.encode(), value) for name, value in heads.items()]  # bytes: sent as they are
        http = self.http

        async def call() -> httpx.Response:
            return await http.request(method, path, content=content or None, headers=raw)

        return self.run_async(call)

    def run_async(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine function on the app's event loop (where the app's own objects live)."""
        assert self.client is not None and self.client.portal is not None, "FuzzApi.start() first"
        return self.client.portal.call(fn)

    def send(
        self, method: str, path: str, content: bytes = b"", headers: dict[str, bytes] | None = None
    ) -> httpx.Response:
        """One request under the invariant: no exception out of the app, no 5xx, errors in the error body."""
        self.requests += 1
        what = f"{method} {path} ({len(content)} bytes)"
        try:
            response = self._raw(method, path, content, headers)
        except Exception as exc:  # raise_app_exceptions: an error no handler answered lands here
            raise InvariantBroken(f"{what}: the app raised {type(exc).__name__}: {exc}"[:2000]) from exc
        if response.status_code >= 500:
            code = _error_code(response)
            raise InvariantBroken(
                f"{what}: answered {response.status_code}: {response.text[:1000]}",
                kind=f"{method} {path.split('?')[0]} answered {response.status_code} {code}",
            )
        if response.status_code >= 400:
            check_error_body(what, response)
        return response

    def check_item(self, collection: str, item_id: str, payload: Any, vector: list[float] | None) -> None:
        """A write the server acknowledged reads back: same id, same payload, and (when the client gave
        the vector) the same float32 vector."""
        path = item_path(collection, item_id)
        got = self.send("GET", path + ("?with_vector=true" if vector is not None else ""))
        if got.status_code != 200:
            raise InvariantBroken(
                f"acknowledged item {item_id!r} of {collection} reads back {got.status_code}: {got.text[:500]}"
            )
        body = got.json()
        if body.get("id") != item_id:
            raise InvariantBroken(f"item {item_id!r} of {collection} reads back as id {body.get('id')!r}")
        if not same_json_value(body.get("payload"), payload):
            raise InvariantBroken(
                f"item {item_id!r} of {collection}: payload sent {payload!r}, read back {body.get('payload')!r}"
            )
        if vector is not None:
            sent = np.asarray(vector, dtype=np.float32)
            back = np.asarray(body.get("vector"), dtype=np.float32)
            if sent.shape != back.shape or not np.array_equal(sent, back):
                raise InvariantBroken(
                    f"item {item_id!r} of {collection}: vector sent {vector}, read back {body.get('vector')}"
                )
        self.tracked.pop((collection, item_id), None)
        self.tracked[(collection, item_id)] = (payload, vector)
        while len(self.tracked) > TRACKED_LIMIT:
            del self.tracked[next(iter(self.tracked))]

    def forget(self, collection: str) -> None:
        """A collection deleted by an input: its items are no longer expected."""
        for key in [k for k in self.tracked if k[0] == collection]:
            del self.tracked[key]

    def check_hits(self, what: str, collection: str, hits: Any, k: Any) -> None:
        """A search answer: at most k hits, each with an id and a numeric score, and hits that exist.
        ``k`` is as the client sent it: the schema's lax mode reads "3", 3.0 and true as integers."""
        try:
            limit = int(k)
        except (TypeError, ValueError):
            limit = 1 << 30
        if not isinstance(hits, list) or len(hits) > limit:
            raise InvariantBroken(f"{what}: results {str(hits)[:300]} for k={k}")
        for hit in hits:
            score = hit.get("score")
            if not isinstance(hit.get("id"), str) or not isinstance(score, int | float) or math.isnan(score):
                raise InvariantBroken(f"{what}: a hit without an id or a numeric score: {hit}")
        for hit in hits[:HITS_CHECKED]:
            got = self.send("GET", item_path(collection, hit["id"]))
            if got.status_code != 200:
                raise InvariantBroken(f"{what}: hit {hit['id']!r} reads back {got.status_code}: {got.text[:300]}")

    def finished_job(self, job_id: str) -> dict[str, Any]:
        """The job at its end: succeeded with counts that add up, or failed with a reason meant for the
        client (a message that starts 'internal error' is an exception the runner did not expect)."""
        job = self.wait_job(job_id)
        message = str(job.get("message") or "")
        if job["state"] == "failed" and (not message or message.startswith("internal error")):
            raise InvariantBroken(
                f"job {job_id} failed without a client-facing reason: {message!r}",
                kind=f"job failed with {re.sub(r'[0-9]+', 'N', message)[:100]!r}",
            )
        if job["state"] == "succeeded" and job.get("done", 0) + job.get("failed", 0) != job.get("total"):
            raise InvariantBroken(f"job {job_id} succeeded with done + failed != total: {job}")
        return job

    def wait_job(self, job_id: str) -> dict[str, Any]:
        """Poll a job to a terminal state; a job that never ends (a dead worker thread) breaks the invariant."""
        deadline = time.monotonic() + JOB_DEADLINE_S
        while True:
            job = self.send("GET", f"/v1/jobs/{job_id}").json()
            if job.get("state") in TERMINAL_JOB_STATES:
                return dict(job)
            if time.monotonic() > deadline:
                raise InvariantBroken(f"job {job_id} still {job.get('state')!r} after {JOB_DEADLINE_S}s: {job}")
            time.sleep(0.002)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no error body)"


def check_error_body(what: str, response: httpx.Response) -> None:
    try:
        error = response.json()["error"]
        ok = isinstance(error["code"], str) and isinstance(error["message"], str)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InvariantBroken(f"{what}: {response.status_code} without the error body: {response.text[:500]}")
