"""Indexing-job state for ``SqliteStore`` (mixed in): the job document, its mutable fields, and
progress counted once per batch.

A job is one row: ``doc`` (what was asked, never changed), ``fields`` (state, timestamps, totals:
merged by ``update_job``) and the ``done``/``failed`` counters. ``job_batches`` holds the sequence
number of every batch already counted, which makes ``record_job_batch`` idempotent (a batch redone
after a crash is not counted twice) and tells a resumed job which batches to skip.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from indexer.errors import AlreadyExists

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, doc TEXT NOT NULL, fields TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_batches (job TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (job, seq));
CREATE TABLE IF NOT EXISTS job_errors (
    job TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (job, kind, n)
);
"""
# Mutable fields live apart from the submitted doc; ``state`` is one of them.
MUTABLE = ("state",)
ERRORS_KEPT = 20  # the first errors of a job are kept; ``failed`` counts them all


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def split_job_doc(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(submitted doc, mutable fields)``: the state starts in ``fields``, where every later
    ``update_job`` merges its changes (fields win over the doc when both name a key)."""
    fields = {k: v for k, v in doc.items() if k in MUTABLE}
    return {k: v for k, v in doc.items() if k not in MUTABLE}, fields


class SqliteJobsMixin:
    if TYPE_CHECKING:

        def _txn(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _conn(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def create_job(self, job_id: str, doc: dict[str, Any]) -> None:
        fixed, fields = split_job_doc(doc)
        with self._txn() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO jobs (id, created_at, doc, fields) VALUES (?, ?, ?, ?)",
                (job_id, float(doc.get("created_at", 0.0)), _dumps(fixed), _dumps(fields)),
            )
            if cur.rowcount == 0:
                raise AlreadyExists(f"job '{job_id}' already exists")

    def _job(self, conn: sqlite3.Connection, job_id: str, with_errors: bool) -> dict[str, Any] | None:
        row = conn.execute("SELECT doc, fields, done, failed FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = {**json.loads(row[0]), **json.loads(row[1]), "id": job_id, "done": int(row[2]), "failed": int(row[3])}
        dead = conn.execute("SELECT COUNT(*) FROM job_errors WHERE job = ? AND kind = 'dead'", (job_id,)).fetchone()
        job["dead_letters"] = int(dead[0])
        job["errors"] = []
        if with_errors:
            rows = conn.execute(
                "SELECT entry FROM job_errors WHERE job = ? AND kind = 'error' ORDER BY n", (job_id,)
            ).fetchall()
            job["errors"] = [json.loads(r[0]) for r in rows]
        return job

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            return self._job(conn, job_id, with_errors=True)

    def list_jobs(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY created_at DESC, id").fetchall()]
            jobs = [self._job(conn, i, with_errors=False) for i in ids]
        return [j for j in jobs if j is not None]

    def update_job(
        self, job_id: str, changes: dict[str, Any], states: Collection[str] | None = None
    ) -> dict[str, Any] | None:
        with self._txn() as conn:
            row = conn.execute("SELECT fields FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            fields = json.loads(row[0])
            if states is not None and fields.get("state") not in states:
                return None
            fields.update(changes)
            conn.execute("UPDATE jobs SET fields = ? WHERE id = ?", (_dumps(fields), job_id))
            return self._job(conn, job_id, with_errors=True)

    def record_job_batch(
        self,
        job_id: str,
        seq: int,
        done: int,
        failed: int,
        errors: Sequence[dict[str, Any]] = (),
        dead: Sequence[dict[str, Any]] = (),
    ) -> bool:
        with self._txn() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO job_batches VALUES (?, ?)", (job_id, int(seq)))
            if cur.rowcount == 0:
                return False
            conn.execute("UPDATE jobs SET done = done + ?, failed = failed + ? WHERE id = ?", (done, failed, job_id))
            for kind, entries, cap in (("error", errors, ERRORS_KEPT), ("dead", dead, None)):
                have = conn.execute(
                    "SELECT COUNT(*) FROM job_errors WHERE job = ? AND kind = ?", (job_id, kind)
                ).fetchone()[0]
                keep = list(entries) if cap is None else list(entries)[: max(0, cap - have)]
                conn.executemany(
                    "INSERT INTO job_errors VALUES (?, ?, ?, ?)",
                    [(job_id, have + n, kind, _dumps(e)) for n, e in enumerate(keep)],
                )
            return True

    def job_batches(self, job_id: str) -> set[int]:
        with self._conn() as conn:
            return {int(r[0]) for r in conn.execute("SELECT seq FROM job_batches WHERE job = ?", (job_id,))}

    def job_dead_letters(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT entry FROM job_errors WHERE job = ? AND kind = 'dead' ORDER BY n LIMIT ?", (job_id, limit)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_job(self, job_id: str) -> bool:
        with self._txn() as conn:
            existed = conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
            conn.execute("DELETE FROM job_batches WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM job_errors WHERE job = ?", (job_id,))
        return existed
