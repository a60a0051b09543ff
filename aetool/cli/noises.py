"""`aetool noises`: list every registered noise with its plugin, parameters and defaults;
`aetool noises check SPEC` checks one (`aetool.testing.check_noise`).

Also the helpers other commands use to read `--noise` specs: plugin warnings printed once on
stderr, and bad specs turned into a usage error (exit 2) that lists what exists.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

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
    stderr,
)
from aetool.errors import AetoolError
from aetool.plugins import PluginWarning

T = TypeVar("T")


def with_plugin_warnings(load: Callable[[], T]) -> T:
    """Run `load` (which may load plugins) and print any plugin warnings on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        result = load()
    for warning in caught:
        if issubclass(warning.category, PluginWarning):
            stderr.print(f"[yellow]Warning:[/] {warning.message}", highlight=False,
                         soft_wrap=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return result


def parse_noise_option(specs: Sequence[str], param_hint: str = "'--noise'") -> list[Any]:
    """`--noise` values -> configured noises; a bad spec is a usage error (exit 2)."""
    from aetool.noises import parse_noise_specs

    try:
        return with_plugin_warnings(lambda: parse_noise_specs(list(specs)))
    except AetoolError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def spec_callback(parse: Callable[[str], Any]) -> Callable[[str | None], str | None]:
    """A Typer callback checking one `NAME:param=value,...` spec with `parse` (a usage error,
    exit 2, when it fails or is empty), plugin warnings printed once."""

    def callback(value: str | None) -> str | None:
        if value is not None and not value.strip():  # "" is a careless value, not "none"
            raise typer.BadParameter("must not be empty; write NAME or NAME:param=value,....")
        if value is not None:
            try:
                with_plugin_warnings(lambda: parse(value))
            except AetoolError as exc:
                raise typer.BadParameter(str(exc)) from None
        return value

    return callback


def _build_noise(spec: str) -> Any:
    from aetool.noises import build_noise

    return build_noise(spec)


# A single `--noise` (e.g. `aetool fit`): exactly one known noise.
check_noise_option = spec_callback(_build_noise)


def noises_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="aetool noises")
    table.add_column("name", style="bold")
    table.add_column("plugin", overflow="fold")
    table.add_column("parameters (type = default)")
    table.add_column("description")
    for row in rows:
        plugin = row["plugin"] + (f"\n({row['package']})" if row["package"] else "")
        table.add_row(escape(row["name"]), escape(plugin), params_cell(row["params"]),
                      escape(row["description"]))
    return table


def params_cell(params: list[dict[str, Any]]) -> str:
    """A plugin thing's parameters, one `name: type = default` a line (escaped for Rich)."""
    return escape("\n".join(
        f"{p['name']}: {'|'.join(p['choices']) if p['choices'] else p['type']}"
        f" = {_show(p['default'])}" for p in params
    )) or "-"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


noises_app = Typer(name="noises", invoke_without_command=True, no_args_is_help=False)
app.add_typer(noises_app)


@noises_app.callback(invoke_without_command=True, epilog=examples(
    "aetool noises --json", "aetool noises check gaussian:sigma=0.3"))
@handle_errors
def noises(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List the registered noises: name, plugin, parameters with defaults, description.

    Use them as NAME or NAME:param=value,... in `aetool corrupt --noise` and
    `aetool fit --noise`; `original` (no noise) is always available. `aetool noises check
    SPEC` checks one.
    """
    if ctx.invoked_subcommand is not None:
        return
    from aetool.noises import describe_noises

    rows = with_plugin_warnings(describe_noises)
    if json_output:
        print_json(rows)
    else:
        stderr.print(noises_table(rows))


@noises_app.command("check", epilog=examples(
    "aetool noises check gaussian:sigma=0.3", "aetool noises check occlusion --seed 1"))
@handle_errors
def check(
    spec: Annotated[str, typer.Argument(
        metavar="SPEC", help="The noise: NAME or NAME:param=value,... (one setting; see "
        "`aetool noises`).", callback=check_noise_option, show_default=False)],
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the noise's generator.",
                                      callback=seed_range)] = 0,
    json_output: JsonOption = False,
) -> None:
    """Check a noise against aetool's guarantees: one row per check, exit 1 when one fails.

    On a batch of synthetic images: output shape, finite values (and whether they stay in
    [0, 1]), the clean batch left untouched, determinism under a generator's seed, and its
    parameters' bounds. Exit 0 when all pass, 1 otherwise."""
    from aetool.testing import check_noise

    report = with_plugin_warnings(lambda: check_noise(spec, device=device, seed=seed))
    finish(report, "aetool noises check", json_output)
