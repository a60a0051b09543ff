"""`aetool report`: one self-contained HTML page about everything in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aetool import runs
from aetool.cli.app import app
from aetool.cli.common import JsonOption, RunsOption, handle_errors, print_json, stderr
from aetool.report import SECTIONS, write_report


@app.command()
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
    """Render one offline HTML page (inline CSS and images, no scripts) with the runs, losses,
    search grid, test MSE, noise table, latent plots and environment found in the workspace."""
    root = runs_root if runs_root is not None else runs.default_runs_root()
    with stderr.status("Rendering the report"):
        result = write_report(root, output)
    if json_output:
        print_json(result.summary())
        return
    stderr.print(f"Report with {len(result.sections)} of {len(SECTIONS)} sections "
                 f"({', '.join(result.sections)}), {result.bytes / 1e6:.2f} MB:", highlight=False)
    typer.echo(str(result.path))
