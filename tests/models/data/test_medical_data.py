"""Chest X-ray study loaders: DICOM decoding on pydicom's bundled real files, a CheXpert-style CSV built
from them, the real CheXpert label CSV and the Indiana University reports shipped in torchxrayvision."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from models.core.errors import InvalidEncoderInput
from models.core.fetch import Fetcher
from models.data.medical import (
    CHEXPERT_LABELS,
    MedicalDataError,
    decode_study_image,
    dicom_to_rgb,
    is_dicom,
    load_study_image,
    read_study_csv,
)
from models.data.xray_reports import WHEEL, load_reports, parse_report, single_label_reports


def pydicom_file(name: str) -> Path:
    return Path(str(get_testdata_file(name)))  # bundled in the wheel (these names need no download)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_ct_pixels_go_through_the_modality_lut_and_span_the_grey_range() -> None:
    data = pydicom_file("CT_small.dcm").read_bytes()
    assert is_dicom(data)
    rgb = dicom_to_rgb(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert rgb.shape == (ds.Rows, ds.Columns, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # no window: min..max
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)


def test_mr_uses_the_header_window_and_byte_order_does_not_matter() -> None:
    little, big = (pydicom_file(n).read_bytes() for n in ("MR_small.dcm", "MR_small_bigendian.dcm"))
    ds = pydicom.dcmread(io.BytesIO(little))
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low = centre - width / 2
    expected = np.round(np.clip((ds.pixel_array - low) / width, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(dicom_to_rgb(little)[..., 0], expected)
    np.testing.assert_array_equal(dicom_to_rgb(big), dicom_to_rgb(little))


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    normal = dicom_to_rgb(dicom_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(dicom_to_rgb(dicom_bytes(ds)), 255 - normal)


def test_unusable_dicom_is_refused_clearly() -> None:
    with pytest.raises(InvalidEncoderInput, match="no pixel data"):
        dicom_to_rgb(pydicom_file("rtplan.dcm").read_bytes())
    truncated = pydicom_file("CT_small.dcm").read_bytes()[:1000]
    with pytest.raises(InvalidEncoderInput, match="DICOM"):
        dicom_to_rgb(truncated)
    with pytest.raises(InvalidEncoderInput):
        decode_study_image(b"\0" * 128 + b"DICM" + b"garbage")


def test_other_images_pass_through_the_safe_decoder() -> None:
    png = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    assert not is_dicom(png.getvalue())
    assert decode_study_image(png.getvalue()).shape == (5, 7, 3)
    with pytest.raises(InvalidEncoderInput):
        decode_study_image(b"not an image at all")


def test_chexpert_style_csv_of_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (tmp_path / "img" / name).write_bytes(pydicom_file(name).read_bytes())
    with open(tmp_path / "s.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Path", "Sex", "Age", "AP/PA", "Report", "No Finding", "Cardiomegaly", "Edema"])
        w.writerow(["img/CT_small.dcm", "Male", "71", "PA", "Enlarged heart. Mild edema?", "", "1.0", "-1.0"])
        w.writerow(["img/MR_small.dcm", "Female", "33", "AP", "Clear lungs.", "1", "0", ""])
    first, second = read_study_csv(tmp_path / "s.csv", require_report=True)
    assert first.path == tmp_path / "img" / "CT_small.dcm" and first.report == "Enlarged heart. Mild edema?"
    assert first.labels == {"No Finding": None, "Cardiomegaly": 1.0, "Edema": -1.0}  # Sex/Age/AP-PA are not labels
    assert first.positives() == ["Cardiomegaly"] and first.positives("ones") == ["Cardiomegaly", "Edema"]
    assert first.primary_label() == "Cardiomegaly" and second.primary_label() == "No Finding"
    assert load_study_image(first.path).shape == (128, 128, 3) and load_study_image(second.path).shape == (64, 64, 3)


def test_label_columns_are_found_by_their_values_when_not_chexpert_names(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("image_path,text,site,nodule,mass\na.png,x,3,1,-1\nb.png,y,2,,0\n")
    rows = read_study_csv(tmp_path / "s.csv")
    assert rows[0].labels == {"nodule": 1.0, "mass": -1.0} and rows[1].labels == {"nodule": None, "mass": 0.0}
    assert read_study_csv(tmp_path / "s.csv", label_columns=["mass"])[0].labels == {"mass": -1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("report,Cardiomegaly\nx,1\n", "no image path column"),
        ("Path,Report,Cardiomegaly\na.dcm,x,2\n", "row 2: label 'Cardiomegaly' is '2'"),
        ("Path,Report,Cardiomegaly\na.dcm,,1\n", "row 2: empty report"),
        ("Path,Report\n", "no rows"),
    ],
)
def test_bad_csv_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(MedicalDataError, match=message):
        read_study_csv(tmp_path / "s.csv", require_report=True)
    with pytest.raises(MedicalDataError, match="cannot read"):
        load_study_image(tmp_path / "missing.dcm")


@pytest.fixture(scope="module")
def xrv_wheel(zoo_dirs: tuple[Path, Path]) -> Path:
    return Fetcher(zoo_dirs[1]).fetch(WHEEL)  # sha256-pinned; cached for the session


def test_real_chexpert_label_csv(xrv_wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(xrv_wheel) as zf:
        lines = gzip.decompress(zf.read("torchxrayvision/data/chexpert_train.csv.gz")).decode().splitlines()
    (tmp_path / "chexpert.csv").write_text("\n".join(lines[:301]) + "\n")
    studies = read_study_csv(tmp_path / "chexpert.csv", image_root=Path("/data"))
    assert len(studies) == 300 and all(s.report is None for s in studies)
    assert list(studies[0].labels) == list(CHEXPERT_LABELS)
    assert studies[0].path == Path("/data/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert studies[0].positives() == ["No Finding", "Support Devices"] and studies[0].labels["Pneumothorax"] == 0.0
    values = {v for s in studies for v in s.labels.values()}
    assert values == {None, 0.0, 1.0, -1.0}


def test_iu_xray_reports(xrv_wheel: Path, zoo_dirs: tuple[Path, Path]) -> None:
    reports = load_reports(zoo_dirs[1])
    assert len(reports) == 3927  # of 3,955: those with findings or impression text
    first = reports[0]
    assert first.uid == "CXR1" and first.mesh_major == ("normal",) and first.impression == "Normal chest x-XXXX."
    assert first.text.startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    labelled = single_label_reports(reports, min_per_label=20)
    labels = {label for _, label in labelled}
    assert {"normal", "Cardiomegaly", "Calcified Granuloma"} <= labels
    assert all(len(r.mesh_heads) == 1 for r, _ in labelled)
    multi = parse_report(b"<e><uId id='X'/><MeSH><major>Opacity/lung/left</major><major>Opacity/lung/right</major>"
                         b"<major>Cardiomegaly</major></MeSH></e>", "x.xml")  # fmt: skip
    assert multi.mesh_heads == ("Opacity", "Cardiomegaly") and multi.text == ""
