"""The only reader of the environment: every ``ERS_*`` variable is a field here."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from indexer.index_policy import IndexOptions
from indexer.jobs.model import JobOptions
from models.core.batching import Budget
from service.runtime.encoders import HubOptions


def loopback_refusal(host: str) -> str | None:
    """Why ``host`` is not a loopback-only bind address, or None when it is.

    The host is resolved, not read as text: ``127.evil.example`` is a name anyone can point anywhere,
    and ``localhost`` may be mapped to any address in /etc/hosts. Every address it resolves to must be
    a loopback one; a name that does not resolve is refused too, since what it will mean is unknown."""
    if not host.strip():
        return "an empty host binds every interface"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        return f"cannot resolve {host!r} ({exc}) to check that it is a loopback address"
    addresses = sorted({str(info[4][0]) for info in infos})
    # an IPv6 link-local address may carry a zone ("fe80::1%eth0"), which ip_address does not parse
    outside = [a for a in addresses if not ipaddress.ip_address(a.split("%", 1)[0]).is_loopback]
    if not addresses or outside:
        return f"{host} resolves to {', '.join(outside) or 'no address'}, which is not loopback"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERS_", extra="ignore")

    # server
    data_dir: Path = Path(".ers-data")
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_docs: bool = False  # with keys set, serve /docs, /redoc and /openapi.json without one
    log_level: str = "info"
    access_log: bool = False  # a line per request costs ~0.1 ms of CPU; /metrics counts requests
    # processes serving the port: one writer, the rest serve searches (service.workers); 1: one process
    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    # metadata store: SQLite in the data directory unless a Redis URL is given
    redis_url: str | None = None
    redis_prefix: str = "ers"
    # limits (413 beyond them)
    max_body_bytes: int = 64 << 20
    body_timeout_s: float = Field(default=30.0, gt=0)  # a request body not received in this time: 408
    max_batch: int = 1000
    max_queries: int = 256
    max_k: int = 1000
    # performance: one intra-op thread per FAISS call; concurrency comes from the thread pool
    threads: int = 1
    worker_threads: int = 16
    # FAISS search calls in flight per process (divided by `threads`); searches arriving meanwhile are
    # merged. 0: the process's share of the cores (cores / processes of `ers serve --workers N`)
    search_concurrency: int = Field(default=0, ge=0)
    # indexing
    auto_index_threshold: int = 20_000
    # bytes one segment's index may hold in RAM (0: half the physical memory); past it `auto` picks
    # IVF-SQ8/PQ with exact re-ranking instead of HNSW (indexer/index_choice.py)
    memory_budget: int = Field(default=0, ge=0)
    snapshot_every: int = 10_000
    wal_segment_bytes: int = 64 << 20
    target_recall: float = 0.97
    # encoders
    models_dir: Path | None = None  # default: <data_dir>/models (where `ers zoo pull` puts them)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when ONNX Runtime / torch has it
    # intra-op threads per forward; 0 adapts: one each while forwards overlap, every core for a lone one
    encoder_threads: int = Field(default=0, ge=0)
    batching: bool = True
    batch_max: int = Field(default=8, ge=1)  # rows per forward (on 2 cores, 8 beat 32: docs/benchmarks.md)
    batch_tokens: int = Field(default=2048, ge=1)  # padded tokens per forward (rows x longest), text
    batch_pixels: int = Field(default=4 * 224 * 224, ge=1)  # pixels per forward, images
    batch_concurrency: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))  # forwards at once
    batch_wait_ms: float = 5.0
    batch_queue: int = 512
    embed_cache_size: int = 10_000
    max_image_pixels: int = 40_000_000
    max_inputs: int = 256
    # indexing jobs: server paths only under these ':'-separated roots (none: server paths refused)
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    job_runner: Literal["embedded", "redis"] = "embedded"  # redis: `ers worker` processes encode
    job_batch: int = 64  # items per encoder batch / stream entry / durable write
    job_concurrency: int = 1  # jobs run at once (embedded runner)
    job_encode_threads: int = 1  # encoder threads per job (embedded runner)
    job_max_attempts: int = 3  # tries of a batch before its items become dead letters
    job_claim_idle_ms: int = 30_000  # a worker's batch idle this long is taken over by another
    job_backlog: int = 32  # batches of a job waiting in the Redis stream at most
    # CLI client
    url: str = "http://127.0.0.1:8080"
    api_key: str | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.split(":") if p.strip()]
        return value

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def cache_path(self) -> Path:
        return self.data_dir / "cache"

    def bind_refusal(self) -> str | None:
        """Why ``ers serve`` must not bind ``host`` as configured: only loopback goes without API keys."""
        if self.api_keys:
            return None
        refusal = loopback_refusal(self.host)
        return None if refusal is None else f"{refusal}; set ERS_API_KEYS to expose ERS beyond loopback"

    def search_slots(self, processes: int) -> int:
        """FAISS search calls one of ``processes`` serving processes runs at once. By default its share of
        the cores: more calls in flight than cores only adds thread switches, while the searches that
        wait are merged into the next call (measured, Fashion-MNIST at --workers 2 on 2 cores: 2,632-2,794
        single-query QPS with one call per process, 2,585-2,649 with two)."""
        wanted = self.search_concurrency or max(1, (os.cpu_count() or 1) // max(1, processes))
        return max(1, wanted // max(1, self.threads))

    def hub_options(self) -> HubOptions:
        return HubOptions(
            batching=self.batching,
            budget=Budget(tokens=self.batch_tokens, pixels=self.batch_pixels, rows=self.batch_max),
            max_wait_ms=self.batch_wait_ms,
            max_queue=self.batch_queue,
            concurrency=max(1, self.batch_concurrency // max(1, self.encoder_threads)),
            threads=self.encoder_threads,
        )

    def job_options(self) -> JobOptions:
        return JobOptions(
            allowed_roots=tuple(self.allowed_roots),
            uploads_dir=self.data_dir / "uploads",
            batch_size=self.job_batch,
            concurrency=self.job_concurrency,
            encode_threads=self.job_encode_threads,
            max_attempts=self.job_max_attempts,
            claim_idle_ms=self.job_claim_idle_ms,
            backlog=self.job_backlog,
            max_image_pixels=self.max_image_pixels,
        )

    def index_options(self) -> IndexOptions:
        return IndexOptions(
            auto_threshold=self.auto_index_threshold,
            memory_budget=self.memory_budget,
            snapshot_every=self.snapshot_every,
            target_recall=self.target_recall,
            wal_segment_bytes=self.wal_segment_bytes,
        )
