"""The Typer application object that every command module attaches itself to."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from aetool import __version__


def _no_value_placeholder(param: Any) -> None:
    """A flag takes no value, so its help shows none: an empty metavar is what help prints in
    the type column (recent Typer prints `<bool>` there otherwise)."""
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""


class _FlagsTakeNoValue:
    """Help in which flags, `--help` included, show no `<bool>` placeholder."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _no_value_placeholder(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _no_value_placeholder(option)
        return option


class Command(_FlagsTakeNoValue, typer.core.TyperCommand):
    """An aetool command (see `_FlagsTakeNoValue`)."""


class Group(_FlagsTakeNoValue, typer.core.TyperGroup):
    """An aetool command group (see `_FlagsTakeNoValue`)."""


class Typer(typer.Typer):
    """`typer.Typer` whose groups and commands are `Group` and `Command`."""

    def __init__(self, *, cls: type[typer.core.TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(cls=cls or Group, **kwargs)

    def command(self, name: str | None = None, *, cls: type[typer.core.TyperCommand] | None = None,
                **kwargs: Any) -> Any:
        return super().command(name, cls=cls or Command, **kwargs)


def examples(*commands: str) -> str:
    """A command's help epilog: the heading "Examples:", then the commands, a paragraph each so
    that every Typer version prints each on a line of its own."""
    return "\n\n".join(["Examples:", *(escape(command) for command in commands)])


app = Typer(
    name="aetool",
    help="Train, search, stress-test and explain convolutional autoencoders on MNIST-like images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
    epilog=examples("aetool fit --ed 4 --time 10m", "aetool study --ed 4 --ed 32 --time 1h"),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aetool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Train, search, stress-test and explain convolutional autoencoders on MNIST-like images."""
