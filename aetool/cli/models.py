"""`aetool models`: the registered architectures, `aetool models check SPEC` (one model against
aetool's guarantees, `aetool.testing.check_model`), and the `--model` option other commands take."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.app import Typer, app, examples
from aetool.cli.check_report import finish
from aetool.cli.common import (
    DeviceOption,
    JsonOption,
    handle_errors,
    print_json,
    seed_range,
    shown,
    stderr,
)
from aetool.cli.noises import params_cell, spec_callback, with_plugin_warnings
from aetool.config import ModelSettings


def _parse_model(spec: str) -> Any:
    from aetool.models import parse_model_spec

    return parse_model_spec(spec)


# `--model`: a registered model with valid parameters (exit 2 otherwise).
check_model_option = spec_callback(_parse_model)


ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="The architecture: NAME or NAME:param=value,... (see "
                 "`aetool models`).", callback=check_model_option,
                 show_default=shown(ModelSettings.model)),
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


models_app = Typer(name="models", invoke_without_command=True, no_args_is_help=False)
app.add_typer(models_app)


@models_app.callback(invoke_without_command=True, epilog=examples(
    "aetool models --ed 8", "aetool models check wide:width=8,hidden=256"))
@handle_errors
def models(
    ctx: typer.Context,
    ed: Annotated[int, typer.Option(help="Encoding dimension the weights are counted at.",
                                    min=1)] = 4,
    json_output: JsonOption = False,
) -> None:
    """List the registered models: name, plugin, parameters, number of weights, description.

    Use them as NAME or NAME:param=value,... in `aetool fit --model`, `aetool search --model`
    and `aetool study --model`; `aetool models check SPEC` checks one."""
    if ctx.invoked_subcommand is not None:
        return
    from aetool.models import describe_models

    rows = with_plugin_warnings(lambda: describe_models(ed))
    if json_output:
        print_json(rows)
    else:
        stderr.print(models_table(rows, ed))


@models_app.command("check", epilog=examples(
    "aetool models check wide:depth=6 --ed 8", "aetool models check course --mode compile"))
@handle_errors
def check(
    spec: Annotated[str, typer.Argument(
        metavar="SPEC", help="The model: NAME or NAME:param=value,... (see `aetool models`).",
        callback=check_model_option, show_default=False)],
    ed: Annotated[int, typer.Option(help="Encoding dimension to check the model at.",
                                    min=1)] = 4,
    device: DeviceOption = "auto",
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", metavar="MODE", help="A training mode to compare with eager (repeatable; "
        "default: tuned, and graph on CUDA); compile compiles for 10-30 s, so it runs only "
        "when named.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the models' weights and shuffling.",
                                      callback=seed_range)] = 0,
    json_output: JsonOption = False,
) -> None:
    """Check a model against aetool's guarantees: one row per check, exit 1 when one fails.

    On a few small batches of synthetic images: the contract (shapes, encode width equal to
    ED, outputs in [0, 1]), determinism under a seed, a state_dict round trip, every training
    mode against eager, batched training against one at a time, and evaluation-mode
    consistency. Exit 0 when all pass, 1 otherwise."""
    from aetool.testing import check_model

    stderr.print(f"Checking model {escape(spec)!r} at ED {ed}...", style="dim", highlight=False)
    report = with_plugin_warnings(lambda: check_model(spec, ed, device=device, modes=mode,
                                                      seed=seed))
    finish(report, "aetool models check", json_output)
