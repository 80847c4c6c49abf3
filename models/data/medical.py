"""Chest X-ray studies as users bring them: a MIMIC-CXR/CheXpert-style CSV and DICOM or PNG/JPEG files.

The CSV has one row per image: an image path column (``Path`` in CheXpert, ``path``, ``image_path``,
``image path``, ``dicom_path``), an optional report text column (``report``, ``report_text``, ``text``,
``findings``...) and label columns in CheXpert's encoding: ``1`` positive, ``0`` negative, ``-1``
uncertain, blank not mentioned (floats such as ``1.0`` are accepted too). Label columns are the 14
CheXpert observations present in the file, or the ``label_columns`` asked for, or failing both every
other column whose values all use that encoding (so ``Sex``/``Age``/``AP/PA`` are never mistaken for
labels). Relative paths are resolved against ``image_root`` (default: the CSV's folder).

DICOM pixel data (read by pydicom) goes through the modality LUT (rescale slope/intercept), the VOI
window from the header when there is one (else the image's own min..max), MONOCHROME1 inversion, and
becomes an 8-bit grayscale image repeated over 3 channels: what the RGB image encoders take.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.core.errors import InvalidEncoderInput, ModelError
from models.core.images import DEFAULT_MAX_PIXELS, decode_image

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
PATH_COLUMNS = ("path", "image_path", "image path", "imagepath", "dicom_path", "dicom path", "file", "filename")
REPORT_COLUMNS = ("report", "report_text", "report text", "text", "caption", "findings", "impression")
LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
UncertainPolicy = Literal["ones", "zeros", "ignore"]  # CheXpert's U-Ones / U-Zeros / U-Ignore


class MedicalDataError(ModelError):
    """The CSV or an image in it cannot be used; the message says which row and why."""

    code = "medical_data_error"


@dataclass(frozen=True)
class Study:
    path: Path
    report: str | None
    labels: dict[str, float | None] = field(default_factory=dict)  # 1 / 0 / -1 (uncertain) / None (blank)

    def positives(self, uncertain: UncertainPolicy = "ignore") -> list[str]:
        """Labels counted positive; uncertain ones count as positive only with ``uncertain="ones"``."""
        wanted = (1.0, -1.0) if uncertain == "ones" else (1.0,)
        return [name for name, value in self.labels.items() if value in wanted]

    def primary_label(self, uncertain: UncertainPolicy = "ignore") -> str:
        """One label for retrieval metrics: the first positive observation other than "No Finding",
        "No Finding" when that is the only one, else "unlabelled"."""
        positives = self.positives(uncertain)
        findings = [p for p in positives if p != "No Finding"]
        return findings[0] if findings else (positives[0] if positives else "unlabelled")


def _find_column(header: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[n] for n in names if n in lowered), None)


def _label_value(raw: str, column: str, row: int) -> float | None:
    text = raw.strip()
    if not text:
        return None
    if text not in LABEL_VALUES:
        raise MedicalDataError(f"row {row}: label '{column}' is '{raw}'; expected 1, 0, -1 or blank")
    return LABEL_VALUES[text]


def read_study_csv(
    csv_path: Path,
    image_root: Path | None = None,
    label_columns: Sequence[str] | None = None,
    require_report: bool = False,
    limit: int | None = None,
) -> list[Study]:
    """The studies of a MIMIC-CXR/CheXpert-style CSV (see the module doc); images are not opened here."""
    root = image_root if image_root is not None else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedicalDataError(f"{csv_path}: cannot read the CSV: {exc}") from exc
    if not rows:
        raise MedicalDataError(f"{csv_path}: no rows")
    header = list(rows[0].keys())
    path_col = _find_column(header, PATH_COLUMNS)
    if path_col is None:
        raise MedicalDataError(f"{csv_path}: no image path column; expected one of {PATH_COLUMNS}, got {header}")
    report_col = _find_column(header, REPORT_COLUMNS)
    if require_report and report_col is None:
        raise MedicalDataError(f"{csv_path}: no report text column; expected one of {REPORT_COLUMNS}")
    if label_columns is not None:
        missing = [c for c in label_columns if c not in header]
        if missing:
            raise MedicalDataError(f"{csv_path}: label columns {missing} are not in the header {header}")
        labels = list(label_columns)
    else:
        labels = [c for c in header if c in CHEXPERT_LABELS] or [
            c for c in header if c not in (path_col, report_col)
            and all((r[c] or "").strip() in ("", *LABEL_VALUES) for r in rows)
            and any((r[c] or "").strip() for r in rows)
        ]  # fmt: skip
    studies = []
    for number, row in enumerate(rows[:limit] if limit is not None else rows, start=2):  # row 1 is the header
        raw_path = (row[path_col] or "").strip()
        if not raw_path:
            raise MedicalDataError(f"{csv_path} row {number}: empty image path")
        report = (row[report_col] or "").strip() if report_col else None
        if require_report and not report:
            raise MedicalDataError(f"{csv_path} row {number}: empty report text")
        path = Path(raw_path)
        studies.append(
            Study(
                path=path if path.is_absolute() else root / path,
                report=report or None,
                labels={c: _label_value(row[c] or "", c, number) for c in labels},
            )
        )
    return studies


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def _window(ds: Any) -> tuple[float, float] | None:
    """(centre, width) of the first VOI window in the header, if any."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    first = [float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v) for v in (centre, width)]
    return (first[0], first[1]) if first[1] > 0 and all(math.isfinite(x) for x in first) else None


def dicom_to_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``(H, W, 3)`` uint8 grayscale from DICOM bytes (the first frame of a multi-frame image)."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InvalidEncoderInput(f"DICOM could not be read: {exc}") from exc
    if "PixelData" not in ds:
        raise InvalidEncoderInput(f"DICOM has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise InvalidEncoderInput(f"DICOM image is {cols}x{rows} pixels; the limit is {max_pixels}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidEncoderInput(f"DICOM photometric interpretation {photometric} is not grayscale")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for compressed data it has no decoder for
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise InvalidEncoderInput(f"DICOM pixel data (transfer syntax {syntax}) cannot be decoded: {exc}") from exc
    if pixels.ndim == 3:  # (frames, H, W): take the first frame
        pixels = pixels[0]
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    window = _window(ds)
    if window is not None:
        centre, width = window
        low, high = centre - width / 2.0, centre + width / 2.0
    else:
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        scaled = 1.0 - scaled
    gray = np.round(scaled * 255.0).astype(np.uint8)  # (H, W)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)


def decode_study_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``(H, W, 3)`` uint8 from DICOM or from any image format ``models.core.images`` accepts."""
    if isinstance(data, bytes | bytearray) and is_dicom(bytes(data)):
        return dicom_to_rgb(bytes(data), max_pixels)
    return decode_image(data, max_pixels)


def load_study_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedicalDataError(f"{path}: cannot read the image: {exc}") from exc
    try:
        return decode_study_image(data, max_pixels)
    except InvalidEncoderInput as exc:
        raise MedicalDataError(f"{path}: {exc}") from exc
