"""Helpers shared by the job tests (no tests here): tiny encoders built in the test, source trees
with deliberately broken files, and polling a job to its end."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.families.text_hash import HashedNgramFamily
from models.families.two_branch import TwoBranchImageFamily
from tests.service.server_proc import ERS_BIN

TEXT = "tiny-text@1"
IMAGE = "tiny-image@1"
TEXT_LIMIT = 200  # max_chars of the tiny text encoder


def build_text(models_dir: Path, key: str = TEXT, dim: int = 16) -> EncoderSpec:
    torch.manual_seed(0)
    name, version = key.split("@")
    spec = EncoderSpec(name=name, version=version, family="hashed-ngram", modality="text", dim=dim,
                       config={"buckets": 256, "hidden": 32, "dim": dim, "max_chars": TEXT_LIMIT})  # fmt: skip
    family = HashedNgramFamily(spec)
    return write_artifact(family, family.build_module(), models_dir / key)


def build_image(models_dir: Path, key: str = IMAGE, dim: int = 16) -> EncoderSpec:
    torch.manual_seed(0)
    name, version = key.split("@")
    model = {"dim": dim, "image_size": 16, "cnn_channels": [4, 8], "image_tower": "cnn"}
    spec = EncoderSpec(name=name, version=version, family="two-branch-image", modality="image", dim=dim,
                       config={"model": model})  # fmt: skip
    family = TwoBranchImageFamily(spec)
    return write_artifact(family, family.build_module(), models_dir / key)


def png(seed: int, size: int = 24) -> bytes:
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    image = Image.new("RGB", (size, size), colour)
    image.putpixel((seed % size, (seed // size) % size), (255 - colour[0], 0, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def text_tree(root: Path, good: int) -> tuple[list[str], dict[str, str]]:
    """``good`` readable text files in two folders, plus broken ones; returns (good ids, bad id ->
    a word the reason must contain)."""
    ids = []
    for n in range(good):
        rel = f"{'a' if n % 2 else 'b'}/doc-{n:03d}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"document number {n} about topic {n % 7} and colour {n % 5}")
        ids.append(rel)
    (root / "bad").mkdir()
    (root / "bad/latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))  # not UTF-8
    (root / "bad/long.txt").write_text("word " * (TEXT_LIMIT // 2))  # over the encoder's limit
    (root / "bad/empty.txt").write_text("   ")  # the encoder refuses empty text
    os.symlink(root / "nowhere.txt", root / "bad/dangling.txt")  # unreadable
    bad = {"bad/latin1.txt": "UTF-8", "bad/long.txt": "limit", "bad/empty.txt": "non-empty",
           "bad/dangling.txt": "unreadable"}  # fmt: skip
    return ids, bad


def wait_for(
    get: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there within {timeout}s: {job}")
        time.sleep(0.05)


def finished(job: dict[str, Any]) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def text_manifest(path: Path, n: int) -> list[str]:
    """A JSONL manifest of ``n`` short texts; returns the ids."""
    ids = [f"t{i}" for i in range(n)]
    path.write_text(
        "".join(f'{{"id": "{i}", "text": "item {i} of group {n % 13}", "payload": {{"n": 1}}}}\n' for i in ids)
    )
    return ids


def start_worker(redis_url: str, prefix: str, models_dir: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A real ``ers worker`` child process (its own session, so signals reach only it)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
    full.update({"PYTHONUNBUFFERED": "1", **{f"ERS_{k.upper()}": v for k, v in env.items()}})
    args = [str(ERS_BIN), "worker", "--redis-url", redis_url, "--redis-prefix", prefix, "--models-dir", str(models_dir)]
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def missing_items(url: str, collection: str, ids: list[str]) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [i for i in ids if client.get(f"/v1/collections/{collection}/items/{i}").status_code != 200]
