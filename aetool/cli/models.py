"""`aetool models`: the registered architectures, and the `--model` option other commands take."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.app import app
from aetool.cli.common import JsonOption, handle_errors, print_json, stderr
from aetool.cli.noises import params_cell, spec_callback, with_plugin_warnings


def _parse_model(spec: str) -> Any:
    from aetool.models import parse_model_spec

    return parse_model_spec(spec)


# `--model`: a registered model with valid parameters (exit 2 otherwise).
check_model_option = spec_callback(_parse_model)


ModelOption = Annotated[
    str,
    typer.Option("--model", help="The architecture: NAME or NAME:param=value,... (see "
                 "`aetool models`).", callback=check_model_option),
]


def models_table(rows: list[dict[str, Any]], ed: int) -> Table:
    table = Table(title="aetool models")
    table.add_column("name", style="bold")
    table.add_column("plugin", overflow="fold")
    table.add_column("parameters (type = default)")
    table.add_column(f"weights at ED {ed}", justify="right")
    table.add_column("description")
    for row in rows:
        plugin = row["plugin"] + (f"\n({row['package']})" if row["package"] else "")
        count = row[f"parameters_at_ed{ed}"]
        table.add_row(escape(row["name"]), escape(plugin), params_cell(row["params"]),
                      "-" if count is None else f"{count:,}", escape(row["description"]))
    return table


@app.command()
@handle_errors
def models(
    ed: Annotated[int, typer.Option(help="Encoding dimension the weights are counted at.",
                                    min=1)] = 4,
    json_output: JsonOption = False,
) -> None:
    """List the registered models: name, plugin, parameters with defaults, number of weights,
    description. Use them as NAME or NAME:param=value,... in `aetool fit --model`,
    `aetool search --model` and `aetool study --model`."""
    from aetool.models import describe_models

    rows = with_plugin_warnings(lambda: describe_models(ed))
    if json_output:
        print_json(rows)
    else:
        stderr.print(models_table(rows, ed))
