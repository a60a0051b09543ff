"""The `aetool` command line: a thin skin over the library. Each command lives in its module."""

from aetool.cli import corrupt, datasets, embed, fit, noises, report, search, study  # noqa: F401
from aetool.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
