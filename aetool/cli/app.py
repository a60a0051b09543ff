"""The Typer application object that every command module attaches itself to."""

from __future__ import annotations

from typing import Annotated

import typer

from aetool import __version__

app = typer.Typer(
    name="aetool",
    help="Train, search, stress-test and explain convolutional autoencoders on MNIST-like images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
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
