"""`aetool embed`: encode the test set with trained runs, plot their latent space, score it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    dataset_choice,
    handle_errors,
    one_of,
    print_json,
    seed_range,
    stderr,
    warn,
)
from aetool.cli.longrun import (
    LogEveryOption,
    Progress,
    QuietOption,
    ThreadsOption,
    use_threads,
)
from aetool.cli.skipped import finish
from aetool.devices import resolve_device
from aetool.evaluate.embed import METHODS, embed_runs


@app.command(epilog=examples(
    "aetool embed --ed 4 --ed 32 --json",
    "aetool embed --run ed4 --method pca --method tsne"))
@handle_errors
def embed(
    ed: Annotated[
        list[int] | None,
        typer.Option("--ed", metavar="ED",
                     help="Only runs with this encoding dimension (repeatable)."),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option("--run", metavar="NAME", help="A run's name in the workspace "
                     "(repeatable).",
                     show_default="every finished run"),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", metavar="METHOD",
                     help=f"Projection to 2-D: {', '.join(METHODS)} (repeatable; "
                     "t-SNE takes about a minute per run on a CPU).", show_default="pca",
                     callback=one_of(METHODS, "method")),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the score samples, folds and t-SNE.",
                                    callback=seed_range)] = 0,
    device: DeviceOption = "auto",
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help=DATASET_HELP, callback=dataset_choice,
                     show_default="the dataset each run was trained on"),
    ] = None,
    data_dir: DataDirOption = None,
    runs_root: RunsOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    log_every: LogEveryOption = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Encode the test set with trained runs; save codes, a 2-D plot and separation scores.

    In each run folder: the codes, a 2-D scatter plot and the separation scores (silhouette,
    k-NN accuracy)."""
    torch_device = resolve_device(device)
    use_threads(threads)
    skipped: list[runs.Unreadable] = []  # runs of the whole workspace that cannot be loaded
    skip = None if run else skipped
    picked = runs.Workspace(runs_root).select(run, ed, skip)
    with Progress(quiet=quiet, interval=log_every) as progress:
        progress.add("embed", total=len(picked), unit="runs")
        summaries = embed_runs(picked, method or ["pca"], torch_device,
                               data_dir=data_dir, dataset=dataset, seed=seed,
                               on_progress=progress, data_progress=progress, skipped=skip)
    show(summaries, json_output)
    finish(skipped)


def show(summaries: list[dict], json_output: bool) -> None:
    """The summaries as JSON on stdout, or as a table and the files saved on stderr."""
    for note in dict.fromkeys(s["note"] for s in summaries if s.get("note")):
        warn(note)  # once: a data set without labels gets a plot without colours, no scores
    if json_output:
        print_json(summaries)
    elif summaries:
        stderr.print(summary_table(summaries))
        for summary in summaries:
            plots = ", ".join(str(Path(summary["path"]) / p) for p in summary["plots"].values())
            stderr.print(f"Saved {escape(plots)}", highlight=False)


def summary_table(summaries: list[dict]) -> Table:
    table = Table(title="aetool embed: how well the classes separate in the latent space")
    for header in ("run", "ED", "explained variance\n(PC1 + PC2)", "silhouette\n(codes)",
                   "k-NN accuracy\n(codes)", "k-NN accuracy\n(2-D PCA)"):
        table.add_column(header, justify="left" if header == "run" else "right")
    for s in summaries:
        first, second = s["explained_variance"]
        flat = s["projection_scores"].get("pca", {}).get("knn_accuracy")
        table.add_row(
            escape(s["run"]), str(s["ed"]), f"{first:.1%} + {second:.1%}",
            "-" if s["silhouette"] is None else f"{s['silhouette']:.3f}",
            "-" if s["knn_accuracy"] is None else f"{s['knn_accuracy']:.1%}",
            "-" if flat is None else f"{flat:.1%}",
        )
    table.caption = (f"silhouette on standardized codes by true class (-1..1); "
                     f"{summaries[0]['knn_neighbors']}-NN accuracy, "
                     f"{summaries[0]['knn_folds']}-fold cross-validated") if summaries else None
    return table
