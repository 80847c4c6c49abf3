"""Zoo entry ``face-resnet@1``: dlib's face ResNet from face-api's TF.js weights (npm) + the MTCNN
detector from the facenet-pytorch wheel (PyPI), converted to our PyTorch code, safetensors and ONNX.

Licences, as found in the packages: ``@vladmandic/face-api`` 1.7.15 is MIT (package.json, LICENSE);
the network is dlib's ``dlib_face_recognition_resnet_model_v1``, which Davis King released into the
public domain (dlib-models README); PyPI ``face_recognition_models`` 0.3.0, which ships the same
model for face_recognition, declares "MIT license" in setup.py but its README and LICENSE file say
"public domain or CC0 1.0 Universal". The MTCNN weights come from ``facenet-pytorch`` 2.6.0 (MIT).
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package
from models.core.spec import EncoderSpec
from models.zoo import zoo_entry

log = logging.getLogger(__name__)

FACE_API_TARBALL = Package(
    "npm", "@vladmandic/face-api", "1.7.15", "vladmandic-face-api-1.7.15.tgz",
    "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
)  # fmt: skip
FACENET_PYTORCH_WHEEL = Package(
    "pypi", "facenet-pytorch", "2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
    "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
)  # fmt: skip
MANIFEST_MEMBER = "package/model/face_recognition_model-weights_manifest.json"
WEIGHTS_MEMBER = "package/model/face_recognition_model.bin"
SAMPLE_MEMBERS = tuple(f"package/demo/sample{i}.jpg" for i in range(1, 7))
EXAMPLE_CROP = ("package/demo/sample1.jpg", (300, 250, 700, 700))  # one face, kept as example.jpg
PARITY_TOLERANCE = 1e-4
THRESHOLD = 0.6  # dlib / face_recognition: Euclidean distance below which faces match

DESCRIPTION = "dlib face ResNet (99.38% LFW per dlib), 128-d face descriptors; MTCNN detection + 5-point alignment"
SOURCE = "npm @vladmandic/face-api 1.7.15 (model/face_recognition_model*); PyPI facenet-pytorch 2.6.0 (MTCNN)"
LICENSE = "face-api code and TF.js weights: MIT; dlib model: public domain / CC0 1.0; MTCNN weights: MIT"


def detector_spec_config() -> dict[str, Any]:
    from models.families.face.common import DEFAULT_DETECTOR, DEFAULT_MAX_FACES

    return {"detector": {"name": "mtcnn", **DEFAULT_DETECTOR}, "max_faces": DEFAULT_MAX_FACES}


def _member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball) as tf:
        fileobj = tf.extractfile(name)
        if fileobj is None:
            raise ZooError(f"{tarball.name}: {name} is missing")
        with fileobj:
            return fileobj.read()


@zoo_entry("face-resnet@1", modality="face", dim=128, description=DESCRIPTION, source=SOURCE, license=LICENSE)
def build_face_resnet(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    from PIL import Image

    from models.core.export import save_weights
    from models.core.fetch import extract
    from models.families.face.common import EXAMPLE_FILE, convert_mtcnn_wheel, embedder_parity, export_embedder
    from models.families.face.resnet import FaceResNetFamily, load_tfjs

    tarball, wheel = fetcher.fetch(FACE_API_TARBALL), fetcher.fetch(FACENET_PYTORCH_WHEEL)
    raw = staging / ".tfjs"
    manifest = extract(tarball, MANIFEST_MEMBER, raw / Path(MANIFEST_MEMBER).name)
    weights = extract(tarball, WEIGHTS_MEMBER, raw / Path(WEIGHTS_MEMBER).name)
    try:
        module = load_tfjs(manifest, weights)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ZooError(f"face-api weights could not be converted: {exc}") from exc
    finally:
        for path in (manifest, weights):
            path.unlink()
        raw.rmdir()
    convert_mtcnn_wheel(wheel, staging / "detector")
    member, crop = EXAMPLE_CROP
    Image.open(io.BytesIO(_member(tarball, member))).convert("RGB").crop(crop).save(staging / EXAMPLE_FILE, quality=90)

    spec = EncoderSpec(
        name="face-resnet", version="1", family="face-resnet", modality="face", dim=128, metric="l2",
        config={"image_size": 150, "template": "dlib", "padding": 0.25, "mean_rgb": [122.782, 117.001, 104.298],
                "threshold": THRESHOLD, "distance": "euclidean", **detector_spec_config()},
        description=DESCRIPTION, source=SOURCE, license=LICENSE,
    )  # fmt: skip
    save_weights(module, staging)
    onnx_path = export_embedder(module, staging, 150)

    # Parity on real aligned faces from face-api's demo photos, plus the example crop.
    family = FaceResNetFamily(spec, staging)
    batch = family.preprocess([_member(tarball, m) for m in SAMPLE_MEMBERS] + [(staging / EXAMPLE_FILE).read_bytes()])
    if not np.any(batch["_owner"] == len(SAMPLE_MEMBERS)):
        raise ZooError(f"the detector found no face in {EXAMPLE_FILE}; the conversion is broken")
    diff = embedder_parity(module, onnx_path, batch["pixels"])
    log.info("face-resnet@1: %d faces, ONNX/PyTorch max abs diff %.2e", len(batch["pixels"]), diff)
    if diff > PARITY_TOLERANCE:
        raise ZooError(f"ONNX export of face-resnet@1 differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
    return spec
