"""`--help` reads like a CLI's, for every command and subcommand (found by walking the app, so a
new command is covered without touching this file): flags show no value placeholder such as
`<bool>`, options that repeat say so instead of `<list[int]>`, and the help ends with examples
that name the command and parse."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from aetool.cli import app

WIDTH = 120  # wide enough that no option row or example wraps
runner = CliRunner()


def walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The command at `path` and every command below it, depth first."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += walk(sub, (*path, name))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = walk(ROOT, ("aetool",))
IDS = [" ".join(path) for path, _ in COMMANDS]


def visible_options(command: Any) -> list[Any]:
    return [p for p in command.params
            if isinstance(p, typer.core.TyperOption) and not p.hidden]


def help_text(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path[1:], "--help"], terminal_width=WIDTH,
                           env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH)})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def examples(output: str) -> list[str]:
    """The lines of the help's closing "Examples:" section (everything after its heading)."""
    heading = re.search(r"^\s*Examples:\s*$", output, flags=re.MULTILINE)
    assert heading, f"no Examples section in:\n{output}"
    return [line.strip() for line in output[heading.end():].splitlines() if line.strip()]


def test_the_walk_finds_every_command_and_check_subcommand():
    assert {"aetool fit", "aetool search", "aetool corrupt", "aetool embed", "aetool report",
            "aetool study", "aetool noises", "aetool models", "aetool datasets",
            "aetool noises check", "aetool models check", "aetool datasets check"} <= set(IDS)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_shows_no_type_placeholder_beside_flags_or_lists(path, command):
    output = help_text(path)
    assert "<bool>" not in output and "BOOLEAN" not in output
    assert "list[" not in output
    flags = [opt for p in visible_options(command) if p.is_flag for opt in p.opts]
    for flag in [*flags, "--help"]:
        assert not re.search(rf"{re.escape(flag)}\s+<", output), f"{flag} shows a placeholder"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_repeatable_options_say_so(path, command):
    output = help_text(path)
    for param in visible_options(command):
        if param.multiple:
            assert "repeatable" in (param.help or ""), f"{param.opts[0]} does not say repeatable"
            assert param.metavar and re.search(
                rf"{re.escape(param.opts[0])}\s+{re.escape(param.metavar)}\s", output)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_ends_with_examples_of_the_command(path, command):
    lines = examples(help_text(path))
    assert 1 <= len(lines) <= 3, lines
    for line in lines:
        assert line.startswith(" ".join(path) + " ") or line == " ".join(path), line


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_example_parses(path, command, tmp_path, monkeypatch):
    """Each example's options and arguments are accepted (types, choices, specs) without the
    command running."""
    monkeypatch.chdir(tmp_path)
    for line in examples(help_text(path)):
        words = shlex.split(line)[1:]
        for word in words:
            if word.startswith("./"):  # a file the example reads exists where it runs
                (tmp_path / word).touch()
        target, name = ROOT, "aetool"
        while words and words[0] in getattr(target, "commands", {}):
            name = words.pop(0)
            target = target.commands[name]
        ctx = target.make_context(name, words)
        assert not ctx.args, f"{line}: unexpected {ctx.args}"
