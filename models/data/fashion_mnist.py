"""Fashion-MNIST (Zalando, MIT): 70,000 28×28 grey images of 10 clothing classes, from Debian.

The Debian package ``dataset-fashion-mnist`` ships the original idx files under
``/usr/share/datasets/fashion-mnist/``. We fetch the ``.deb`` with ``apt-get download`` (no root,
nothing installed; sha256-pinned like every registry download, see ``Fetcher``), unpack it with
``dpkg-deb -x`` once into the cache, and parse the gzipped idx files with numpy.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package

DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB = Package(
    "deb", "dataset-fashion-mnist", DEB_VERSION, f"dataset-fashion-mnist_{DEB_VERSION}_all.deb",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)  # fmt: skip
DEB_DIR = "usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
LICENSE = "MIT (Zalando SE)"
IMAGE_SIZE = 28
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes


@dataclass(frozen=True)
class FashionMNIST:
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) int64 in 0..9
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) int64


def read_idx(path: Path) -> np.ndarray:
    """A gzipped idx file (magic: two zero bytes, the type code, the number of dims; big-endian sizes)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ZooError(f"{path.name}: not a readable gzip file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise ZooError(f"{path.name}: not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ZooError(f"{path.name}: {len(data) - header} bytes of data for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _unpack(deb: Path, destination: Path) -> None:
    """The four idx files out of the .deb, published into ``destination`` atomically."""
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise ZooError("dpkg-deb is needed to unpack the Fashion-MNIST .deb; install dpkg (apt-get install dpkg)")
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        result = subprocess.run([dpkg, "-x", str(deb), tmp], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise ZooError(f"dpkg-deb could not unpack {deb.name}: {result.stderr.strip()[-300:]}")
        staged = Path(tmp) / "out"
        staged.mkdir()
        for name in FILES.values():
            source = Path(tmp) / DEB_DIR / name
            if not source.is_file():
                raise ZooError(f"{deb.name} has no {DEB_DIR}/{name}")
            shutil.move(source, staged / name)
        staged.rename(destination)


def load_fashion_mnist(cache_dir: Path, fetcher: Fetcher | None = None) -> FashionMNIST:
    """The train (60k) and test (10k) splits; fetched (~30 MB) and unpacked into ``cache_dir`` once.

    ZooError says what is missing: apt-get or dpkg-deb, the archive, a sha256 mismatch, a bad file.
    """
    directory = cache_dir / "fashion-mnist"
    if not all((directory / name).is_file() for name in FILES.values()):
        deb = (fetcher or Fetcher(cache_dir)).fetch(DEB)
        if directory.exists():
            shutil.rmtree(directory)
        _unpack(deb, directory)
    arrays = {key: read_idx(directory / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
            raise ZooError(f"fashion-mnist {split}: images {images.shape} do not match labels {labels.shape}")
    return FashionMNIST(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
    )
