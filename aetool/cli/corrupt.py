"""`aetool corrupt`: reconstruction error under noise for trained models (the report's Table 1).

Prints one table with a column per model side by side, saves `noise_table.json` and the
`noise_examples.png` grid into each run folder (or under `--output` for a bare checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool import workspace as runs
from aetool.cli.app import app, examples
from aetool.cli.common import (
    DATASET_HELP,
    DataDirOption,
    DeviceOption,
    JsonOption,
    RunsOption,
    at_least,
    dataset_choice,
    handle_errors,
    print_json,
    seed_range,
    stderr,
)
from aetool.cli.longrun import (
    LogEveryOption,
    Progress,
    QuietOption,
    ThreadsOption,
    use_threads,
)
from aetool.cli.noises import parse_noise_option
from aetool.cli.skipped import finish
from aetool.noises import DEFAULT_NOISE_SPECS


@app.command(epilog=examples(
    "aetool corrupt --ed 4 --ed 32 --json",
    "aetool corrupt --run ed4 --noise original --noise gaussian:sigma=0.2|0.4"))
@handle_errors
def corrupt(
    ed: Annotated[
        list[int] | None,
        typer.Option("--ed", metavar="ED", help="Only runs (or checkpoints) with this "
                     "encoding dimension; repeatable."),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option("--run", metavar="NAME", help="A run's name in the workspace; "
                     "repeatable.", show_default="every finished run"),
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", metavar="FILE", help="A bare state_dict file (e.g. "
                     "the report's net_params_4.pth) instead of runs; repeatable.",
                     dir_okay=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="With --checkpoint: save each checkpoint's table and "
                     "examples in OUTPUT/<file name>/ (default: save nothing).", file_okay=False),
    ] = None,
    noise: Annotated[
        list[str] | None,
        typer.Option("--noise", metavar="NOISE", help="NAME or NAME:param=value,... "
                     "(a|b|c sweeps); repeatable. See `aetool noises`.",
                     show_default=" ".join(DEFAULT_NOISE_SPECS)),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every noise's generator.",
                                    callback=seed_range)] = 42,
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
        typer.Option("--dataset", help=DATASET_HELP, callback=dataset_choice,
                     show_default="the one each run was trained on; mnist for --checkpoint"),
    ] = None,
    data_dir: DataDirOption = None,
    runs_root: RunsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    log_every: LogEveryOption = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Measure MSE(reconstruction of corrupted test image, clean test image) for each noise.

    Default: every finished run in the workspace and the report's Table 1 noises (original,
    gaussian sigma 0.1, 0.3, 0.5, 1, 2, occlusion, uniform), seeded.
    """
    from aetool.devices import resolve_device
    from aetool.evaluate import corrupt as library

    noises = parse_noise_option(noise or DEFAULT_NOISE_SPECS)
    if output is not None and not checkpoint:
        raise typer.BadParameter("only goes with --checkpoint (runs save into their folders)",
                                 param_hint="'--output'")
    torch_device = resolve_device(device)
    use_threads(threads)
    targets = []
    skipped: list[runs.Unreadable] = []  # runs of the whole workspace that cannot be loaded
    skip = skipped if not run and not checkpoint else None
    if checkpoint:
        targets += library.checkpoint_targets(checkpoint, torch_device, ed, output, dataset)
    if run or not checkpoint:
        found = runs.Workspace(runs_root).select(run, None if checkpoint else ed, skip)
        targets += library.run_targets(found, torch_device, dataset, skip)
    with Progress(quiet=quiet, interval=log_every) as progress:
        progress.add("corrupt", total=len(targets) * len(noises), unit="rows")
        records = library.corrupt_models(
            targets, noises, torch_device, data_dir=data_dir, seed=seed, batch_size=batch_size,
            examples=examples, data_progress=progress, on_progress=progress, skipped=skip,
        )
    if json_output:
        print_json({"seed": seed, "noises": [n.as_dict() for n in noises], "models": records,
                    "skipped": [vars(entry) for entry in skipped]})
        finish(skipped)
        return
    print_saved(records, {t.name: t.spec for t in targets}, bool(checkpoint) and output is None)
    finish(skipped)


def print_saved(records: list[dict[str, Any]], specs: dict[str, str], unsaved: bool) -> None:
    """The noise tables side by side and where each was saved, on stderr."""
    if records:
        stderr.print(side_by_side(records, specs))
    for record in records:
        if record["folder"] is not None:
            stderr.print(f"Saved {runs.NOISE_TABLE}"
                         f"{' and ' + record['examples'] if record['examples'] else ''} "
                         f"in [bold]{escape(str(record['folder']))}[/]", highlight=False)
    if unsaved:
        stderr.print("Nothing saved for --checkpoint models; pass --output DIR to keep them.")


def side_by_side(records: list[dict[str, Any]], specs: dict[str, str] | None = None) -> Table:
    """Rows = noises, one MSE column per model (headed by its ED, name and `specs[name]`, the
    model), as in the report's Table 1."""
    table = Table(title="aetool corrupt: MSE(reconstruction of corrupted, clean)")
    table.add_column("noise", style="bold")
    for record in records:
        spec = (specs or {}).get(record["run"])
        table.add_column(f"ED={record['ed']}\n{escape(record['run'])}"
                         + (f"\n{escape(spec)}" if spec else ""), justify="right")
    for i, row in enumerate(records[0]["rows"] if records else []):
        table.add_row(escape(row["label"]),
                      *(f"{record['rows'][i]['mse']:.6f}" for record in records))
    return table
