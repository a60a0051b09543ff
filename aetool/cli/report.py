"""`aetool report`: one self-contained HTML page about everything in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from aetool.cli.app import app, examples
from aetool.cli.common import JsonOption, RunsOption, handle_errors, print_json, stderr
from aetool.cli.skipped import finish
from aetool.report.render import SECTIONS, write_report
from aetool.workspace import Unreadable


@app.command(epilog=examples(
    "aetool report", "aetool report --output study.html --json"))
@handle_errors
def report(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file to write.",
                     show_default="RUNS/report.html"),
    ] = None,
    runs_root: RunsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Render one offline HTML page about everything in the workspace.

    Inline CSS and images, no scripts: the runs, losses, search grid, test MSE, noise table,
    latent plots and environment found in the workspace."""
    with stderr.status("Rendering the report"):
        result = write_report(runs_root, output)
    if result.created is not None:
        stderr.print(f"Created the folder {escape(str(result.created))} for the report.",
                     highlight=False)
    if json_output:
        print_json(result.summary())
    else:
        stderr.print(f"Report with {len(result.sections)} of {len(SECTIONS)} sections "
                     f"({', '.join(result.sections)}), {result.bytes / 1e6:.2f} MB:",
                     highlight=False)
        typer.echo(str(result.path))
    # A damaged run (or search result) is listed in the page; the command still exits 1.
    finish([Unreadable(**entry) for entry in result.unreadable], "left out of the report")
