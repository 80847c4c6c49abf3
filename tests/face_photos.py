"""Real face photos that ship inside registry packages: face_recognition's test images (Obama x5,
Biden) and face-api's group photos, fetched once into the zoo cache with pinned sha256."""

from __future__ import annotations

import tarfile
from pathlib import Path

from models.core.fetch import Fetcher, Package
from models.zoo.face import FACE_API_TARBALL, SAMPLE_MEMBERS

FACE_RECOGNITION = Package(
    "pypi", "face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz",
    "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", sdist=True,
)  # fmt: skip
SINGLE = ("obama", "obama2", "obama3", "biden", "obama_partial_face", "obama_partial_face2")


def load_face_photos(cache_dir: Path) -> dict[str, bytes]:
    """JPEG bytes by name: the single-person photos above plus face-api's ``sample1``..``sample6``."""
    fetcher = Fetcher(cache_dir)
    out = {}
    with tarfile.open(fetcher.fetch(FACE_RECOGNITION)) as tf:
        for name in SINGLE:
            member = tf.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}.jpg")
            assert member is not None
            out[name] = member.read()
    with tarfile.open(fetcher.fetch(FACE_API_TARBALL)) as tf:
        for path in SAMPLE_MEMBERS:
            member = tf.extractfile(path)
            assert member is not None
            out[Path(path).stem] = member.read()
    return out
