"""Indexing-job state for ``RedisStore`` (mixed in), shared by every API replica and worker.

Keys (under the store's prefix):

* ``{prefix}:jobs``                 sorted set  job id, scored by creation time
* ``{prefix}:job:{id}``             hash  ``doc`` (submitted JSON), ``done``, ``failed``, and one
                                    field per mutable value (``f:state``...), each JSON
* ``{prefix}:job:{id}:batches``     set   sequence numbers of the batches already counted
* ``{prefix}:job:{id}:errors``      list  first errors ``{id, reason}`` (capped)
* ``{prefix}:job:{id}:dead``        list  dead letters ``{id, reason, attempts}``

Compare-and-set updates and once-only batch counting run as Lua scripts: atomic on the server,
so concurrent workers and replicas never lose or double an update. A retried script after a lost
reply is harmless: counting refuses a known batch, and an update re-applies the same values.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from indexer.errors import AlreadyExists
from indexer.store.sqlite_jobs import ERRORS_KEPT, split_job_doc

if TYPE_CHECKING:
    import redis

# KEYS: job hash, jobs zset; ARGV: job id, created_at, field/value pairs (``doc`` first).
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[4]) == 0 then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""
# KEYS: job hash; ARGV: n allowed states, states..., then field/value pairs.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
if n > 0 then
  local state = redis.call('HGET', KEYS[1], 'f:state')
  local ok = false
  for i = 2, n + 1 do if state == ARGV[i] then ok = true end end
  if not ok then return 0 end
end
for i = n + 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
# KEYS: batches set, job hash, errors list, dead list; ARGV: seq, done, failed, cap, n errors, errors..., dead...
_RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'done', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3])
local cap = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local have = redis.call('LLEN', KEYS[3])
for i = 6, 5 + n do
  if have < cap then redis.call('RPUSH', KEYS[3], ARGV[i]); have = have + 1 end
end
for i = 6 + n, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
return 1
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RedisJobsMixin:
    prefix: str

    if TYPE_CHECKING:
        _r: redis.Redis

        def _guard(self, what: str) -> AbstractContextManager[None]: ...

    def _job_key(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}:job:{job_id}" + (f":{part}" if part else "")

    @property
    def _jobs_key(self) -> str:
        return f"{self.prefix}:jobs"

    def create_job(self, job_id: str, doc: dict[str, Any]) -> None:
        fixed, fields = split_job_doc(doc)
        mapping = {"doc": _dumps(fixed), "done": 0, "failed": 0, **{f"f:{k}": _dumps(v) for k, v in fields.items()}}
        key = self._job_key(job_id)
        pairs = [x for k, v in mapping.items() for x in (k, v)]
        with self._guard("create_job"):
            created = self._r.eval(_CREATE, 2, key, self._jobs_key, job_id, float(doc.get("created_at", 0.0)), *pairs)
        if not created:
            raise AlreadyExists(f"job '{job_id}' already exists")

    @staticmethod
    def _assemble(job_id: str, raw: dict[bytes, bytes], dead: int, errors: list[bytes]) -> dict[str, Any] | None:
        if b"doc" not in raw:
            return None
        job: dict[str, Any] = json.loads(raw[b"doc"])
        for field, value in raw.items():
            if field.startswith(b"f:"):
                job[field[2:].decode()] = json.loads(value)
        job.update(id=job_id, done=int(raw.get(b"done", 0)), failed=int(raw.get(b"failed", 0)))
        job.update(dead_letters=dead, errors=[json.loads(e) for e in errors])
        return job

    def _fetch(self, job_ids: Sequence[str], with_errors: bool) -> Iterator[dict[str, Any]]:
        with self._guard("get_job"):
            pipe = self._r.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self._job_key(job_id))
                pipe.llen(self._job_key(job_id, "dead"))
                if with_errors:
                    pipe.lrange(self._job_key(job_id, "errors"), 0, -1)
            replies = pipe.execute()
        step = 3 if with_errors else 2
        for n, job_id in enumerate(job_ids):
            part = replies[n * step : (n + 1) * step]
            job = self._assemble(job_id, part[0], int(part[1]), part[2] if with_errors else [])
            if job is not None:
                yield job

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return next(self._fetch([job_id], with_errors=True), None)

    def list_jobs(self) -> list[dict[str, Any]]:
        with self._guard("list_jobs"):
            ids = [i.decode() for i in self._r.zrevrange(self._jobs_key, 0, -1)]
        return list(self._fetch(ids, with_errors=False))

    def update_job(
        self, job_id: str, changes: dict[str, Any], states: Collection[str] | None = None
    ) -> dict[str, Any] | None:
        allowed = [_dumps(s) for s in states] if states is not None else []
        pairs = [x for k, v in changes.items() for x in (f"f:{k}", _dumps(v))]
        with self._guard("update_job"):
            applied = self._r.eval(_UPDATE, 1, self._job_key(job_id), len(allowed), *allowed, *pairs)
        return self.get_job(job_id) if applied else None

    def record_job_batch(
        self,
        job_id: str,
        seq: int,
        done: int,
        failed: int,
        errors: Sequence[dict[str, Any]] = (),
        dead: Sequence[dict[str, Any]] = (),
    ) -> bool:
        keys = [self._job_key(job_id, "batches"), self._job_key(job_id), self._job_key(job_id, "errors"),
                self._job_key(job_id, "dead")]  # fmt: skip
        args = [int(seq), int(done), int(failed), ERRORS_KEPT, len(errors), *map(_dumps, errors), *map(_dumps, dead)]
        with self._guard("record_job_batch"):
            return bool(self._r.eval(_RECORD, len(keys), *keys, *args))

    def job_batches(self, job_id: str) -> set[int]:
        with self._guard("job_batches"):
            return {int(s) for s in self._r.smembers(self._job_key(job_id, "batches"))}

    def job_dead_letters(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self._guard("job_dead_letters"):
            raw = self._r.lrange(self._job_key(job_id, "dead"), 0, limit - 1)
        return [json.loads(e) for e in raw]

    def delete_job(self, job_id: str) -> bool:
        keys = [self._job_key(job_id, p) for p in ("", "batches", "errors", "dead")]
        with self._guard("delete_job"):
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(*keys)
            pipe.zrem(self._jobs_key, job_id)
            removed, _ = pipe.execute()
        return bool(removed)
