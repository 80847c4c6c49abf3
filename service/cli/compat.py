"""``ers compat OLD NEW --data ...``: the compatibility report of two encoder artifacts.

``--data`` is labelled evaluation data:

* ``fmnist`` or ``fmnist:N``: the Fashion-MNIST test split (or N items of it, evenly spread);
* a JSONL file, one ``{"text": ...}``, ``{"image": "<path>"}`` or ``{"record": {...}}`` with a ``"label"``
  per line (image paths relative to the file; a record is what a record encoder takes).

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
        given = [key for key in ("text", "image", "record") if key in row]
        if "label" not in row or len(given) != 1:
            raise ValueError(f"{path}:{n}: each line needs a label and exactly one of text / image / record")
        if given == ["image"]:
            inputs.append((path.parent / row["image"]).read_bytes())
        else:
            inputs.append(row[given[0]])
        labels.append(row["label"])
    if not inputs:
        raise ValueError(f"{path} holds no items")
    return inputs, labels


def query_tower(gallery: Path, kind: str) -> Path:
    """The artifact that embeds ``kind`` queries for a collection of ``gallery``'s vectors: the tower
    its spec names for that kind (two-tower models), beside it in the models directory."""
    from models.core.spec import EncoderSpec
    from service.runtime.embedding import query_encoder_key

    spec = EncoderSpec.load(gallery)
    key = query_encoder_key(spec, kind)
    return gallery if key == spec.key else gallery.parent / key


def tower_report(old: Path, new: Path, data: str, queries: Path, data_dir: Path, dims: int | None) -> Any:
    """``--queries``: the queries' towers of OLD and NEW against the gallery ``data`` of each."""
    from models.compat.report import embed, tower_report_from_vectors
    from models.core.registry import load_encoder

    g_inputs, g_labels = load_eval_data(data, data_dir)
    q_inputs, q_labels = load_eval_data(str(queries), data_dir)
    first = json.loads(queries.read_text().splitlines()[0])
    kind = next(k for k in ("text", "image", "record") if k in first)
    old_g, new_g = load_encoder(old), load_encoder(new)
    old_q, new_q = load_encoder(query_tower(old, kind)), load_encoder(query_tower(new, kind))
    queried = embed(old_q, q_inputs), embed(new_q, q_inputs)
    galleries = embed(old_g, g_inputs), embed(new_g, g_inputs)
    return tower_report_from_vectors(*queried, q_labels, *galleries, g_labels, dims, old_g.spec.key, new_g.spec.key)


def compat(
    old: Annotated[Path, typer.Argument(help="old encoder artifact directory")],
    new: Annotated[Path, typer.Argument(help="new encoder artifact directory")],
    data: Annotated[str, typer.Option(help="fmnist[:N] or a JSONL file of {text|image|record, label}")],
    queries: Annotated[
        Path | None,
        typer.Option(
            help="JSONL queries of another kind (text, records), embedded by each model's query tower; "
            "DATA is then the gallery"
        ),
    ] = None,
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
        root = data_dir if data_dir is not None else Settings().data_dir
        if queries is not None:
            report = tower_report(old, new, data, queries, root, dims if dims is not None else new_enc.spec.compat_dims)
        else:
            inputs, labels = load_eval_data(data, root)
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
        what = "queries" if queries is not None else "items, query = gallery"
        table = Table("test", "top-1", "mAP", title=f"{report.new} vs {report.old} (n={report.n} {what}, "
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
