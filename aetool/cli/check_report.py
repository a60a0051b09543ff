"""How `aetool models check`, `noises check` and `datasets check` show an `aetool.testing`
report: one table row per check on stderr (or JSON on stdout), exit 0 when every check passed
and 1 otherwise."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from aetool.cli.common import print_json, stderr

STYLES = {"PASS": "bold green", "FAIL": "bold red", "SKIP": "dim"}


def report_table(report: Any, title: str) -> Table:
    table = Table(title=f"{title}: {escape(report.subject)}")
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for check in report.checks:
        table.add_row(escape(check.name), f"[{STYLES[check.status]}]{check.status}[/]",
                      escape(check.detail))
    return table


def finish(report: Any, title: str, json_output: bool) -> None:
    """Print `report` (a table and a summary sentence, or JSON), then exit 1 when a check
    failed."""
    if json_output:
        print_json(report.as_dict())
    else:
        stderr.print(report_table(report, title))
        style = "green" if report.ok else "bold red"
        stderr.print(f"[{style}]{escape(report.summary())}[/]", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
