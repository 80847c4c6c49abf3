"""What the model-quality benches share: durable report files and the command line that made them."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from models.core.durable import atomic_write_bytes


def training_args() -> list[str]:
    """This command line without --report-only: the command that trained what is reported."""
    return [a for a in sys.argv[1:] if a != "--report-only"]


def command_line(script: str) -> str:
    """The command that trained what is reported, with the ``OMP_NUM_THREADS`` it ran under (training
    takes that many threads, ``models.training.run.training_threads``)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{prefix}.venv/bin/python bench/{script} " + shlex.join(training_args())


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
