"""`aetool datasets`: list every registered data set, its plugin, classes and whether its files
are in the data cache (in alphabetical order); `aetool datasets check NAME|PATH` checks one
(`aetool.testing.check_dataset`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.app import Typer, app, examples
from aetool.cli.check_report import finish
from aetool.cli.common import (
    DATASET_HELP,
    DataDirOption,
    JsonOption,
    ResizeOption,
    dataset_choice,
    handle_errors,
    print_json,
    stderr,
)
from aetool.cli.longrun import Progress
from aetool.cli.noises import with_plugin_warnings

PRESENT = {True: "yes", False: "no", None: "?"}


def datasets_table(rows: list[dict[str, Any]], root: str) -> Table:
    table = Table(title="aetool datasets", caption=f"cache: {escape(root)}")
    table.add_column("name", style="bold")
    table.add_column("plugin", overflow="fold")
    table.add_column("cached")
    table.add_column("classes")
    table.add_column("description")
    for row in rows:
        classes = row["classes"]
        shown = "-" if classes is None else ", ".join(classes[:6]) + (
            f", ... ({len(classes)})" if len(classes) > 6 else "")
        plugin = row["plugin"] + (f"\n({row['package']})" if row["package"] else "")
        table.add_row(escape(row["name"]), escape(plugin), PRESENT[row["present"]],
                      escape(shown), escape(row["description"]))
    return table


datasets_app = Typer(name="datasets", invoke_without_command=True, no_args_is_help=False)
app.add_typer(datasets_app)


@datasets_app.callback(invoke_without_command=True, epilog=examples(
    "aetool datasets --json", "aetool datasets check kmnist"))
@handle_errors
def datasets(ctx: typer.Context, data_dir: DataDirOption = None,
             json_output: JsonOption = False) -> None:
    """List the registered data sets: name, plugin, classes, whether cached, description.

    Cached: whether the data cache (`--data-dir`) holds its files. Use them as
    `--dataset NAME`; `--dataset PATH` takes an image folder, an .npz file or a folder of IDX
    files instead (see docs/datasets.md, "Your own data"). `aetool datasets check NAME|PATH` checks
    one.
    """
    if ctx.invoked_subcommand is not None:
        return
    from aetool.data import default_data_root
    from aetool.data.registry import describe_datasets

    root = data_dir if data_dir is not None else default_data_root()
    rows = with_plugin_warnings(lambda: describe_datasets(root))
    rows = sorted(rows, key=lambda row: row["name"])
    if json_output:
        print_json(rows)
    else:
        stderr.print(datasets_table(rows, str(root)))


@datasets_app.command("check", epilog=examples(
    "aetool datasets check kmnist", "aetool datasets check ./digits.npz"))
@handle_errors
def check(
    dataset: Annotated[str, typer.Argument(metavar="NAME|PATH", help=DATASET_HELP,
                                           callback=dataset_choice, show_default=False)],
    data_dir: DataDirOption = None,
    resize: ResizeOption = False,
    json_output: JsonOption = False,
) -> None:
    """Check a data set against what aetool expects: one row per check, exit 1 when one fails.

    A registered data set (fetched if needed) or a path: uint8 images of 28x28 pixels, a
    train and a test split that are not empty, and whole-number labels within its classes.
    Exit 0 when all pass, 1 otherwise."""
    from aetool.testing import check_dataset

    with Progress() as progress:  # data downloads, if any
        report = with_plugin_warnings(lambda: check_dataset(dataset, root=data_dir,
                                                            resize=resize, progress=progress))
    finish(report, "aetool datasets check", json_output)
