"""Every command has `--help`, as the README promises, and the README's command table lists
exactly the commands there are."""

from __future__ import annotations

import re

import pytest
import typer
from conftest import ROOT
from typer.testing import CliRunner

from aetool.cli import app

README = ROOT / "README.md"
runner = CliRunner()


def readme_commands() -> list[str]:
    """The commands in the README's table under "## Commands"."""
    text = README.read_text()
    table = text[text.index("## Commands") :].split("\n\n")[1]
    return sorted(re.findall(r"^\| `aetool (\w+)", table, flags=re.MULTILINE))


COMMANDS = readme_commands()


def test_the_readme_table_lists_every_command():
    assert COMMANDS == ["corrupt", "datasets", "embed", "fit", "models", "noises", "report",
                        "search", "study"]
    assert sorted(typer.main.get_command(app).commands) == COMMANDS


def test_top_level_help_lists_every_command():
    result = runner.invoke(app, ["--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^\W+(\w+)\s{2,}\S", result.output.split("Commands")[1], re.MULTILINE)
    assert sorted(listed) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_naming_all_its_options(name):
    result = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"Usage: aetool {name}" in " ".join(result.output.split())
    command = typer.main.get_command(app).commands[name]
    summary = (command.help or "").strip().splitlines()[0]
    assert summary and summary.rstrip(".") in " ".join(result.output.split())
    for param in command.params:
        if isinstance(param, typer.core.TyperOption) and not param.hidden:
            assert param.opts[0] in result.output, f"`aetool {name} --help` omits {param.opts[0]}"
