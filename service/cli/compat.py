"""``ers compat OLD NEW --data ...``: the compatibility report of two encoder artifacts.

``--data`` is labelled evaluation data:

* ``fmnist`` or ``fmnist:N``: the Fashion-MNIST test split (or N items of it, evenly spread);
* a JSONL file, one ``{"text": ..., "label": ...}`` or ``{"image": "<path>", "label": ...}`` per line
  (image paths relative to the file).

The test set is query and gallery with leave-self-out, cosine; new-model queries are compared with
old vectors on their first ``compat_dims`` dims (transitively along ``compatible_with`` when the old
model sits beside the new one), renormalised. Exit status 0 when the criterion new/old > old/old holds, 1
when it does not (so a script can gate an upgrade on it), 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from models.core.errors import ModelError
from service.settings import Settings

console = Console()
err = Console(stderr=True)


def load_eval_data(data: str, data_dir: Path) -> tuple[list[Any], list[Any]]:
    if data == "fmnist" or data.startswith("fmnist:"):
        from models.data.fashion_mnist import load_fashion_mnist
        from models.training.fmnist import eval_split

        items = int(data.split(":", 1)[1]) if ":" in data else None
        x, y = eval_split(load_fashion_mnist(data_dir / "cache"), items)
        return list(x), y.tolist()
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"--data must be fmnist[:N] or a JSONL file; {path} does not exist")
    inputs, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "label" not in row or ("text" in row) == ("image" in row):
            raise ValueError(f"{path}:{n}: each line needs a label and exactly one of text / image")
        inputs.append(row["text"] if "text" in row else (path.parent / row["image"]).read_bytes())
        labels.append(row["label"])
    if not inputs:
        raise ValueError(f"{path} holds no items")
    return inputs, labels


def compat(
    old: Annotated[Path, typer.Argument(help="old encoder artifact directory")],
    new: Annotated[Path, typer.Argument(help="new encoder artifact directory")],
    data: Annotated[str, typer.Option(help="fmnist[:N] or a JSONL file of {text|image, label}")],
    data_dir: Annotated[Path | None, typer.Option(help="where data sets are cached (ERS_DATA_DIR)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Cross-test NEW against OLD (the BCT protocol): old/old, new/old, new/new, criterion, negative flips."""
    from models.compat.report import compat_chain, compatibility_report
    from models.core.registry import load_encoder
    from models.core.spec import EncoderSpec

    try:
        old_enc, new_enc = load_encoder(old), load_encoder(new)
        dims = None
        if new_enc.spec.compatible_with is not None:
            # Intermediate models of a chain live in the same models directory as NEW.
            known = {old_enc.spec.key: old_enc.spec, new_enc.spec.key: new_enc.spec}
            dims = compat_chain(lambda key: known.get(key) or EncoderSpec.load(new.parent / key), new_enc.spec.key,
                                old_enc.spec.key)  # fmt: skip
        inputs, labels = load_eval_data(data, data_dir if data_dir is not None else Settings().data_dir)
        report = compatibility_report(old_enc, new_enc, inputs, labels, compat_dims=dims)
    except ModelError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(report.dumps())
    else:
        table = Table("test", "top-1", "mAP", title=f"{report.new} vs {report.old} (n={report.n}, "
                      f"compat dims {report.compat_dims or 'all'})")  # fmt: skip
        for name, m in (("old/old", report.old_old), ("new/old", report.new_old), ("new/new", report.new_new)):
            table.add_row(name, f"{m['top1']:.4f}", f"{m['mAP']:.4f}")
        console.print(table)
        verdict = "[green]met[/green]" if report.criterion_met else "[red]NOT met[/red]"
        console.print(f"criterion new/old > old/old: {verdict}; negative flips {report.negative_flips:.4f} "
                      f"(after backfill {report.negative_flips_new_new:.4f})")  # fmt: skip
    if not report.criterion_met:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("compat")(compat)
