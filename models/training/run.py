"""The shared pieces of a training run: config files, seeds, device, progress bar, model card."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.core.artifact import write_manifest
from models.core.durable import atomic_write_bytes
from models.core.spec import EncoderSpec
from models.training.recipe import TrainingError

CONFIG_DIR = Path(__file__).parent / "configs"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
T = TypeVar("T")


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a config shipped in ``models/training/configs`` ("two-branch-tiny")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise TrainingError(f"config '{name_or_path}' is neither a file nor a shipped config; shipped: {known}")


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    import yaml

    path = config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TrainingError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainingError(f"{path} must hold a mapping of settings")
    return data


def parse_config(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config dataclass, refusing unknown keys (a typo must not silently train the default)."""
    assert is_dataclass(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainingError(f"unknown config keys {unknown} for {cls.__name__}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TrainingError(f"bad config for {cls.__name__}: {exc}") from exc


def config_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preference: str = "auto") -> str:
    """ "auto" picks CUDA when torch sees a GPU; asking for CUDA without one is an error, not a fallback."""
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but torch sees no CUDA device")
    if preference not in ("cpu", "cuda"):
        raise TrainingError(f"device must be auto, cpu or cuda, got '{preference}'")
    return preference


def training_threads() -> int:
    """Training uses every core (it is the only job; ERS_THREADS, the server's, does not apply to it),
    unless ``OMP_NUM_THREADS`` says how many: the usual way to share a machine between jobs."""
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    if asked.isdigit() and int(asked) > 0:
        return int(asked)
    return max(1, os.cpu_count() or 1)


@contextmanager
def progress_bar(total_steps: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar with the running loss: ``bar.step(loss=0.31)`` after every step."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class Bar:
        def __init__(self, progress: Progress | None, task: Any) -> None:
            self.progress, self.task = progress, task
            self.last: dict[str, float] = {}

        def step(self, n: int = 1, **values: float) -> None:
            self.last.update(values)
            if self.progress is not None:
                shown = " ".join(f"{k} {v:.4f}" for k, v in self.last.items())
                self.progress.update(self.task, advance=n, values=shown)

    if not enabled:
        yield Bar(None, None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[values]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=False) as progress:
        yield Bar(progress, progress.add_task(description, total=total_steps, values=""))


def batches(n: int, size: int, rng: np.random.Generator, drop_last: bool = True) -> Iterable[np.ndarray]:
    order = rng.permutation(n)
    stop = n - n % size if drop_last and n >= size else n
    for start in range(0, stop, size):
        yield order[start : start + size]


def attach_files(artifact: Path, files: dict[str, str]) -> None:
    """Add files (metrics, model card) to a published artifact and re-hash its manifest.

    Each file lands whole (the one durable-write helper), so a crash leaves the old file or the new
    one, never half a file that would fail the manifest check."""
    for name, text in files.items():
        atomic_write_bytes(artifact / name, text.encode())
    write_manifest(artifact)


TRAINING_FILE = "training.json"  # models.eval.seeds reads it


def shown(value: Any, longest: int = 32) -> str:
    """A metric for a card or a console: long per-query lists are summarised (metrics.json has them)."""
    if isinstance(value, list) and len(value) > longest:
        return f"({len(value)} values in metrics.json)"
    return value if isinstance(value, str) else json.dumps(value)


def write_card(
    artifact: Path, spec: EncoderSpec, metrics: dict[str, Any], config: dict[str, Any], notes: str = ""
) -> None:
    """``metrics.json`` + ``MODEL_CARD.md`` beside the weights, covered by the sha256 manifest."""
    metrics = {**metrics, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {shown(v)} |"
                     for k, v in metrics.items())  # fmt: skip
    card = (
        f"# {spec.key}\n\n{spec.description}\n\n"
        f"- family: `{spec.family}`, modality: {spec.modality}, dim: {spec.dim}, metric: {spec.metric}\n"
        f"- compatible with: {spec.compatible_with or '-'} (compat dims: {spec.compat_dims or '-'})\n"
        f"- source: {spec.source or '-'}; licence: {spec.license or '-'}\n\n"
        f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Training config\n\n```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```\n"
        + (f"\n## Notes\n\n{notes}\n" if notes else "")
    )
    # the config again as JSON, so `ers eval --seeds N` can retrain exactly this run with other seeds
    training = json.dumps(config, indent=2, sort_keys=True) + "\n"
    attach_files(artifact, {METRICS_FILE: json.dumps(metrics, indent=2, sort_keys=True) + "\n", CARD_FILE: card,
                            TRAINING_FILE: training})  # fmt: skip
