"""FastAPI dependencies: the objects ``service.app`` builds at start-up, and the API-key decision.

All are ``async def``: none blocks, and a plain ``def`` dependency costs a thread-pool hop
(~90 µs each, measured) on every request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from indexer.collection import Collection
from indexer.jobs.runner import JobRunner
from indexer.manager import CollectionManager
from indexer.upgrade.migrations import Migrations
from service.metrics import Metrics
from service.middleware import AUTHENTICATED, UNAUTHORIZED
from service.runtime.encoders import EncoderHub
from service.runtime.search_batcher import SearchBatcher
from service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_manager(request: Request) -> CollectionManager:
    """The writer's manager, or in a reader process of ``ers serve --workers N`` its read-only views
    (``indexer.reader_manager.ReaderManager``: the same ``get``/``list``; writes never reach it)."""
    manager: CollectionManager = request.app.state.manager
    return manager


ManagerDep = Annotated[CollectionManager, Depends(get_manager)]


async def get_hub(request: Request) -> EncoderHub:
    hub: EncoderHub = request.app.state.hub
    return hub


HubDep = Annotated[EncoderHub, Depends(get_hub)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.jobs
    return runner


RunnerDep = Annotated[JobRunner, Depends(get_runner)]


async def get_migrations(request: Request) -> Migrations:
    migrations: Migrations = request.app.state.migrations
    return migrations


MigrationsDep = Annotated[Migrations, Depends(get_migrations)]


async def get_search_batcher(request: Request) -> SearchBatcher:
    searcher: SearchBatcher = request.app.state.search_batcher
    return searcher


SearchBatcherDep = Annotated[SearchBatcher, Depends(get_search_batcher)]


async def get_collection(name: str, manager: ManagerDep) -> Collection:
    return manager.get(name)


CollectionDep = Annotated[Collection, Depends(get_collection)]


async def is_authenticated(request: Request) -> bool:
    """Whether the request carried a valid API key (true when no keys are configured). Decided once,
    from the headers, by ``service.middleware.ApiKeyMiddleware`` before anything read the body; a
    request that did not pass through it counts as unauthenticated."""
    return bool(getattr(request.state, AUTHENTICATED, False))


AuthenticatedDep = Annotated[bool, Depends(is_authenticated)]


async def require_api_key(authenticated: AuthenticatedDep) -> None:
    """Marks a route that must never answer without a key (metrics, thumbnails). The middleware
    already refuses every path it does not list as open; this keeps the route closed should its
    path ever be listed there (``/ui/...`` is, and the thumbnails sit beside it)."""
    if not authenticated:
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
