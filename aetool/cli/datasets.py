"""`aetool datasets`: list every registered data set, its plugin, classes and whether its files
are in the data cache."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from aetool.cli.app import app
from aetool.cli.common import DataDirOption, JsonOption, handle_errors, print_json, stderr
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


@app.command()
@handle_errors
def datasets(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """List the registered data sets: name, plugin, class names, whether the data cache holds
    their files (`--data-dir`), description.

    Use them as `--dataset NAME`; `--dataset PATH` takes an image folder, an .npz file or a
    folder of IDX files instead (see the README, "Your own data").
    """
    from aetool.data import default_data_root
    from aetool.datasets import describe_datasets

    root = data_dir if data_dir is not None else default_data_root()
    rows = with_plugin_warnings(lambda: describe_datasets(root))
    if json_output:
        print_json(rows)
    else:
        stderr.print(datasets_table(rows, str(root)))
