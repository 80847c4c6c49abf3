"""One real ``ers serve`` for the client tests (a child process on a free port, API keys on), with
tiny text and image encoders built here, a text encoder compatible with the first (for migrations),
and the zoo's face encoder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.families.text_hash import HashedNgramFamily
from tests.conftest import install_zoo_model
from tests.face_photos import load_face_photos
from tests.service.server_proc import ServerProcess
from tests.service.test_jobs_support import TEXT, TEXT_LIMIT, build_image, build_text

KEY = "client-test-key"
TEXT_V2 = "tiny-text@2"  # the same weights as TEXT, declared compatible_with it
TEXT_OTHER = "other-text@1"  # as wide as TEXT, but declared compatible with nothing


@dataclass
class LiveServer:
    url: str
    key: str
    sources: Path  # ERS_ALLOWED_ROOTS: jobs may read server paths below it
    face: str  # the face encoder's key
    photos: dict[str, bytes]


def build_compatible_text(models_dir: Path) -> None:
    torch.manual_seed(0)  # build_text's seed: v2 makes the very vectors v1 makes
    config = {"buckets": 256, "hidden": 32, "dim": 16, "max_chars": TEXT_LIMIT}
    spec = EncoderSpec(name="tiny-text", version="2", family="hashed-ngram", modality="text", dim=16,
                       compatible_with=TEXT, compat_dims=16, config=config)  # fmt: skip
    family = HashedNgramFamily(spec)
    write_artifact(family, family.build_module(), models_dir / TEXT_V2)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, zoo_dirs: tuple[Path, Path]) -> Iterator[LiveServer]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("client")
    data, sources = root / "data", root / "sources"
    sources.mkdir()
    build_text(data / "models")
    build_text(data / "models", TEXT_OTHER)
    build_compatible_text(data / "models")
    build_image(data / "models")
    face = install_zoo_model("face-resnet", data, zoo_dirs)
    env: dict[str, str | int] = {"ERS_API_KEYS": KEY, "ERS_ALLOWED_ROOTS": str(sources), "ERS_JOB_BATCH": 4}
    with ServerProcess(data, env) as server:
        yield LiveServer(server.url, KEY, sources, face, load_face_photos(zoo_dirs[1]))
