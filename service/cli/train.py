"""``ers train FAMILY`` and ``ers eval ARTIFACT``: the training recipes of models/training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from models.core.errors import ModelError
from models.training.run import shown
from service.settings import Settings

console = Console()
err = Console(stderr=True)
DataDirOption = Annotated[Path | None, typer.Option(help="where zoo models and data sets are cached (ERS_DATA_DIR)")]


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else Settings().data_dir


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else shown(value))
    console.print(table)


def train(
    family: Annotated[str, typer.Argument(help="recipe: facenet | two-branch | convirt | unified")],
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name such as two-branch-tiny")],
    out: Annotated[Path, typer.Option(help="artifact directory to write (loadable by the service)")],
    resume: Annotated[bool, typer.Option(help="continue from the last epoch checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (auto picks CUDA when present)")] = "auto",
    data_dir: DataDirOption = None,
    compatible_with: Annotated[
        Path | None, typer.Option(help="old artifact: train a backward-compatible new model")
    ] = None,
    method: Annotated[str | None, typer.Option(help="bct | bt2 | oca (with --compatible-with)")] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="with --method bt2: the new config already trained alone (its gallery tower) to distil "
            "from, instead of training <name>-independent first"
        ),
    ] = None,
) -> None:
    """Train an encoder family; writes weights + ONNX + spec + metrics.json + MODEL_CARD.md."""
    from models.training.recipe import TrainRequest, recipe
    from models.training.run import load_config

    if (compatible_with is None) != (method is None):
        err.print("[red]error:[/red] --compatible-with and --method go together")
        raise typer.Exit(2)
    if method is not None and method not in ("bct", "bt2", "oca"):
        err.print(f"[red]error:[/red] --method must be bct, bt2 or oca, got '{method}'")
        raise typer.Exit(2)
    try:
        request = TrainRequest(
            config=load_config(config), out=out, resume=resume, device=device, data_dir=_data_dir(data_dir),
            compatible_with=compatible_with, method=method, teacher=teacher,  # type: ignore[arg-type]
        )  # fmt: skip
        result = recipe(family).train(request)
    except ModelError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    _print_metrics(f"{family} → {result.artifact}", result.metrics)


def evaluate(
    artifact: Annotated[Path, typer.Argument(help="artifact directory written by `ers train`")],
    data: Annotated[
        str | None, typer.Option(help="evaluation data (recipe-specific; default: its held-out set)")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    seeds: Annotated[
        int | None,
        typer.Option(help="retrain the artifact's config with seeds 0..N-1: mean ± 95% CI, paired baselines"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="with --seeds: keep each seed's artifacts here (a rerun reads them back)")
    ] = None,
) -> None:
    """Evaluate a trained artifact with its recipe's protocol (or, with --seeds, its training run over seeds)."""
    from models.core.artifact import verify_artifact
    from models.training.recipe import recipe

    try:
        spec = verify_artifact(artifact)
        name = spec.config.get("recipe")
        if not name:
            err.print(f"[red]error:[/red] {artifact} was not made by `ers train` (no recipe in its spec)")
            raise typer.Exit(2)
        if seeds is not None or out is not None:
            _evaluate_seeds(artifact, str(name), spec.compatible_with, data, seeds, out, _data_dir(data_dir), as_json)
            return
        metrics = recipe(str(name)).evaluate(artifact, data, _data_dir(data_dir))
    except ModelError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _print_metrics(f"eval {spec.key}", metrics)


def _evaluate_seeds(
    artifact: Path, name: str, compatible_with: str | None, data: str | None, seeds: int | None, out: Path | None,
    data_dir: Path, as_json: bool,
) -> None:  # fmt: skip
    from models.eval.seeds import evaluate_seeds, training_config

    if seeds is None:
        refusal = "--out goes with --seeds"
    elif seeds < 2:
        refusal = "--seeds must be at least 2 (the protocol asks for 5)"
    elif data is not None:
        refusal = "--data goes without --seeds (each seed's run evaluates on its own held-out split)"
    elif compatible_with:
        refusal = (f"{artifact} is compatible with {compatible_with}: each seed would need its own old model; "
                   "bench/compat_families.py measures compatible training over seeds")  # fmt: skip
    else:
        refusal = ""
    if refusal or seeds is None:
        err.print(f"[red]error:[/red] {refusal}")
        raise typer.Exit(2)

    def progress(seed: int, metrics: dict[str, float]) -> None:
        err.print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:4]))

    summary = evaluate_seeds(name, training_config(artifact), list(range(seeds)), data_dir, out, progress)
    if as_json:
        print(json.dumps(summary.to_json(), indent=2, sort_keys=True))
        return
    table = Table("metric", "mean ± 95% CI", f"{seeds} seeds", title=f"{name}: {artifact.name} retrained over seeds")
    for key, (mean, half) in summary.metrics.items():
        table.add_row(key, f"{mean:.4f} ± {half:.4f}", " ".join(f"{r[key]:.4f}" for r in summary.runs))
    console.print(table)
    paired_table = Table("metric", "baseline", "difference (paired) ± 95% CI", "above the baseline?", title="paired")
    for key, baselines in summary.versus.items():
        for baseline, (mean, half) in baselines.items():
            paired_table.add_row(key, baseline, f"{mean:+.4f} ± {half:.4f}", "yes" if mean - half > 0 else "no")
    console.print(paired_table)
    if summary.bootstrapped:  # the recipe kept per-query scores: intervals over seeds and queries together
        boot = Table("metric", "mean [95% bootstrap, seeds × queries]", "baseline", "difference (paired by query)",
                     "above the baseline?", title="bootstrap over seeds and queries")  # fmt: skip
        for key, (mean, low, high) in summary.bootstrapped.items():
            boot.add_row(key, f"{mean:.4f} [{low:.4f}, {high:.4f}]", "", "", "")
            for baseline, (d, d_low, d_high) in summary.bootstrapped_versus.get(key, {}).items():
                boot.add_row("", "", baseline, f"{d:+.4f} [{d_low:+.4f}, {d_high:+.4f}]", "yes" if d_low > 0 else "no")
        console.print(boot)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
