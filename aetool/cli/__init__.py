"""The `aetool` command line: a thin skin over the library. Each command lives in its module."""

from aetool.cli import (  # noqa: F401
    corrupt,
    datasets,
    embed,
    fit,
    models,
    noises,
    report,
    search,
    study,
)
from aetool.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
