"""`aetool report` over runs it cannot all read: a run with a damaged metrics.json is listed as
left out and the rest rendered (exit 1), and `--output` into a folder that does not exist yet
makes it and says so."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Said
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app

runner = CliRunner()


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def small_args(data_dir: Path) -> list[str]:
    return ["--max-epochs", "1", "--batch-size", "100", "--val-size", "100", "--device", "cpu",
            "--data-dir", str(data_dir)]


def _edit_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def test_report_shows_an_unreadable_run_and_renders_the_rest(finished, fake_data_dir):
    _, workspace = finished
    assert invoke("fit", "--ed", "2", *small_args(fake_data_dir)).exit_code == 0
    _edit_json(workspace / "ed4" / runs.METRICS, [])
    result = invoke("report")
    assert result.exit_code == 1, result.output  # written, but a run was left out
    assert "ed4 is left out of the report" in result.output
    html = (workspace / "report.html").read_text()
    assert "metrics.json must hold a JSON object" in html and ">ed2<" in html
    corrupt = invoke("corrupt", "--device", "cpu", "--data-dir", fake_data_dir)
    assert corrupt.exit_code == 1 and "metrics.json" in corrupt.output


def test_report_into_a_new_folder_says_so(finished):
    _, workspace = finished
    out = workspace.parent / "new" / "deeper" / "r.html"
    result = invoke("report", "--output", out)
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert f"Created the folder {workspace.parent / 'new'}" in result.output
