"""Screenshots of the web console (``/ui``), each page at 1280×800, into ``docs/ui/``.

    .venv/bin/python bench/ui_screenshots.py [--out docs/ui] [--data-dir DIR] [--limit 600]

Starts a real ``ers serve`` (with an API key) over a fresh data directory holding demo-like data:
the emoji names (``minilm-l6@1``) and the Google-style emoji drawings (``effnet-lite0@1``) of the
npm ``emoji-datasource-*`` packages, real face photos (``face-resnet@1``; face_recognition's and
face-api's sample photos), an upload job of Twitter-style drawings with two broken files, and a
collection migrated between two untrained ``fmnist-cnn`` stand-ins (``bench/upgrade.py``) with a
labelled evaluation set. Then Debian's chromium (headless, through Playwright) opens each page as a
user would: the key prompt, collections, a text search, an image search by upload, the face boxes,
face verification, jobs and upgrades. The models and packages are fetched once into
``<data-dir>/cache``; re-runs with the same ``--data-dir`` reuse them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from upgrade import stand_ins  # noqa: E402  (bench/upgrade.py: untrained compatible fmnist-cnn pair)

from models.data.emoji import Emoji, flatten_png, load_emoji  # noqa: E402
from models.zoo import pull  # noqa: E402
from tests.face_photos import load_face_photos  # noqa: E402  (real photos from registry packages)

KEY = "console-demo-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOWN = ("banana", "hot beverage", "doughnut", "lollipop")  # the screenshots query these
FACES = ("obama", "obama2", "biden", "sample1", "sample2", "sample3", "sample4", "sample5", "sample6")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
    env["ERS_API_KEYS"] = KEY
    log = open(data_dir.parent / "server.log", "ab")  # noqa: SIM115 - the server's whole life
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ers"), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ers serve exited with {proc.returncode}; see {data_dir.parent / 'server.log'}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("ers serve did not become ready in 120 s")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def create(api: httpx.Client, name: str, encoder: str) -> None:
    api.post("/v1/collections", json={"name": name, "encoder": encoder}).raise_for_status()


def upsert(api: httpx.Client, name: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 32):
        api.put(f"/v1/collections/{name}/items", json={"items": items[start : start + 32]}).raise_for_status()


def upload_job(api: httpx.Client, collection: str, files: list[tuple[str, bytes]], batch_size: int = 16) -> str:
    """A job over uploaded files, with a manifest naming each (id = file name)."""
    lines = [json.dumps({"id": n, "path": n, "payload": {"style": "twitter"}}) for n, _ in files]
    manifest = ("manifest", ("manifest.jsonl", "\n".join(lines).encode() + b"\n", "application/x-ndjson"))
    parts = [("file", (n, data, "image/png")) for n, data in files]
    form = {"collection": collection, "options": json.dumps({"batch_size": batch_size})}
    job = api.post("/v1/jobs", data=form, files=[manifest, *parts])
    job.raise_for_status()
    return str(job.json()["id"])


def load_data(api: httpx.Client, data_dir: Path, limit: int) -> dict[str, Any]:
    every = load_emoji(data_dir / "cache")
    spread = every[:: max(1, len(every) // limit)][:limit]
    emojis = spread + [e for e in every if e.text in SHOWN and e not in spread]  # the ones the screenshots query
    google = {e.code: flatten_png(e.google_png) for e in emojis}

    def payload(e: Emoji) -> dict[str, Any]:
        names = list(e.short_names)
        return {"name": e.text, "category": e.category, "subcategory": e.subcategory, "short_names": names}

    create(api, "emoji-names", "minilm-l6@1")
    upsert(api, "emoji-names", [{"id": e.code, "text": e.text, "payload": payload(e)} for e in emojis])
    create(api, "emoji-images", "effnet-lite0@1")
    upsert(api, "emoji-images", [{"id": e.code, "image": b64(google[e.code]), "payload": payload(e)} for e in emojis])

    photos = load_face_photos(data_dir / "cache")
    create(api, "faces", "face-resnet@1")
    source = "face_recognition / face-api samples"
    upsert(api, "faces", [{"id": n, "image": b64(photos[n]), "payload": {"photo": n, "source": source}} for n in FACES])

    # an upload job: Twitter-style drawings into their own collection, two files broken on purpose
    create(api, "emoji-twitter", "effnet-lite0@1")
    files = [(f"{e.code}.png", flatten_png(e.twitter_png)) for e in emojis[:240]]
    files += [("broken-1.png", b"not a png at all"), ("truncated.png", flatten_png(emojis[0].twitter_png)[:60])]
    job = upload_job(api, "emoji-twitter", files)

    # upgrades: drawings under an untrained v1 and a labelled evaluation set; the screenshots migrate
    old, new = stand_ins(data_dir / "models")
    create(api, "drawings", old)
    drawings = emojis[:200]
    upsert(
        api, "drawings", [{"id": e.code, "image": b64(google[e.code]), "payload": {"name": e.text}} for e in drawings]
    )
    labelled = emojis[:40]
    evals = [b64(google[e.code]) for e in labelled] + [b64(flatten_png(e.twitter_png)) for e in labelled]
    api.put("/v1/collections/drawings/eval-set", json={"inputs": evals, "labels": [e.code for e in labelled] * 2})
    return {"emojis": emojis, "job": job, "old": old, "new": new, "photos": photos}


def wait_job(api: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 300
    while api.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)


def png_file(data: bytes, name: str, work: Path) -> Path:
    path = work / name
    Image.open(io.BytesIO(data)).save(path)
    return path


def shoot(url: str, out: Path, data: dict[str, Any], work: Path) -> None:
    from playwright.sync_api import sync_playwright

    banana = next(e for e in data["emojis"] if e.text == "banana")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)

        def save(name: str) -> None:
            page.wait_for_timeout(350)  # transitions settle
            page.screenshot(path=str(out / f"{name}.png"))
            print(f"  {out / name}.png", flush=True)

        page.goto(f"{url}/ui/#/collections")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", "not-the-key")
        page.locator("#key-form button[type=submit]").click()
        page.locator("#key-message.error-text").wait_for()
        page.fill("#key-input", KEY)
        save("key-prompt")
        page.locator("#key-form button[type=submit]").click()
        page.locator(".card.collection").first.wait_for()
        save("collections")

        page.goto(f"{url}/ui/#/search/emoji-names")
        page.locator(".results-grid .result").first.wait_for()
        page.fill(".query-text", "something sweet")
        page.keyboard.press("Enter")
        page.locator(".results-head h2", has_text="something sweet").wait_for()
        page.locator(".filter-foot button").click()
        page.locator(".filter-field").fill("category")
        page.locator(".filter-value").fill("Food & Drink")
        page.locator(".run-search").click()
        page.locator(".filter-used").wait_for()
        save("search-text")

        page.goto(f"{url}/ui/#/search/emoji-images")
        page.locator(".results-grid .result img.thumb").first.wait_for()
        page.set_input_files(".query-file", str(png_file(flatten_png(banana.twitter_png), "banana-twitter.png", work)))
        page.locator(".results-head h2", has_text="image").wait_for()
        page.locator(".results-grid .result img.thumb").nth(4).wait_for()
        save("search-image")

        page.goto(f"{url}/ui/#/search/faces")
        page.locator(".results-grid .result").first.wait_for()
        page.set_input_files(".query-file", str(png_file(data["photos"]["obama3"], "obama3.jpg", work)))
        page.locator(".results-head h2", has_text="image").wait_for()
        page.locator(".face-box").first.wait_for()
        save("search-faces")
        page.locator(".seg button[data-mode=verify]").click()
        inputs = page.locator(".verify input[type=file]")
        inputs.nth(0).set_input_files(str(png_file(data["photos"]["obama"], "obama.jpg", work)))
        inputs.nth(1).set_input_files(str(png_file(data["photos"]["obama3"], "obama3.jpg", work)))
        page.locator(".verify .button.primary").click()
        page.locator(".verdict").wait_for()
        save("verify")

        # a second, larger job, caught running: live progress, rate and ETA above the finished one
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as api:
            files = [(f"{e.code}.png", flatten_png(e.twitter_png)) for e in data["emojis"]]
            upload_job(api, "emoji-twitter", files, batch_size=8)
        page.goto(f"{url}/ui/#/jobs")
        page.locator(".job[data-state=succeeded] .job-errors summary").first.click()
        running = page.locator(".job[data-state=running] [role=progressbar]")
        page.wait_for_function(
            "() => { const bar = document.querySelector('.job[data-state=running] [role=progressbar]');"
            " return bar && Number(bar.getAttribute('aria-valuenow')) >= 30; }"
        )
        running.wait_for()
        save("jobs")

        page.goto(f"{url}/ui/#/upgrades/drawings")
        page.locator(".history").wait_for()
        page.fill(".migrate-to", data["new"])
        page.locator(".migrate").click()
        page.locator(".confirm .button.primary").click()
        page.locator(".refusal").wait_for()
        page.check(".migrate-force")
        page.locator(".migrate").click()
        page.locator(".confirm .button.primary").click()
        page.locator("[data-outcome=migrated]").wait_for()
        page.locator(".rollback").click()
        page.locator(".confirm .button.danger").click()
        page.locator("[data-outcome=rollback]").wait_for()
        page.fill(".migrate-to", data["new"])
        page.check(".migrate-force")
        page.locator(".migrate").click()
        page.locator(".confirm .button.primary").click()
        page.locator("[data-outcome=migrated]").wait_for()
        page.locator(".history li[data-entry]").nth(2).wait_for()
        save("upgrades")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui")
    parser.add_argument("--cache", type=Path, default=ROOT / ".ers-data",
                        help="where the zoo models (models/) and packages (cache/) are kept between runs")  # fmt: skip
    parser.add_argument("--limit", type=int, default=600, help="emojis indexed (of 1,911)")
    parser.add_argument("--keep-serving", action="store_true", help="leave the server up afterwards (Ctrl-C ends it)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache.resolve()
    (cache / "cache").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ers-ui-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        (data_dir / "models").mkdir(parents=True)
        (data_dir / "cache").symlink_to(cache / "cache", target_is_directory=True)
        for name in ("minilm-l6", "effnet-lite0", "face-resnet"):
            print(f"pulling {name} (once)", flush=True)
            spec = pull(name, cache / "models", cache / "cache")
            (data_dir / "models" / spec.key).symlink_to(cache / "models" / spec.key, target_is_directory=True)
        stand_ins(data_dir / "models")
        proc, url = serve(data_dir)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as api:
                print("loading data", flush=True)
                data = load_data(api, data_dir, args.limit)
                wait_job(api, data["job"])
            print(f"console at {url}/ui/ — taking screenshots", flush=True)
            try:
                shoot(url, args.out, data, work)
            finally:
                if args.keep_serving:
                    print(f"serving {url}/ui/ (key {KEY}); Ctrl-C to stop", flush=True)
                    with contextlib.suppress(KeyboardInterrupt):
                        proc.wait()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
