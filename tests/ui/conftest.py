"""A real ``ers serve`` (with an API key and real encoders) over emoji data, and Debian's chromium
driven headless by Playwright, shared by the browser tests of a module.

The server's data: ``emoji-names`` (minilm-l6@1 over the emoji names), ``emoji-images``
(effnet-lite0@1 over Google-style drawings), ``faces`` (face-resnet@1 over real photos, a group
photo among them), an empty ``emoji-jobs`` for an upload job, and
``emoji-pictures``, bound to the image tower of a small two-branch image–text model trained here on
the Google-style drawings of 300 emoji (so a text query finds pictures through its text tower),
``drawings``, bound to an untrained ``fmnist-cnn`` v1 with a v2 that is compatible by construction
(v1's weights give its first dims exactly, so the gate's new/old equals old/old: refused unless
forced) and a labelled evaluation set.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import torch

from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.data.emoji import Emoji, flatten_png, load_emoji
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily
from tests.conftest import install_zoo_model
from tests.face_photos import load_face_photos
from tests.service.server_proc import ServerProcess

KEY = "ui-test-key-6b1f0c"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TEXT_TARGETS = ("hot beverage", "rocket", "red apple")  # what the text queries of the tests expect
TWINS = ("banana", "rainbow")  # Twitter-style queries whose Google-style drawing effnet ranks first here
OLD, NEW = "fmnist-ui@1", "fmnist-ui@2"
PICTURES_LIMIT = 300  # the emoji the two-branch model trains on and ``emoji-pictures`` holds
PICTURES_ENCODER = "emoji2b-tiny-image@1"
FACES = ("obama", "obama2", "biden", "sample2")  # obama3 stays out: it is the query


@dataclass
class Console:
    server: ServerProcess
    emojis: dict[str, Emoji]  # by name, every emoji indexed anywhere
    names: list[Emoji]
    images: list[Emoji]
    photos: dict[str, bytes] = field(repr=False)  # face photos by name
    api: httpx.Client = field(repr=False)

    @property
    def url(self) -> str:
        return self.server.url


def compatible_pair(models_dir: Path) -> None:
    """An untrained v1 and a v2 whose first dims are v1's exactly (declared compatible_with v1)."""
    torch.manual_seed(0)
    channels, dim, extra = (4, 8, 16), 16, 8
    old = FmnistCNN(FmnistCNNConfig(channels=channels, dim=dim)).eval()
    new = FmnistCNN(FmnistCNNConfig(channels=channels, dim=dim + extra)).eval()
    new.features.load_state_dict(old.features.state_dict())
    with torch.no_grad():
        new.proj.weight.copy_(torch.cat([old.proj.weight, torch.randn(extra, old.proj.in_features) * 0.05]))
        new.proj.bias.copy_(torch.cat([old.proj.bias, torch.zeros(extra)]))
    for key, module, width in ((OLD, old, dim), (NEW, new, dim + extra)):
        name, version = key.split("@")
        spec = EncoderSpec(name=name, version=version, family="fmnist-cnn", modality="image", dim=width,
                           compatible_with=OLD if key == NEW else None, compat_dims=dim if key == NEW else None,
                           config={"channels": list(channels), "dim": width, "basis": False})  # fmt: skip
        write_artifact(FmnistCNNFamily(spec), module, models_dir / key)


def train_two_branch(models_dir: Path, data_dir: Path) -> None:
    """The tiny two-branch config trained long enough to tie each drawing to its name (seeded, one
    thread: the same model every run); it publishes ``emoji2b-tiny-image@1`` and ``-text@1``."""
    from models.training.recipe import TrainRequest
    from models.training.run import load_config
    from models.training.two_branch import TwoBranchRecipe

    config = load_config("two-branch-tiny")
    config["data"] = {**config["data"], "limit": PICTURES_LIMIT}
    config["train"] = {**config["train"], "epochs": 30}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        TwoBranchRecipe().train(TrainRequest(config, models_dir, data_dir=data_dir, progress=False))
    finally:
        torch.set_num_threads(threads)


def b64_png(png: bytes) -> str:
    return base64.b64encode(flatten_png(png)).decode()


def payload(e: Emoji) -> dict[str, Any]:
    return {"name": e.text, "category": e.category, "subcategory": e.subcategory}


def upsert(api: httpx.Client, name: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 64):
        r = api.put(f"/v1/collections/{name}/items", json={"items": items[start : start + 64]})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp("ui") / "data"
    install_zoo_model("minilm-l6", data_dir, zoo_dirs)
    install_zoo_model("effnet-lite0", data_dir, zoo_dirs)
    install_zoo_model("face-resnet", data_dir, zoo_dirs)
    photos = load_face_photos(zoo_dirs[1])
    compatible_pair(data_dir / "models")
    train_two_branch(data_dir / "models", zoo_dirs[1].parent)
    pictures = load_emoji(zoo_dirs[1], PICTURES_LIMIT)
    every = load_emoji(zoo_dirs[1])
    spread = every[::8]
    wanted = [e for e in every if "heart" in e.text or e.text in TEXT_TARGETS]
    names = spread + [e for e in wanted if e not in spread]
    images = every[::16] + [e for e in every if e.text in TWINS and e not in every[::16]]
    with ServerProcess(data_dir, {"ERS_API_KEYS": KEY}) as server:
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        bound = {"emoji-names": "minilm-l6@1", "emoji-images": "effnet-lite0@1", "emoji-jobs": "effnet-lite0@1",
                 "drawings": OLD, "faces": "face-resnet@1", "emoji-pictures": PICTURES_ENCODER}  # fmt: skip
        for name, encoder in bound.items():
            api.post("/v1/collections", json={"name": name, "encoder": encoder}).raise_for_status()
        upsert(api, "emoji-names", [{"id": e.code, "text": e.text, "payload": payload(e)} for e in names])
        upsert(api, "emoji-images", [{"id": e.code, "image": b64_png(e.google_png), "payload": payload(e)}
                                     for e in images])  # fmt: skip
        upsert(api, "emoji-pictures", [{"id": e.code, "image": b64_png(e.google_png), "payload": payload(e)}
                                       for e in pictures])  # fmt: skip
        upsert(api, "faces", [{"id": n, "image": base64.b64encode(photos[n]).decode(), "payload": {"photo": n}}
                              for n in FACES])  # fmt: skip
        upsert(api, "drawings", [{"id": e.code, "image": b64_png(e.google_png)} for e in every[::32]])
        labelled = every[1::48]
        evals = [b64_png(e.google_png) for e in labelled] + [b64_png(e.twitter_png) for e in labelled]
        r = api.put(
            "/v1/collections/drawings/eval-set", json={"inputs": evals, "labels": [e.code for e in labelled] * 2}
        )
        assert r.status_code == 200, r.text
        yield Console(server, {e.text: e for e in names + images + pictures}, names, images, photos, api)
        api.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: run `make test`, which installs Debian's chromium (apt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Traffic:
    urls: list[str] = field(default_factory=list)
    api_auth: list[str | None] = field(default_factory=list)  # the Authorization header of each /v1 call


@pytest.fixture
def traffic() -> Traffic:
    return Traffic()


@pytest.fixture
def page(browser: Any, console: Console, traffic: Traffic) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage) at 1280×800; every URL it requests is recorded, and
    after the test none may hold the key."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    errors: list[str] = []

    def record(request: Any) -> None:
        traffic.urls.append(request.url)
        if "/v1/" in request.url:
            traffic.api_auth.append(request.headers.get("authorization"))

    context.on("request", record)
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not [u for u in traffic.urls if KEY in u or quote(KEY) in u], "the API key appeared in a URL"
    assert not errors, f"uncaught errors in the page: {errors}"


def sign_in(page: Any, console: Console, route: str) -> None:
    """Open the console at ``#route`` and answer the key prompt the first 401 brings up."""
    page.goto(f"{console.url}/ui/#{route}")
    page.locator("#key-dialog[open]").wait_for()
    page.fill("#key-input", KEY)
    page.locator("#key-form button[type=submit]").click()
    page.locator("#key-dialog[open]").wait_for(state="detached")
