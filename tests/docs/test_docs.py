"""The documentation cannot drift (issue 23): the README stays short with its quick start
intact; every page in docs/ is in mkdocs.yml's navigation and every entry there is a page; the
CLI reference (docs/cli.md) is what scripts/cli_reference.py generates from the app, with a
section per command; every `aetool ...` line in a ```bash example parses against the real
command line (or its block sits under `<!-- not run -->`); every relative link in the README
and the pages resolves to a file, and its anchor to a heading; and the README's plugin is the
plugin guide's, which tests/docs/test_plugin_docs.py runs.
(`mkdocs build --strict`, run by scripts/test.sh, checks links between pages and anchors.)"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer
from conftest import ROOT

from aetool.cli import app

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
CLI = typer.main.get_command(app)
NOT_RUN = "<!-- not run -->"

QUICK_START = """```bash
# 1. set up, then train the best ED=4 model this machine can make in 5 minutes; prints where
#    the run is (on a machine without a GPU, see "Without a GPU" below before installing)
python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/aetool fit --ed 4 --time 5m

# 2. set up and run the test suite (it starts a throwaway PostgreSQL server where it can)
bash scripts/test.sh
```"""


def cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_short_and_its_quick_start_intact():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    quick = text[text.index("## Quick start"):]
    assert QUICK_START in quick[: quick.index("\n## ")]


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:\n"):]
    nav = nav[: re.search(r"\n\S", nav[1:]).start() + 1]
    listed = re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == sorted(p.name for p in PAGES)


def test_the_changelog_page_includes_the_changelog():
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text()


def test_the_cli_reference_is_generated_from_the_app():
    assert (DOCS / "cli.md").read_text() == cli_reference().render(), (
        "docs/cli.md is stale: run .venv/bin/python scripts/cli_reference.py")


def test_every_command_has_its_section_in_the_cli_reference():
    text = (DOCS / "cli.md").read_text()
    paths = [" ".join(path) for path, _ in cli_reference().walk(CLI, ("aetool",))]
    assert {"aetool fit", "aetool models check", "aetool datasets check"} <= set(paths)
    for path in paths:
        assert re.search(rf"^## {re.escape(path)}\n", text, flags=re.MULTILINE), path


def bash_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a page that are not marked as not run."""
    text = path.read_text()
    blocks = []
    for match in re.finditer(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        before = text[: match.start()].rstrip().splitlines()
        if not (before and before[-1].strip().startswith(NOT_RUN[:-4])):
            blocks.append(match.group(1))
    return blocks


def commands(block: str) -> list[str]:
    """The `aetool ...` commands of a block, each without comment, redirection or `&&`."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            part = part.split(" # ")[0].split(" > ")[0].strip()
            if part.startswith("aetool "):
                found.append(part)
    return found


EXAMPLES = [(path, command) for path in [README, *PAGES]
            for block in bash_blocks(path) for command in commands(block)]


def test_there_are_examples_on_every_command_page():
    pages = {path.name for path, _ in EXAMPLES}
    assert {"README.md", "fit.md", "search.md", "corrupt.md", "embed.md", "report.md",
            "study.md", "models.md", "datasets.md", "plugins.md", "tutorial.md"} <= pages


@pytest.mark.parametrize(("path", "line"), EXAMPLES,
                         ids=[f"{p.name}: {c}" for p, c in EXAMPLES])
def test_every_example_parses(path, line, tmp_path, monkeypatch):
    """Each `aetool` example's options and arguments are accepted (types, choices, specs)
    without the command running: examples that cannot parse here sit under `<!-- not run -->`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORE", "postgresql://aetool:secret@db.example.org/aetool")
    monkeypatch.setenv("ed", "4")
    words = [re.sub(r"\$(\w+)", lambda m: __import__("os").environ[m.group(1)], word)
             for word in shlex.split(line)[1:]]
    for word in words:
        if re.fullmatch(r"[\w./-]+\.(pth|npz)", word):  # a file the example reads
            (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / word).touch()
    target, name = CLI, "aetool"
    while words and words[0] in getattr(target, "commands", {}):
        name = words.pop(0)
        target = target.commands[name]
    ctx = target.make_context(name, words)
    assert not ctx.args, f"{path.name}: {line}: unexpected {ctx.args}"


def relative_links(path: Path) -> list[str]:
    """The links of a page to files and pages of the repository (`x.md`, `x.md#anchor`,
    `#anchor`, `../benchmarks/results/x.json`), outside code; web and mail links left out."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    links += re.findall(r"""(?:href|src)=["']([^"']+)["']""", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading: its text without markup,
    lower case, punctuation dropped, spaces and dashes run together into one dash."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, outside code blocks."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE)}


def test_slug_is_mkdocs_s():
    assert slug("Training to a time budget") == "training-to-a-time-budget"
    assert slug("Latent space: `aetool embed`") == "latent-space-aetool-embed"
    assert slug("Names two packages share, and where a run came from") == (
        "names-two-packages-share-and-where-a-run-came-from")
    assert slug("Stopping, resuming and many workers") == "stopping-resuming-and-many-workers"


def link_problems(path: Path) -> list[str]:
    """Relative links of `path` that lead nowhere: no such file, or no such heading."""
    problems = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        where = (path.parent / target).resolve() if target else path
        if not where.exists():
            problems.append(f"{path.name} links to {link}: there is no {target}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            problems.append(f"{path.name} links to {link}: {where.name} has no heading "
                            f"#{anchor}")
    return problems


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_every_link_to_a_file_or_a_heading_resolves(path):
    """MkDocs only notes (`validation.links.not_found: info`) a link to a repository file
    outside docs/, and checks nothing in the README: this test does, anchors included."""
    assert link_problems(path) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading) [here](#top) [ok too](other.md)\n"
                    "[gone](missing.json) [no anchor](other.md#nope)\n\n# Top\n"
                    "`[not a link](nowhere.md)`\n")
    assert link_problems(page) == [
        "page.md links to missing.json: there is no missing.json",
        "page.md links to other.md#nope: other.md has no heading #nope"]


def test_the_readme_plugin_is_the_plugin_guide_s():
    def plugin(text: str) -> str:
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        return next(block for block in blocks if "@hookimpl" in block)

    assert plugin(README.read_text()) == plugin((DOCS / "plugins.md").read_text())
    assert len(plugin(README.read_text()).splitlines()) <= 25


# Python examples run by other tests, by a line that only that example has.
EXECUTED = {
    "def flip_pixels(": "tests/docs/test_plugin_docs.py",
    "class Tiny(nn.Module):": "tests/plugins/test_models.py",
    "def load_stripes(": "tests/docs/test_dataset_docs.py",
    "def test_my_model_keeps_aetools_guarantees():": "tests/plugins/test_models.py",
    "np.savez_compressed(": "tests/data/test_dataset_cli.py",
}


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_every_python_example_is_run_by_a_test_or_marked_not_run(path):
    text = path.read_text()
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].startswith("<!-- not run"):
            continue
        runners = [test for marker, test in EXECUTED.items() if marker in match.group(1)]
        assert runners, f"{path.name}: a Python example no test runs:\n{match.group(1)}"
        for test in runners:
            assert path.name in (ROOT / test).read_text() or path == README, (test, path.name)
