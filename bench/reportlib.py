"""What the model-quality benches share: durable report files and the command line that made them."""

from __future__ import annotations

import sys
from pathlib import Path

from models.core.durable import atomic_write_bytes


def training_args() -> list[str]:
    """This command line without --report-only: the command that trained what is reported."""
    return [a for a in sys.argv[1:] if a != "--report-only"]


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
