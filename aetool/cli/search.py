"""`aetool search`: grid search over lr and weight decay with k-fold cross-validation, per ED."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool import workspace as runs
from aetool.cli.app import app, examples
from aetool.cli.common import (
    DataDirOption,
    DatasetOption,
    DeviceOption,
    JsonOption,
    ResizeOption,
    RunsOption,
    handle_errors,
    print_json,
    seed_range,
    shown,
    stderr,
)
from aetool.cli.fit import PrecisionOption
from aetool.cli.longrun import LogEveryOption, Progress, QuietOption, ThreadsOption
from aetool.cli.models import ModelOption
from aetool.config import DEFAULT_EDS, DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, SearchConfig
from aetool.errors import SettingError
from aetool.search.grid import check_search, results_path, run_search
from aetool.search.workers import check_workers

_DEFAULTS = SearchConfig()


def _parallel(value: str | None) -> str | None:
    if value is not None and value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise typer.BadParameter(f"must be auto or a whole number of at least 1, got {value!r}")
    return value


def _workers(value: int) -> int:
    """At least 1, and no more than this machine can run (exit 2 naming the limit)."""
    try:
        check_workers(value)
    except SettingError as exc:
        raise typer.BadParameter(str(exc).removeprefix("workers ")) from None
    return value


@app.command(epilog=examples(
    "aetool search --ed 4 --lr 1e-2 --lr 1e-3 --weight-decay 1e-5 --epochs 10",
    "aetool search --storage sqlite:///search.db --workers 2"))
@handle_errors
def search(
    ed: Annotated[
        list[int] | None,
        typer.Option("--ed", metavar="ED", help="Encoding dimension; repeatable.",
                     show_default=shown(DEFAULT_EDS)),
    ] = None,
    lr: Annotated[
        list[float] | None,
        typer.Option("--lr", metavar="LR", help="Learning rate; repeatable.",
                     show_default=shown(DEFAULT_LRS)),
    ] = None,
    weight_decay: Annotated[
        list[float] | None,
        typer.Option("--weight-decay", metavar="WD", help="Adam weight decay; repeatable.",
                     show_default=shown(DEFAULT_WEIGHT_DECAYS)),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Folds of the cross-validation.",
                                 show_default=shown(_DEFAULTS.folds))
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per setting and fold.",
                                 show_default=shown(_DEFAULTS.epochs))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (the report's search batch size, not fit's).",
                                 show_default=shown(_DEFAULTS.batch_size))
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the folds, the weights and the order.",
                                           callback=seed_range,
                                           show_default=shown(_DEFAULTS.seed))] = None,
    max_loss: Annotated[
        float | None, typer.Option(help="Drop settings whose final val loss on any fold is "
                                   "above.", show_default=shown(_DEFAULTS.max_loss))
    ] = None,
    max_oscillation: Annotated[
        float | None, typer.Option(help="Drop settings whose val curve oscillates more than "
                                   "this (upward moves over the last half / its mean).",
                                   show_default=shown(_DEFAULTS.max_oscillation))
    ] = None,
    parallel: Annotated[
        str | None, typer.Option(help="Models trained together on the device (auto: 1 on a "
                                 "CPU, as many as fit on a GPU).", callback=_parallel,
                                 show_default="auto")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage shared by workers: sqlite:///f.db, postgresql://..., "
                     "mysql://..., or a journal file path.",
                     show_default="runs/search/study.log"),
    ] = None,
    study_name: Annotated[
        str | None, typer.Option(help="Optuna study name.", show_default="derived from the grid")
    ] = None,
    val_size: Annotated[
        int | None, typer.Option(help="fit's validation images, kept out of the search.",
                                 show_default="10000, or a sixth of a smaller data set")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(hidden=True, help="Use only the first N training images.")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes on this machine, on the same study, sharing "
                          "the cores: each gets cores/N threads unless --threads says; at most "
                          "what the machine holds (cores, and 1 GiB of memory each).",
                          callback=_workers)
    ] = 1,
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
    """Grid-search lr and weight decay per ED with k-fold cross-validation.

    Resumable, and several workers sharing --storage split the grid."""
    config = SearchConfig.given(  # an option not given is None: the library's default
        eds=ed or None, lrs=lr or None, weight_decays=weight_decay or None, folds=folds,
        epochs=epochs, batch_size=batch_size, seed=seed, dataset=dataset, resize=resize,
        limit=limit, val_size=val_size, max_loss=max_loss, max_oscillation=max_oscillation,
        model=model, precision=precision, device=device, storage=storage,
        study_name=study_name, parallel=None if parallel in (None, "auto") else int(parallel),
    )
    check_search(config)  # every value checked before the progress bar shows (exit 2 naming it)
    root = runs.workspace_root(runs_root)
    with Progress(quiet=quiet, interval=log_every) as progress:
        progress.add("search", total=len(config.grid()) * config.folds, unit="models")
        results = run_search(config, root, workers=workers, threads=threads,
                             data_dir=data_dir, on_progress=progress, data_progress=progress)
    if json_output:
        print_json(results)
    else:
        print_results(results, root, config.model)


def print_results(results: dict[str, Any], root: Path, model: str) -> None:
    """One table per ED and where the results and the study are, on stderr."""
    for ed_key, entry in results["eds"].items():
        stderr.print(results_table(int(ed_key), entry, model))
    stderr.print(f"Results saved in [bold]{escape(str(results_path(root)))}[/]; study "
                 f"[bold]{escape(results['study']['name'])}[/] in "
                 f"{escape(str(results['study']['storage']))}")


def _fmt(value: float | None, spec: str = ".5f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def results_table(ed: int, entry: dict[str, Any], model: str = "course") -> Table:
    """Every setting of one ED of `model`: final validation loss over the folds (mean ± std),
    final training loss, their gap, the oscillation, and kept, dropped (why) or best."""
    best = entry.get("best")
    title = f"{escape(model)}, ED {ed}: " + (
        f"best lr {best['lr']:g}, weight decay {best['weight_decay']:g} "
        f"(val {best['val_mean']:.5f} ± {best['val_std']:.5f})" if best
        else "no setting passed the selection rule"
    )
    table = Table(title=title)
    for name in ("lr", "wd", "val mean ± std", "train", "gap", "osc.", "verdict"):
        table.add_column(name, justify="left" if name == "verdict" else "right")
    for s in entry["settings"]:
        is_best = bool(best) and s["lr"] == best["lr"] and s["weight_decay"] == best["weight_decay"]
        verdict = "[bold green]best[/]" if is_best else (
            "kept" if s["kept"] else f"[red]dropped[/]: {s['reason']}"
        )
        table.add_row(
            f"{s['lr']:g}", f"{s['weight_decay']:g}",
            f"{_fmt(s['val_mean'])} ± {_fmt(s['val_std'])}", _fmt(s["train_mean"]),
            _fmt(s["gap"], "+.5f"), _fmt(s["oscillation"], ".3f"), verdict,
            style="bold" if is_best else None,
        )
    return table
