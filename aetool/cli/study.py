"""`aetool study`: the report's whole experiment, search -> fit -> corrupt -> embed -> report."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.app import app, examples
from aetool.cli.common import (
    DataDirOption,
    DatasetOption,
    DeviceOption,
    JsonOption,
    ResizeOption,
    RunsOption,
    handle_errors,
    one_of,
    preset_choice,
    print_json,
    seed_range,
    shown,
    stderr,
)
from aetool.cli.fit import PrecisionOption
from aetool.cli.longrun import (
    LogEveryOption,
    Progress,
    QuietOption,
    ThreadsOption,
    duration,
    use_threads,
)
from aetool.cli.models import ModelOption
from aetool.cli.skipped import finish
from aetool.config import StudySettings
from aetool.evaluate.embed import METHODS
from aetool.experiment import STAGES, run_study
from aetool.train.budget import duration_text
from aetool.workspace import Unreadable

_DEFAULTS = StudySettings()


@app.command(epilog=examples(
    "aetool study --ed 4 --ed 32 --time 1h",
    "aetool study --skip-search --max-epochs 50"))
@handle_errors
def study(
    ed: Annotated[list[int] | None, typer.Option(
        "--ed", metavar="ED", help="Encoding dimension; repeatable.",
        show_default=shown(_DEFAULTS.eds))
    ] = None,
    lr: Annotated[list[float] | None, typer.Option(
        "--lr", metavar="LR", help="Learning rate of the search grid; repeatable.",
        show_default=shown(_DEFAULTS.lrs))] = None,
    weight_decay: Annotated[
        list[float] | None,
        typer.Option("--weight-decay", metavar="WD",
                     help="Weight decay of the search grid; repeatable.",
                     show_default=shown(_DEFAULTS.weight_decays)),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Cross-validation folds of the search.",
                                 show_default=shown(_DEFAULTS.folds))
    ] = None,
    search_epochs: Annotated[
        int | None, typer.Option(help="Epochs per (setting, fold) in the search.",
                                 show_default=shown(_DEFAULTS.search_epochs))
    ] = None,
    max_loss: Annotated[
        float | None, typer.Option(help="Search: drop settings whose final validation loss on "
                                   "any fold exceeds this.",
                                   show_default=shown(_DEFAULTS.max_loss))
    ] = None,
    skip_search: Annotated[
        bool, typer.Option("--skip-search", help="Fit with the preset's lr and weight decay.")
    ] = False,
    preset: Annotated[
        str | None, typer.Option(help="fit's starting settings (report: the seed report's exact "
                                 "training).", callback=preset_choice,
                                 show_default=shown(_DEFAULTS.preset))
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="Cap on fit's epochs.")
    ] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", help="Time for the whole study (10m, 1h30m): the search takes "
                     "what it takes, a tenth is kept for corrupt, embed and report, and the "
                     "rest is split equally over the fits, each trained to its share as "
                     "`fit --time` does.", callback=duration),
    ] = None,
    noise: Annotated[
        list[str] | None,
        typer.Option("--noise", metavar="NOISE", help="A noise for corrupt; repeatable.",
                     show_default="the report's Table 1"),
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", metavar="METHOD",
                                       help=f"Projection for embed: {', '.join(METHODS)}; "
                                       "repeatable.", show_default=shown(_DEFAULTS.methods),
                                       callback=one_of(METHODS, "method"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of folds, initialisation and order.",
                                           callback=seed_range,
                                           show_default=shown(_DEFAULTS.seed))] = None,
    val_size: Annotated[
        int | None, typer.Option(help="Training images held out for validation.",
                                 show_default="10000, or a sixth of a smaller data set")
    ] = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    model: ModelOption = None,
    dataset: DatasetOption = None,
    resize: ResizeOption = False,
    data_dir: DataDirOption = None,
    runs_root: RunsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    log_every: LogEveryOption = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Run the whole study: search, fit each ED, corrupt, embed, report.

    Finished work in the workspace is skipped, so an interrupted study continues where it
    stopped. The wall time of every stage is printed and saved in runs/study.json.
    """
    if noise:
        from aetool.cli.noises import parse_noise_option

        parse_noise_option(noise)
    settings = StudySettings.given(  # an option not given is None: the library's default
        eds=ed or None, lrs=lr or None, weight_decays=weight_decay or None, folds=folds,
        search_epochs=search_epochs, max_loss=max_loss, preset=preset, max_epochs=max_epochs,
        noises=noise or None, time_budget=time, methods=method or None, seed=seed,
        device=device, dataset=dataset, resize=resize, val_size=val_size,
        skip_search=skip_search, model=model, precision=precision,
    )
    use_threads(threads)
    with Progress(quiet=quiet, interval=log_every) as progress:
        tasks = {s: progress.add(s, total=None, start=False)
                 for s in STAGES if not (s == "search" and skip_search)}

        def on_stage(result) -> None:
            task = tasks[result.stage]
            total = task.total or 1
            task.update(completed=total, total=total, status=f"{result.seconds:.1f} s")

        summary = run_study(settings, runs_root, data_dir=data_dir, on_progress=progress,
                            on_stage=on_stage)
    skipped = [Unreadable(**entry) for entry in summary.get("unloadable", [])]
    if json_output:
        print_json(summary)
        finish(skipped)
        return
    print_summary(summary)
    finish(skipped)  # runs a stage could not load: a warning each, then exit 1


def print_summary(summary: dict) -> None:
    """The study's wall time per stage, its time plan and where the report is, on stderr."""
    table = Table(title="aetool study: wall time per stage")
    for column in ("stage", "seconds", "computed", "already there"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for stage in summary["stages"]:
        table.add_row(stage["stage"], f"{stage['seconds']:.1f}",
                      escape(", ".join(stage["done"])) or "-",
                      escape(", ".join(stage["skipped"])) or "-")
    table.add_row("[bold]total", f"[bold]{summary['seconds']:.1f}", "", "")
    stderr.print(table)
    plan = summary.get("time_plan")
    if plan and plan["fits"]:
        stderr.print(f"Time budget {duration_text(plan['budget'])}: search "
                     f"{duration_text(plan['search_seconds'])}, "
                     f"{duration_text(plan['seconds_per_fit'])} for each of "
                     f"{len(plan['fits'])} fits, {duration_text(plan['rest_seconds'])} kept "
                     "for corrupt, embed and report.")
    stderr.print(f"Report: [bold]{escape(summary['report'])}[/]")
