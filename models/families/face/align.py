"""Face alignment: a least-squares similarity transform (Umeyama 1991) from five detected landmarks
to a template, then ``cv2.warpAffine``.

Landmark order everywhere (MTCNN's): left eye, right eye, nose tip, mouth left, mouth right, where
left/right are as seen in the image (the left eye has the smaller x).

``"dlib"`` template: the chip geometry of dlib's ``get_face_chip_details(shape, 150, 0.25)`` (what
face_recognition and dlib's ``dnn_face_recognition_ex`` feed the face ResNet). dlib's 5-point template
is defined on its own 5-point landmarks (eye corners and the base of the nose) which MTCNN does not
predict, so we take the same points from dlib's 68-point mean face shape, which lives in the same
normalised frame (``dlib/image_transforms/interpolation.h``, ``mean_face_shape_x/y`` for points
17-67; its eye corners 36/39/42/45 agree with the 5-point template's within 0.003, 0.3 px at 150):
eye centres = mean of points 36-41 and 42-47, nose tip = point 30, mouth corners = points 48 and 54.
Each point ``p`` then maps to ``size * (padding + p) / (1 + 2 * padding)`` as in dlib. Like dlib's
``chip_details`` we fit the chip->image transform (template -> landmarks) and sample with it, and
down-sample with an image pyramid first when the chip is much smaller than the face (dlib's
``extract_image_chip`` does too).

``"facenet"`` template: facenet-pytorch does not align; it resizes the MTCNN box (margin 0) to
160x160. The template is the mean position of MTCNN's landmarks inside its box, measured on the 26
faces of the face_recognition and face-api sample photos and mirrored to be left-right symmetric,
times 160. A similarity transform cannot reproduce the box's anisotropic squeeze (boxes are ~1.33x
taller than wide), so crops are close to, not identical with, facenet-pytorch's.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Template = Literal["dlib", "facenet"]

# dlib 68-point mean face shape (x, y), points used here; source: dlib interpolation.h.
_DLIB_EYE_LEFT = np.array(  # points 36-41
    [[0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],
     [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077]]
)  # fmt: skip
_DLIB_EYE_RIGHT = np.array(  # points 42-47
    [[0.645647, 0.231733], [0.714428, 0.179852], [0.793132, 0.178758],
     [0.858516, 0.216423], [0.79751, 0.244077], [0.719335, 0.245099]]
)  # fmt: skip
_DLIB_NOSE_TIP = np.array([0.490127, 0.515625])  # point 30
_DLIB_MOUTH = np.array([[0.254149, 0.780233], [0.726104, 0.780233]])  # points 48, 54
DLIB_FRAME_POINTS = np.vstack(
    [_DLIB_EYE_LEFT.mean(0), _DLIB_EYE_RIGHT.mean(0), _DLIB_NOSE_TIP, _DLIB_MOUTH]
)  # (5, 2) in dlib's normalised face frame

# Mean MTCNN landmarks relative to the MTCNN box (x / width, y / height), symmetrised.
FACENET_BOX_POINTS = np.array([[0.2851, 0.4109], [0.7149, 0.4109], [0.5, 0.6151], [0.3056, 0.7599], [0.6944, 0.7599]])

DLIB_PADDING = 0.25


def template_points(template: Template, size: int, padding: float = DLIB_PADDING) -> np.ndarray:
    """(5, 2) float64 landmark targets in a ``size`` x ``size`` crop."""
    if template == "dlib":
        return size * (padding + DLIB_FRAME_POINTS) / (1 + 2 * padding)
    if template == "facenet":
        return size * FACENET_BOX_POINTS
    raise ValueError(f"unknown face template '{template}'; use 'dlib' or 'facenet'")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix ``M`` of the least-squares similarity (rotation, uniform scale, translation,
    no reflection) with ``dst ~ M @ [src, 1]`` (Umeyama 1991)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ fix @ vt
    scale = float((sig * np.diag(fix)).sum() / var_s) if var_s > 0 else 1.0
    translation = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, translation[:, None]])


def align(
    image: np.ndarray, landmarks: np.ndarray, size: int, template: Template = "dlib", padding: float = DLIB_PADDING
) -> np.ndarray:
    """(size, size, 3) uint8 crop of ``image`` (RGB uint8) with the face's landmarks on the template."""
    chip_to_image = similarity_transform(template_points(template, size, padding), landmarks)
    # dlib's chip convention: the template spans [0, size] continuously, chip pixel c (0..size-1) sits at
    # c * size / (size - 1) (``chip_details`` maps its rect's corners onto pixels 0 and size - 1).
    chip_to_image[:, :2] *= size / (size - 1)
    scale = float(np.sqrt(abs(np.linalg.det(chip_to_image[:, :2]))))  # image pixels per chip pixel
    while scale >= 2.0 and min(image.shape[:2]) >= 4:
        image = cv2.pyrDown(image)  # blur + halve: no aliasing when the face is much larger than the chip
        chip_to_image, scale = chip_to_image / 2.0, scale / 2.0
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        chip_to_image,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
