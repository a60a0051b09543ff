"""`aetool corrupt`: reconstruction error under noise for trained models (the report's Table 1).

Prints one table with a column per model side by side, saves `noise_table.json` and the
`noise_examples.png` grid into each run folder (or under `--output` for a bare checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.app import app
from aetool.cli.common import (
    DataDirOption,
    DeviceOption,
    JsonOption,
    RunsOption,
    at_least,
    download_progress,
    handle_errors,
    print_json,
    progress_bar,
    stderr,
)
from aetool.cli.noises import parse_noise_option
from aetool.noises import DEFAULT_NOISE_SPECS


@dataclass
class Target:
    """A model to corrupt: where it comes from and where its results go."""

    name: str
    ed: int
    model: torch.nn.Module
    dataset: str
    folder: Path | None


@app.command()
@handle_errors
def corrupt(
    ed: Annotated[
        list[int] | None,
        typer.Option("--ed", help="Only runs (or checkpoints) with this encoding dimension; "
                     "repeatable."),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option("--run", help="A run folder name in the workspace (or a path); repeatable.",
                     show_default="every finished run"),
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="A bare state_dict file (e.g. the report's "
                     "net_params_4.pth) instead of runs; repeatable.", dir_okay=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="With --checkpoint: save each checkpoint's table and "
                     "examples in OUTPUT/<file name>/ (default: save nothing).", file_okay=False),
    ] = None,
    noise: Annotated[
        list[str] | None,
        typer.Option("--noise", help="NAME or NAME:param=value,... (a|b|c sweeps); repeatable. "
                     "See `aetool noises`.", show_default=" ".join(DEFAULT_NOISE_SPECS)),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every noise's generator.")] = 42,
    batch_size: Annotated[
        int, typer.Option(help="Test images per batch.", callback=at_least(1))
    ] = 1000,
    examples: Annotated[
        int, typer.Option(help="Test images per noise in the example PNG (0: no PNG).",
                          callback=at_least(0))
    ] = 3,
    device: DeviceOption = "auto",
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="mnist or fashion-mnist.",
                     show_default="the one each run was trained on; mnist for --checkpoint"),
    ] = None,
    data_dir: DataDirOption = None,
    runs_root: RunsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Measure MSE(reconstruction of corrupted test image, clean test image) for each noise.

    Default: every finished run in the workspace and the report's Table 1 noises (original,
    gaussian sigma 0.1, 0.3, 0.5, 1, 2, occlusion, uniform), seeded.
    """
    from aetool.corrupt import corrupt_and_save
    from aetool.data import DATASETS, load_dataset
    from aetool.devices import resolve_device

    noises = parse_noise_option(noise or DEFAULT_NOISE_SPECS)
    if dataset is not None and dataset not in DATASETS:
        raise typer.BadParameter(f"unknown data set {dataset!r}; choose one of: "
                                 f"{', '.join(DATASETS)}", param_hint="'--dataset'")
    if output is not None and not checkpoint:
        raise typer.BadParameter("only goes with --checkpoint (runs save into their folders)",
                                 param_hint="'--output'")
    torch_device = resolve_device(device)
    targets = select_targets(ed, run, checkpoint, output, dataset, runs_root, torch_device)

    test_sets: dict[str, torch.Tensor] = {}
    records = []
    with progress_bar() as progress:
        task = progress.add_task("corrupt", total=len(targets) * len(noises))
        for target in targets:
            if target.dataset not in test_sets:
                with download_progress() as data_progress:
                    data = load_dataset(target.dataset, data_dir, torch_device, data_progress)
                test_sets[target.dataset] = data.test_images
            progress.update(task, description=f"corrupt {escape(target.name)}")
            record = corrupt_and_save(
                target.model, test_sets[target.dataset], noises, target.folder, target.name,
                target.ed, seed=seed, batch_size=batch_size, examples=examples,
                on_row=lambda row: progress.advance(task),
            )
            records.append({**record, "folder": target.folder})

    if json_output:
        print_json({"seed": seed, "noises": [n.as_dict() for n in noises], "models": records})
        return
    stderr.print(side_by_side(records))
    for record in records:
        if record["folder"] is not None:
            stderr.print(f"Saved noise_table.json"
                         f"{' and ' + record['examples'] if record['examples'] else ''} "
                         f"in [bold]{escape(str(record['folder']))}[/]", highlight=False)
    if checkpoint and output is None:
        stderr.print("Nothing saved for --checkpoint models; pass --output DIR to keep them.")


def select_targets(
    eds: list[int] | None,
    names: list[str] | None,
    checkpoints: list[Path] | None,
    output: Path | None,
    dataset: str | None,
    runs_root: Path | None,
    device: torch.device,
) -> list[Target]:
    """The runs (`--run`/`--ed`, default all finished) and/or bare checkpoints to corrupt."""
    from aetool import runs
    from aetool.errors import AetoolError
    from aetool.model import load_model

    targets = []
    if checkpoints:
        for path in checkpoints:
            model = load_model(path, None, device)
            if eds and model.encoding_dim not in eds:
                raise AetoolError(f"Checkpoint {path} has encoding dimension "
                                  f"{model.encoding_dim}, not {', '.join(map(str, eds))}.")
            folder = output / path.stem if output is not None else None
            targets.append(Target(path.stem, model.encoding_dim, model, dataset or "mnist",
                                  folder))
    if names or not checkpoints:
        for found in runs.select_runs(runs_root, names, None if checkpoints else eds):
            targets.append(Target(found.name, found.ed, found.model(device),
                                  dataset or found.config.get("dataset", "mnist"), found.path))
    return targets


def side_by_side(records: list[dict[str, Any]]) -> Table:
    """Rows = noises, one MSE column per model, as in the report's Table 1."""
    table = Table(title="aetool corrupt: MSE(reconstruction of corrupted, clean)")
    table.add_column("noise", style="bold")
    for record in records:
        table.add_column(f"ED={record['ed']}\n{escape(record['run'])}", justify="right")
    for i, row in enumerate(records[0]["rows"] if records else []):
        table.add_row(escape(row["label"]),
                      *(f"{record['rows'][i]['mse']:.6f}" for record in records))
    return table
