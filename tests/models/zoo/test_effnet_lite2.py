"""``effnet-lite2@1``: the real EfficientNet-Lite2 pulled through the zoo, run by our PyTorch code (the family
builds Lite2's scaled stages from ``spec.config``) and by its ONNX export, checked on real photos and on
emoji drawn in two styles. Lite2 is trained independently of Lite0: its vectors are another space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.core.artifact import ONNX_FILE, verify_artifact
from models.core.encoder import encode
from models.core.errors import ZooError
from models.core.export import parity
from models.core.registry import load_encoder, load_torch_module
from models.core.spec import EncoderSpec
from models.data.emoji import flatten_png, load_emoji
from models.families.efficientnet import EfficientNetLite, EfficientNetLiteFamily
from models.zoo import entries, pull
from models.zoo.effnet import LITE0, LITE2, reference_constants
from tests.models.families import test_image_encoder as lite0_tests

KEY = "effnet-lite2@1"
photos = lite0_tests.photos  # the sklearn sample photos fixture (china.jpg, flower.jpg), shared with Lite0's tests
EMOJI = 300  # emoji concepts for the cross-style check: enough for R@1 to separate the encoders from pixels


@pytest.fixture(scope="module")
def lite2_dir(zoo_dirs: tuple[Path, Path]) -> Path:
    spec = pull(KEY, *zoo_dirs)
    assert spec.key == KEY
    return zoo_dirs[0] / KEY


@pytest.fixture(scope="module")
def family(lite2_dir: Path) -> EfficientNetLiteFamily:
    return EfficientNetLiteFamily(EncoderSpec.load(lite2_dir), lite2_dir)


@pytest.fixture(scope="module")
def module(family: EfficientNetLiteFamily, lite2_dir: Path) -> EfficientNetLite:
    loaded = load_torch_module(family, lite2_dir)  # what the torch backend builds: strict load of Lite2's shapes
    assert isinstance(loaded, EfficientNetLite)
    return loaded.eval()


def test_zoo_entry_and_spec(lite2_dir: Path) -> None:
    entry = entries()[KEY]
    assert (entry.modality, entry.dim, entry.license) == ("image", 1280, "Apache-2.0")
    spec = verify_artifact(lite2_dir)
    assert (spec.family, spec.dim, spec.metric) == ("efficientnet-lite", 1280, "cosine")
    assert (spec.config["image_size"], spec.config["resize_size"]) == (260, 292)
    assert (spec.config["width_coefficient"], spec.config["depth_coefficient"]) == (1.1, 1.2)
    assert LITE2.weights.sha256 in spec.source and spec.compatible_with is None  # not compatible by training
    stage_widths = [block.project_conv.out_channels for block in load_torch_module(
        EfficientNetLiteFamily(spec, lite2_dir), lite2_dir).blocks]  # type: ignore[attr-defined]  # fmt: skip
    assert len(stage_widths) == 1 + 3 + 3 + 4 + 4 + 5 + 1 and stage_widths[-1] == 352  # Lite0: 16 blocks, 320


def test_reference_table_is_read_not_assumed() -> None:
    table = "'efficientnet-lite0': (1.0, 1.0, 224, 0.2),\n        'efficientnet-lite2': (1.1, 1.2, 260, 0.3),"
    assert reference_constants(table, "efficientnet-lite2") == (LITE2.width, LITE2.depth, LITE2.image_size)
    assert reference_constants(table, "efficientnet-lite0") == (LITE0.width, LITE0.depth, LITE0.image_size)
    with pytest.raises(ZooError, match="no 'efficientnet-lite4' row"):
        reference_constants(table, "efficientnet-lite4")


def test_onnx_matches_pytorch(
    family: EfficientNetLiteFamily, module: EfficientNetLite, lite2_dir: Path, photos: dict[str, bytes]
) -> None:
    inputs = [*photos.values(), *family.example_inputs()]
    assert parity(family, module, lite2_dir / ONNX_FILE, inputs) <= 1e-4
    onnx_vectors = encode(load_encoder(lite2_dir, backend="onnx"), list(photos.values()))
    torch_vectors = encode(load_encoder(lite2_dir, backend="torch"), list(photos.values()))
    assert onnx_vectors.shape == (2, 1280) and np.max(np.abs(onnx_vectors - torch_vectors)) <= 1e-4


def test_real_imagenet_labels(
    module: EfficientNetLite, family: EfficientNetLiteFamily, photos: dict[str, bytes]
) -> None:
    pixels = torch.from_numpy(family.preprocess([photos["china.jpg"], photos["flower.jpg"]])["pixels"])
    assert pixels.shape == (2, 3, 260, 260)
    with torch.inference_mode():
        probs = module.classify(pixels).softmax(dim=1)
    china, flower = probs.topk(5).indices.tolist()
    # china.jpg: 698 "palace" at 36% (then bell cote, castle, monastery), as Lite0 says.
    assert china[0] == 698 and set(china[:3]) <= lite0_tests.PALACE_LIKE, china
    # flower.jpg (an orange pompon dahlia, no ImageNet class): Lite2 sees its packed petals as 599
    # "honeycomb" (34%) under every crop and normalisation we tried; Lite0 says 985 "daisy". What must hold:
    # a confident natural-texture answer, never a building, and daisy still far above chance (1/1000).
    assert flower[0] == 599 and float(probs[1, 599]) > 0.2, flower
    assert not set(flower) & lite0_tests.PALACE_LIKE and float(probs[1, lite0_tests.DAISY]) > 2e-3


def _recall_at_1(queries: np.ndarray, gallery: np.ndarray) -> float:
    """Row i of ``queries`` must find row i of ``gallery`` first (cosine on unit rows)."""
    return float(np.mean(np.argmax(queries @ gallery.T, axis=1) == np.arange(len(queries))))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_emoji_cross_style_beats_raw_pixels(lite2_dir: Path, zoo_dirs: tuple[Path, Path]) -> None:
    """Index Google's drawings, query with Twitter's: Lite2 must find the same concept more often than
    nearest neighbours in (centred) pixel space do. The two styles share layout and colours, so pixels are
    a strong baseline here (R@1 0.51 on these 300; Lite2 0.57); a broken stage order or normalisation
    falls well below it."""
    emoji = load_emoji(zoo_dirs[1], limit=EMOJI)
    google = [flatten_png(e.png("google")) for e in emoji]
    twitter = [flatten_png(e.png("twitter")) for e in emoji]
    encoder = load_encoder(lite2_dir, backend="onnx")
    model_r1 = _recall_at_1(encode(encoder, twitter), encode(encoder, google))
    family = EfficientNetLiteFamily(EncoderSpec.load(lite2_dir), lite2_dir)
    pixels = {s: family.preprocess(images)["pixels"].reshape(len(images), -1) for s, images in
              (("google", google), ("twitter", twitter))}  # fmt: skip
    centred = {s: _unit(p - p.mean(axis=1, keepdims=True)) for s, p in pixels.items()}
    pixel_r1 = _recall_at_1(centred["twitter"], centred["google"])
    assert model_r1 >= pixel_r1 + 0.04, (model_r1, pixel_r1)
