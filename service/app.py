"""The FastAPI application. ``create_app`` is the one place that lists what the app owns: the lifespan
builds every object once (store, collections, encoder hub, job runner, migrations, search batcher) and
routes receive them through the ``Annotated`` dependencies of ``service.deps``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from indexer.errors import CollectionNotFound
from indexer.jobs.embedded import EmbeddedRunner
from indexer.jobs.runner import JobRunner
from indexer.manager import CollectionManager
from indexer.store.base import MetadataStore
from indexer.store.factory import open_store
from indexer.threads import set_faiss_threads
from indexer.upgrade.compat import SpecCompat
from indexer.upgrade.migrations import Migrations
from models.core.backends import set_device
from models.core.errors import ERSError
from service import openapi
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import (
    PROBE_PATHS,
    AllowedMethodsMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MetricsMiddleware,
    PositionMiddleware,
    RouteTable,
)
from service.routes import collections, encoders, health, jobs, migrations, search, ui
from service.runtime.cache import EmbeddingCache, LruCache, RedisCache
from service.runtime.encoders import EncoderHub
from service.runtime.search_batcher import SearchBatcher
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


def make_runner(settings: Settings, store: MetadataStore, manager: CollectionManager, hub: EncoderHub) -> JobRunner:
    """The runner ``ERS_JOB_RUNNER`` names; ``redis`` needs ``ERS_REDIS_URL`` (and workers)."""
    if settings.job_runner == "redis":
        if not settings.redis_url:
            raise ValueError("ERS_JOB_RUNNER=redis needs ERS_REDIS_URL: the workers meet the server in Redis")
        from indexer.jobs.redis_runner import RedisRunner  # only a redis deployment pays its import

        return RedisRunner(store, manager, settings.job_options(), hub.get, settings.redis_url, settings.redis_prefix)
    return EmbeddedRunner(store, manager, settings.job_options(), hub.get)


def create_app(settings: Settings | None = None, reader_of: str | None = None, worker: str | None = None) -> FastAPI:
    """The app of one process. ``reader_of`` (the writer's private URL) makes it a reader of ``ers serve
    --workers N``: it serves searches from read-only views and forwards the rest (``service.forwarding``).
    ``worker`` names the process in an ``X-ERS-Worker`` header (the writer of several workers)."""
    settings = settings or Settings()
    if reader_of is not None:
        return _reader_app(settings, reader_of)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_faiss_threads(settings.threads)
        set_device(settings.device)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        store = open_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
        # the one resolver of which encoder versions' vectors a query may meet: collections and migrations share it
        compat = SpecCompat(settings.models_path)
        manager = CollectionManager(settings.data_dir, store, settings.index_options(), compat)
        cache = make_cache(settings, store)  # queries, and a migration's calibration vectors
        hub = EncoderHub(settings.models_path, settings.hub_options(), cache)
        runner = make_runner(settings, store, manager, hub)
        # Built on the event loop, which alone touches the batcher's queues (no lock needed).
        processes = settings.workers if worker is not None else 1  # `worker`: one of `ers serve --workers N`
        searcher = SearchBatcher(concurrency=settings.search_slots(processes), max_rows=settings.max_queries)
        try:
            await anyio.to_thread.run_sync(manager.open_all)
            await anyio.to_thread.run_sync(hub.load_all)
            await hub.start()
            app.state.manager = manager
            app.state.hub = hub
            app.state.jobs = runner
            app.state.migrations = Migrations(store, compat, settings.models_path, hub.get, runner,
                                              settings.allowed_roots, settings.max_image_pixels, cache)  # fmt: skip
            app.state.search_batcher = searcher
            await anyio.to_thread.run_sync(runner.start)  # resumes the jobs a previous run left
            freeze_startup_heap()
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

    app, routes = _assemble(settings, lifespan)
    # Added innermost first. With keys set, every path needs one but the probes, the console's static
    # files (they hold no data; its thumbnails are under /v1) and, with ERS_PUBLIC_DOCS, the docs.
    docs = [app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url]
    open_paths = {*PROBE_PATHS, "/ui", *(p for p in docs if p and settings.public_docs)}
    app.add_middleware(
        BodyLimitMiddleware, limit=lambda: settings.max_body_bytes, timeout=lambda: settings.body_timeout_s
    )
    app.add_middleware(AllowedMethodsMiddleware, routes=routes)
    app.add_middleware(
        ApiKeyMiddleware, settings=settings, routes=routes, open_paths=open_paths, open_prefixes=("/ui/",)
    )
    app.add_middleware(PositionMiddleware, position=lambda name: log_position(app, name), worker=worker)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _assemble(
    settings: Settings, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]
) -> tuple[FastAPI, RouteTable]:
    """The app both kinds of process serve: state, error handlers, routers and OpenAPI; returns it with
    the route table that auth and Allow match paths against (the app's list wraps routers)."""
    app = FastAPI(title="ERS — embedding retrieval service", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    modules = (collections, search, encoders, migrations, jobs, health, ui)
    for module in modules:
        app.include_router(module.router)
    routes = RouteTable([*app.router.routes, *(route for module in modules for route in module.router.routes)])
    openapi.install(app, settings)
    return app, routes


def freeze_startup_heap() -> None:
    """Moves everything alive after start-up (modules, encoders, opened collections) out of the cyclic
    GC's reach. Why: a full collection walks every tracked object while holding the GIL; with ~300k
    of them from the imports alone, each was a 70-80 ms stall of every request, every ~5 s under
    search load (measured: search p99 40-70 ms against a p50 of 4-6 ms). Frozen objects are still
    freed by reference counting; only a cycle among them would outlive its use."""
    gc.collect()
    gc.freeze()


def log_position(app: FastAPI, name: str) -> str | None:
    """The ``X-ERS-Position`` of a write to ``name``: its log's end now (``name:gone`` once deleted)."""
    manager: CollectionManager | None = getattr(app.state, "manager", None)
    if manager is None:
        return None
    try:
        return f"{name}:{manager.get(name).wal.end_offset}"
    except CollectionNotFound:
        return f"{name}:gone"
    except ERSError:  # quarantined: no position to wait for
        return None


def _reader_app(settings: Settings, writer_url: str) -> FastAPI:
    """A reader process: the same routes and middleware, searches served from ``ReaderManager``'s views,
    everything else forwarded to the writer by the outermost layer."""
    # Imported here: a single process (``--workers 1``) does not pay for them at start-up.
    from indexer.reader_manager import ReaderManager
    from indexer.reader_store import open_readonly_store
    from service.forwarding import ForwardingMiddleware, writer_client

    client = writer_client(writer_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_faiss_threads(settings.threads)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        store = open_readonly_store(settings.redis_url, settings.data_dir, settings.redis_prefix)
        manager = ReaderManager(settings.data_dir, store, SpecCompat(settings.models_path))
        try:
            await anyio.to_thread.run_sync(manager.open_all)
            manager.start()
            app.state.manager = manager
            # No encoder is loaded: a search that needs one is forwarded before it reaches a route.
            app.state.hub = EncoderHub(settings.models_path, settings.hub_options())
            app.state.search_batcher = SearchBatcher(
                concurrency=settings.search_slots(settings.workers),
                max_rows=settings.max_queries,
            )
            freeze_startup_heap()
            log.info("ERS reader ready: %d collections in %s", len(manager.list()), settings.data_dir)
            yield
        finally:
            await client.aclose()
            await anyio.to_thread.run_sync(manager.close)
            store.close()

    app, routes = _assemble(settings, lifespan)
    app.add_middleware(
        BodyLimitMiddleware, limit=lambda: settings.max_body_bytes, timeout=lambda: settings.body_timeout_s
    )
    app.add_middleware(ApiKeyMiddleware, settings=settings, routes=routes, open_paths=PROBE_PATHS)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(ForwardingMiddleware, client=client, body_limit=settings.max_body_bytes)
    return app
