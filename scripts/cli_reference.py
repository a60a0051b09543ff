"""Write docs/cli.md, the CLI reference, from the Typer app itself: every command and
subcommand with its usage, help and options. tests/docs/test_docs.py fails when the committed page
differs from what this prints, so run it after changing a command:

    .venv/bin/python scripts/cli_reference.py            # rewrite docs/cli.md
    .venv/bin/python scripts/cli_reference.py --check    # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
HEADER = """# CLI reference

Generated from the command line itself by `scripts/cli_reference.py`; do not edit by hand
(`tests/docs/test_docs.py` fails when this page is stale). Every command also prints this with
`--help`.
"""


def walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The command at `path` and every command below it, depth first, sorted by name."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += walk(sub, (*path, name))
    return found


def clean(text: str | None) -> str:
    """Help text as plain Markdown: Typer's rich markup and click's `\\b` markers dropped."""
    text = inspect.cleandoc(text or "").replace("\b\n", "").replace("\b", "")
    return text.replace("[bold]", "").replace("[/bold]", "").replace("[/]", "")


def is_option(param: Any) -> bool:
    return param.param_type_name == "option"


def option_row(param: Any, ctx: Any) -> str:
    """One table row: the option's names and value as `--help` shows them, and its help."""
    record = param.get_help_record(ctx)
    names, help_text = record if record else ((param.name or "").upper(), "")
    help_text = " ".join(clean(help_text).split()).replace("|", "&#124;") or " "
    return f"| `{names}` | {help_text} |"


def section(path: tuple[str, ...], command: Any) -> str:
    ctx = command.context_class(command, info_name=" ".join(path))
    usage = " ".join([" ".join(path), *command.collect_usage_pieces(ctx)])
    lines = [f"## {' '.join(path)}", "", "```text", f"Usage: {usage}", "```", ""]
    if command.help:
        lines += [clean(command.help), ""]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if is_option(p)]
    if arguments or options:
        lines += ["| argument or option | meaning |", "| --- | --- |"]
        lines += [option_row(p, ctx) for p in [*arguments, *options]] + [""]
    subcommands = sorted(getattr(command, "commands", {}))
    if subcommands:
        lines += ["Subcommands: " + ", ".join(f"`{name}`" for name in subcommands), ""]
    if command.epilog:
        lines += examples(command.epilog)
    return "\n".join(lines)


def examples(epilog: str) -> list[str]:
    """The help's closing "Examples:" lines as one code block (other epilog text as is)."""
    head, _, body = clean(epilog).partition("Examples:")
    lines = [head.strip(), ""] if head.strip() else []
    commands = [line.strip() for line in body.splitlines() if line.strip()]
    if commands:
        lines += ["Examples:", "", "```bash", *commands, "```", ""]
    return lines


def render() -> str:
    from aetool.cli import app

    root = typer.main.get_command(app)
    sections = [section(path, command) for path, command in walk(root, ("aetool",))]
    return HEADER + "\n" + "\n".join(sections).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
