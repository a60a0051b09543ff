"""`aetool fit`: train one autoencoder with early stopping into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    RunsOption,
    at_least,
    handle_errors,
    one_of,
    preset_choice,
    print_json,
    seed_range,
    shown,
    stderr,
    warn,
)
from aetool.cli.longrun import (
    LogEveryOption,
    Progress,
    QuietOption,
    ThreadsOption,
    duration,
    use_threads,
)
from aetool.cli.models import ModelOption
from aetool.cli.noises import check_noise_option
from aetool.config import DEFAULT_PRESET, PRESETS, SCHEDULES, FitConfig
from aetool.train.budget import MAX_EPOCHS, duration_text
from aetool.train.fast import MODES, PRECISIONS
from aetool.train.loop import FitResult, fit_run, resume_config, run_config

PRECISION_HELP = ("Training precision: 32, bf16-mixed (autocast to bfloat16), 16-mixed (CUDA "
                  "only), or auto (32 until bf16-mixed's accuracy check holds). Evaluation "
                  "is always float32.")
PrecisionOption = Annotated[
    str | None,
    typer.Option("--precision", help=PRECISION_HELP, show_default=shown(FitConfig.precision),
                 callback=one_of(PRECISIONS, "precision")),
]


def _schedule(value: str | None) -> str | None:
    if value is not None and value not in SCHEDULES:
        raise typer.BadParameter(f"must be {' or '.join(SCHEDULES)}")
    return value


@app.command(epilog=examples(
    "aetool fit --ed 4 --time 10m",
    "aetool fit --ed 4 --noise gaussian:sigma=0.3 --name ed4-denoise"))
@handle_errors
def fit(
    ed: Annotated[int | None, typer.Option(help="Encoding dimension.", callback=at_least(1),
                                           show_default=shown(FitConfig.ed))] = None,
    preset: Annotated[
        str | None,
        typer.Option(help=f"Starting settings: {', '.join(PRESETS)}. best: aetool's recipe; "
                     "report: the seed report's exact training.", callback=preset_choice,
                     show_default=DEFAULT_PRESET),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Adam weight decay.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size.")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="Most epochs to train.", callback=at_least(1))
    ] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", help="Train for this long (90, 45s, 10m, 1h30m): measure an "
                     "epoch first, then choose --max-epochs so the whole schedule ends in "
                     "time (with --max-epochs: the smaller).", callback=duration),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Early-stopping window in epochs (0: off)."),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(help="Stop once val loss moved less than this over the window."),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Learning-rate schedule: constant or cosine (to 0 at "
                                 "--max-epochs).", callback=_schedule)
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(help="Linear learning-rate warm-up over the first N epochs."),
    ] = None,
    val_size: Annotated[
        int | None, typer.Option(help="Training images held out for validation.",
                                 show_default="10000, or a sixth of a smaller data set")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation, order and noise.",
                                           callback=seed_range,
                                           show_default=shown(FitConfig.seed))] = None,
    noise: Annotated[
        str | None,
        typer.Option(help="Train a denoising autoencoder on this noise, e.g. gaussian:sigma=0.3.",
                     callback=check_noise_option),
    ] = None,
    from_search: Annotated[
        bool, typer.Option("--from-search", help="Use the best lr and weight decay found by "
                           "`aetool search` for this ED.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Run folder name in the workspace: letters, digits, _ - "
                                 "and . (not first).", show_default="ed{ED}")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last epoch.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the run already in the folder, once the new "
                           "run has finished its first epoch (until then the old one stays).")
    ] = False,
    mode: Annotated[
        str,
        typer.Option(help="How epochs run: auto (tuned; eager on MPS), graph (whole step in a "
                     "CUDA graph), compile, tuned, or eager (plain PyTorch).",
                     callback=one_of(MODES, "mode")),
    ] = "auto",
    no_compile: Annotated[
        bool, typer.Option("--no-compile", hidden=True, help="Deprecated: --mode eager.")
    ] = False,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    model: ModelOption = None,
    dataset: DatasetOption = None,
    resize: Annotated[
        bool, typer.Option("--resize", help="Resize an image folder's images to 28x28 "
                           "(Pillow's Lanczos filter) instead of refusing other sizes.")
    ] = False,
    data_dir: DataDirOption = None,
    runs_root: RunsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    log_every: LogEveryOption = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Train an autoencoder; keep its best checkpoint, history and settings."""
    use_threads(threads)
    if no_compile:  # deprecated: goes in the next release
        warn("--no-compile is deprecated and goes in the next release; use --mode eager.")
        mode = "eager"
    if resume and force:
        raise typer.BadParameter("--resume and --force exclude each other", param_hint="--resume")
    workspace = runs.Workspace(runs_root)
    run_dir = workspace.run_dir(
        name if name is not None else runs.default_run_name(FitConfig.ed if ed is None else ed))
    if resume and time is not None:
        raise typer.BadParameter("a resumed run keeps the length its --time chose",
                                 param_hint="--time")
    if resume:
        # a resumed run picks its device afresh (auto) unless --device names one
        config = resume_config(run_dir, max_epochs=max_epochs, model=model, precision=precision,
                               device=device or FitConfig.device)
    else:
        config = run_config(
            preset, runs_root=workspace.root, from_search=from_search, ed=ed, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size,
            max_epochs=max_epochs if max_epochs is not None or time is None else MAX_EPOCHS,
            time_budget=time, patience=patience, tolerance=tolerance, schedule=schedule,
            warmup_epochs=warmup_epochs, seed=seed, device=device, dataset=dataset, noise=noise,
            val_size=val_size, resize=resize, model=model, precision=precision,
        )
    existing = "resume" if resume else "replace" if force else "refuse"
    with Progress(quiet=quiet, interval=log_every) as progress:
        result = train_with_progress(config, workspace.root, run_dir.name, existing,
                                     data_dir=data_dir, mode=mode, progress=progress)
    if json_output:
        print_json(summary(result))
    else:
        stderr.print(summary_table(result))
        stderr.print(f"Run saved in [bold]{escape(str(run_dir))}[/]")


def train_with_progress(config: FitConfig, runs_root: Path, name: str, existing: str, *,
                        data_dir: Path | None = None, mode: str = "auto",
                        progress: Progress | None = None) -> FitResult:
    """`training.fit_run` with progress on stderr (epochs, losses, time left): a bar on a
    terminal, lines in a log. It appears with the first finished epoch, so an error found
    before it is the first line."""
    progress = progress or Progress()
    task = None
    late: list[float] = []  # warned once that the run will overrun its time budget

    def on_epoch(record, cfg) -> None:
        nonlocal task
        if task is None:
            if cfg.time_budget is not None and record.epoch == 1:
                progress.note(f"Time budget {duration_text(cfg.time_budget)}: training "
                              f"{cfg.max_epochs} epochs (the schedule ends with them).")
            task = progress.add(f"fit ED={cfg.ed}", total=cfg.max_epochs,
                                completed=record.epoch - 1, unit="epoch",
                                elapsed=record.seconds)
        task.update(completed=record.epoch,
                    status=f"train {record.train_loss:.5f} val {record.val_loss:.5f}")
        if cfg.time_budget is not None and task.base == 0 and record.epoch >= 3 and not late:
            expected = task.elapsed() + (task.eta() or 0.0)
            if expected > 1.1 * cfg.time_budget:
                late.append(expected)
                warn(f"Epochs run slower than measured before the start (a busier machine?): "
                     f"this run will take about {duration_text(expected)}, not "
                     f"{duration_text(cfg.time_budget)}.")

    result = fit_run(config, runs_root, name, existing=existing, data_dir=data_dir,
                     on_epoch=on_epoch, data_progress=progress, mode=mode)
    if task is not None:
        task.update(total=len(result.history), completed=len(result.history))
    return result


def summary(result: FitResult) -> dict:
    return {
        "run": str(result.run_dir),
        "ed": result.config.ed,
        "epochs": len(result.history),
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "test_mse": result.test_mse,
        "seconds": result.seconds,
        "device": result.device,
        "config": result.metrics.get("config") or vars(result.config),
    }


def summary_table(result: FitResult) -> Table:
    table = Table(title=f"aetool fit: ED={result.config.ed}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("model", escape(result.config.model)),
        ("epochs", f"{len(result.history)}" + (" (stopped early)" if result.stopped_early else "")),
        ("best epoch", str(result.best_epoch)),
        ("best validation MSE", f"{result.best_val_loss:.6f}"),
        ("test MSE", f"{result.test_mse:.6f}"),
        ("training time", f"{result.seconds:.1f} s ({result.device}, "
                          f"{result.metrics['environment']['train_mode']}, "
                          f"{result.config.precision})"),
        ("lr / weight decay", f"{result.config.lr:g} / {result.config.weight_decay:g}"),
    ]
    if result.config.time_budget is not None:
        rows.append(("time budget", f"{duration_text(result.config.time_budget)} "
                     f"({result.config.max_epochs} epochs)"))
    for key, value in rows:
        table.add_row(key, value)
    return table
