"""Typed answers of REST API v1, as the client returns them.

Fields are declared in the order the server sends them, and unknown fields are kept (``extra``), so
``to_json()`` gives back what the server answered, and a newer server's extra fields are not lost on an
older client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The answer as the server sent it: its field names, its extra fields, no defaults it left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Collection(Answer):
    name: str
    dim: int
    metric: str
    encoder: str | None
    index: str
    count: int
    indexed: int
    active_index: str
    nprobe: int | None
    building: bool
    created_at: float
    keep_sources: bool = False


class Item(Answer):
    id: str
    payload: dict[str, Any] | None
    encoder_version: str | None
    vector: list[float] | None = None


class Skipped(Answer):
    id: str
    reason: str


class UpsertResult(Answer):
    upserted: int
    skipped: list[Skipped] = Field(default_factory=list, description="face images in which no face was found")


class Hit(Answer):
    id: str
    score: float = Field(description="higher is better for every metric")
    payload: dict[str, Any] | None
    encoder_version: str | None


class SearchResult(Answer):
    results: list[Hit]
    took_ms: float


class BatchSearchResult(Answer):
    results: list[list[Hit]] = Field(description="results[i] answers queries[i]")
    took_ms: float


class Face(Answer):
    input: int
    box: list[float]
    score: float


class Embeddings(Answer):
    encoder: str
    dim: int
    vectors: list[list[float]]
    faces: list[Face] | None = None


class Verification(Answer):
    same: bool
    distance: float
    threshold: float
    encoder: str


class Cluster(Answer):
    size: int
    ids: list[str]


class Clusters(Answer):
    clusters: list[Cluster]
    unclustered: int
    threshold: float


class JobSource(Answer):
    type: str = Field(description="directory | manifest | upload | backfill")
    path: str | None = None


class JobError(Answer):
    id: str
    reason: str


class Job(Answer):
    id: str
    collection: str
    source: JobSource
    options: dict[str, Any] = Field(default_factory=dict)
    runner: str | None = None
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    total: int | None = None
    done: int = 0
    failed: int = 0
    items_per_s: float | None = None
    eta_s: float | None = None
    errors: list[JobError] = Field(default_factory=list, description="the first failures, with their reasons")
    dead_letters: int = 0
    message: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def processed(self) -> int:
        return self.done + self.failed


class RetrievalScores(Answer):
    top1: float
    mAP: float


class CompatReport(Answer):
    """The compatibility gate's cross-test of the new encoder against one gallery version."""

    old: str | None = None
    new: str | None = None
    compat_dims: int | None = None
    n: int
    old_old: RetrievalScores
    new_old: RetrievalScores
    new_new: RetrievalScores
    criterion_met: bool
    negative_flips: float
    negative_flips_new_new: float | None = None


class Migration(Answer):
    """One entry of a collection's migration history: a migration (``kind`` migrate) or a rollback."""

    id: int
    kind: str
    from_: str | None = Field(alias="from")
    to: str
    at: float
    forced: bool | None = None
    gate: str | None = Field(default=None, description="passed | forced")
    eval_source: str | None = Field(default=None, description="request | collection | card | missing")
    reports: dict[str, CompatReport] = Field(default_factory=dict, description="per gallery version")
    backfill: str | None = None
    backfill_job: str | None = None
    cancelled_backfills: list[str] | None = None
    unsearchable: dict[str, int] | None = Field(default=None, description="rollback: items per version not found")


class MigrationTask(Answer):
    """A migration between independently trained encoders (method fuse, adapter, transform or auto):
    calibration, fitting and the switch run on the server; poll it until ``state`` is not running."""

    id: str
    collection: str
    to: str
    method: str
    state: str = Field(description="running | succeeded | refused | failed")
    phase: str = Field(description="collecting | encoding | fitting | publishing | switching | done")
    progress: dict[str, int]
    error: str | None = None
    report: dict[str, Any] | None = Field(default=None, description="R@10 of every setting on held-out inputs")
    migration: Migration | None = Field(default=None, description="the history entry, once switched")


class MigrationResult(Answer):
    migration: Migration | None = Field(default=None, description="the history entry (None while a task runs)")
    task: MigrationTask | None = Field(default=None, description="a rollback restoring a backfill's vectors first")
    active: str | None


class Segment(Answer):
    encoder_version: str | None
    dim: int
    indexed: int


class MigrationHistory(Answer):
    active: str | None
    dim: int
    versions: dict[str, int] = Field(description="items per encoder version")
    segments: list[Segment] = Field(default_factory=list, description="one index per encoder version")
    history: list[Migration]


class EvalSetInfo(Answer):
    size: int
    labels: int = Field(description="distinct labels")
    updated_at: float | None = None


class Health(Answer):
    status: str
    collections: int | None = None
