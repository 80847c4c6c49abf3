"""The FastAPI application: lifespan owns the store and the collections."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI

from indexer.manager import CollectionManager
from indexer.store.factory import open_store
from indexer.threads import set_faiss_threads
from service.deps import require_api_key
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.migrations import SpecCompat
from service.routes import collections, encoders, health, jobs, migrations, search
from service.runtime.cache import EmbeddingCache, LruCache, RedisCache
from service.runtime.encoders import EncoderHub
from service.settings import Settings

log = logging.getLogger("ers")


def make_cache(settings: Settings, store: object) -> EmbeddingCache | None:
    """Redis (shared) when the store is Redis, else an in-process LRU; size 0 turns it off."""
    if settings.embed_cache_size <= 0:
        return None
    client = getattr(store, "client", None)
    if settings.redis_url and client is not None:
        return RedisCache(client, settings.redis_prefix)
    return LruCache(settings.embed_cache_size)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_faiss_threads(settings.threads)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
        compat = SpecCompat(settings.models_path)  # which encoder versions' vectors a query may meet
        manager = CollectionManager(settings.data_dir, store, settings.index_options(), compat)
        hub = EncoderHub(settings.models_path, settings.hub_options(), make_cache(settings, store))
        runner = jobs.make_runner(settings, store, manager, hub)
        try:
            await anyio.to_thread.run_sync(manager.open_all)
            await anyio.to_thread.run_sync(hub.load_all)
            await hub.start()
            app.state.manager = manager
            app.state.hub = hub
            app.state.jobs = runner
            await anyio.to_thread.run_sync(runner.start)  # resumes the jobs a previous run left
            log.info(
                "ERS ready: %d collections in %s, encoders %s",
                len(manager.list()), settings.data_dir, sorted(hub.encoders) or "none",
            )  # fmt: skip
            yield
        finally:
            await anyio.to_thread.run_sync(runner.stop)  # before the collections close
            await hub.stop()
            await anyio.to_thread.run_sync(manager.close)
            store.close()

    app = FastAPI(title="ERS — embedding retrieval service", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    auth = [Depends(require_api_key)]
    app.include_router(collections.router, dependencies=auth)
    app.include_router(search.router, dependencies=auth)
    search.document(app)
    app.include_router(encoders.router, dependencies=auth)
    migrations.install(app, dependencies=auth)
    app.include_router(jobs.router, dependencies=auth)
    app.include_router(health.router)
    app.add_middleware(BodyLimitMiddleware, limit=lambda: settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
