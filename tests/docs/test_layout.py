"""The code's shape (issue: one owner per concept): no import cycles, library errors that name
settings rather than options, every stage's options checked before a study starts, and
`study` corrupting and embedding each run with the data set it was trained on."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, write_fake_mnist
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.config import FitConfig, preset_config
from aetool.errors import SettingError
from aetool.experiment import StudySettings, check_study, run_study
from aetool.search.grid import SearchConfig
from aetool.train.loop import fit_run

PACKAGE = ROOT / "aetool"
runner = CliRunner()


def plain(result) -> str:
    """A command's output with Rich's panel borders and line wrapping undone."""
    return " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in result.output).split())


def import_graph() -> dict[str, set[str]]:
    """Module -> the aetool modules it imports anywhere (top level, in functions, or under
    TYPE_CHECKING)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            seen.add(nxt)
            if nxt == goal or reaches(nxt, goal, seen):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert cycles == []


def test_the_cycle_check_sees_a_lazy_import(tmp_path, monkeypatch):
    """The check above must catch an import inside a function (as fast -> training was)."""
    fake = tmp_path / "aetool"
    fake.mkdir()
    (fake / "a.py").write_text("def f():\n    from aetool.b import x\n")
    (fake / "b.py").write_text("from aetool import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError):
        test_no_module_imports_one_that_imports_it_back()


def test_library_errors_name_settings_not_options():
    with pytest.raises(SettingError, match="^lr must be positive") as caught:
        preset_config(lr=-1)
    assert caught.value.field == "lr"
    with pytest.raises(SettingError) as caught:
        FitConfig.from_dict({"ed": 4, "batch_size": 0})
    assert caught.value.field == "batch_size" and "--" not in str(caught.value)
    with pytest.raises(SettingError) as caught:
        SearchConfig(folds=1).validate()
    assert caught.value.field == "folds" and "--" not in str(caught.value)
    for settings, field in ((StudySettings(methods=["nope"]), "methods"),
                            (StudySettings(dataset="nope"), "dataset"),
                            (StudySettings(noises=["nope"]), "noises"),
                            (StudySettings(device="tpu"), "device"),
                            (StudySettings(eds=[]), "eds")):
        with pytest.raises(SettingError) as caught:
            check_study(settings)  # the values, and what needs the stages' modules
        assert caught.value.field == field and "--" not in str(caught.value)


def test_run_study_checks_every_stage_before_the_first(tmp_path):
    with pytest.raises(SettingError, match="nope"):
        run_study(StudySettings(eds=[2], methods=["nope"]), tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("args, option", [
    (["fit", "--dataset", "nope"], "--dataset"),
    (["study", "--dataset", "nope"], "--dataset"),
    (["study", "--ed", "4", "--method", "nope"], "--method"),
    (["study", "--ed", "4", "--noise", "nope"], "--noise"),
    (["study", "--ed", "4", "--device", "tpu"], "--device"),
    (["study", "--ed", "4", "--folds", "1"], "--folds"),
    (["search", "--ed", "4", "--folds", "1"], "--folds"),
    (["search", "--lr", "-1"], "--lr"),
    (["embed", "--method", "nope"], "--method"),
])
def test_bad_options_of_any_stage_exit_2_naming_the_option(args, option, tmp_path):
    workspace = tmp_path / "ws"
    result = runner.invoke(app, [*args, "--runs", str(workspace)])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in plain(result)
    assert not workspace.exists()


def test_study_corrupts_and_embeds_each_run_with_its_own_data_set(tmp_path):
    data = write_fake_mnist(tmp_path / "data")
    write_fake_mnist(data, n_train=600, n_test=150, folder="FashionMNIST")
    root = tmp_path / "ws"
    common = dict(max_epochs=1, batch_size=100, val_size=100, device="cpu")
    fit_run(preset_config(ed=2, **common), root, data_dir=data)
    fit_run(preset_config(ed=3, dataset="fashion-mnist", **common), root, data_dir=data)

    run_study(StudySettings(eds=[2, 3], skip_search=True, noises=["original"], device="cpu",
                            val_size=100, max_epochs=1), root, data_dir=data)
    for name, dataset, images in (("ed2", "mnist", 200), ("ed3", "fashion-mnist", 150)):
        table = json.loads((root / name / runs.NOISE_TABLE).read_text())
        assert table["test_images"] == images, name
        embedding = json.loads((root / name / runs.EMBEDDING_JSON).read_text())
        assert embedding["dataset"] == dataset and embedding["images"] == images, name


def test_the_workspace_names_every_file(tmp_path):
    workspace = runs.Workspace(tmp_path)
    assert workspace.run_dir("ed4") == tmp_path / "ed4"
    assert workspace.search_results.relative_to(tmp_path) == Path("search/results.json")
    assert workspace.report.name == "report.html" and workspace.study.name == "study.json"
    with pytest.raises(SettingError):
        workspace.run_dir("../ed4")


def top_level() -> set[str]:
    """aetool/'s top-level modules (`name.py`) and packages (`name/`)."""
    modules = {p.name for p in PACKAGE.glob("*.py")}
    packages = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def functions(path: Path):
    """Every function in a file, with its length in lines from its first statement after the
    docstring to its end (the signature and the docstring left out)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (len(body) > 1 and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body = body[1:]
            yield node.name, node.end_lineno - body[0].lineno + 1, node.end_lineno - node.lineno + 1


def test_at_most_twelve_modules_at_the_top_level():
    modules = sorted(name for name in top_level() if name.endswith(".py"))
    assert len(modules) <= 12, modules


def test_no_near_synonyms_side_by_side():
    """No two names at one level where one is the other plus a suffix (`model`/`models`,
    `search`/`search_study`), nor a module beside a package of the same stem."""
    for folder in [PACKAGE, *(p.parent for p in PACKAGE.rglob("__init__.py"))]:
        stems = sorted({p.stem if p.is_file() else p.name for p in folder.iterdir()
                        if (p.suffix == ".py" and p.stem != "__init__")
                        or (p / "__init__.py").is_file()})
        for a in stems:
            clash = [b for b in stems if b != a and b.startswith(a) and b != "__main__"]
            assert clash == [], f"{folder.name}/: {a} beside {clash}"


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_the_cycle_check_covers_every_package():
    graph = import_graph()
    assert {"aetool.train.fast", "aetool.train.loop", "aetool.plugins.default.course",
            "aetool.data", "aetool.search.grid", "aetool.report.render"} <= set(graph)
    assert "aetool.train.fast" in graph["aetool.train.loop"]


def test_no_function_over_60_lines_and_no_command_body_over_40():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        command_file = path.parent.name == "cli"
        for name, body, whole in functions(path):
            # A command's signature declares its options: only its body counts.
            size = body if command_file else whole
            if size > (40 if command_file else 60):
                long.append(f"{path.relative_to(PACKAGE)}:{name} ({size})")
    assert long == []


def tree_entries(markdown: str, heading: str) -> list[tuple[str, ...]]:
    """The entries of the ```text tree under `heading`, each as its path inside aetool/
    (`("train/", "loop.py")`): a line is a name (`x.py` or `x/`) indented two spaces a level
    below the package above it, then what it holds."""
    text = markdown.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    tree = text.split("```text\naetool/\n", 1)[1].split("```", 1)[0]
    entries: list[tuple[str, ...]] = []
    parents: list[str] = []
    for line in tree.splitlines():
        match = re.fullmatch(r"((?:  )+)([\w]+(?:\.py|/)) +(\S.*)", line)
        assert match, f"not a tree line (name, then what it holds): {line!r}"
        level = len(match.group(1)) // 2
        assert level <= len(parents) + 1, f"indented too far: {line!r}"
        parents = parents[: level - 1]
        entries.append((*parents, match.group(2)))
        if match.group(2).endswith("/"):
            parents.append(match.group(2))
    assert len(entries) == len(set(entries)), "a name appears twice"
    return entries


def test_the_readme_tree_names_every_package_and_top_level_module():
    """"How the code is laid out" is a short tree: one line per top-level module or package of
    aetool/, each with what it holds; nothing missing, nothing stale."""
    entries = tree_entries((PACKAGE.parent / "README.md").read_text(),
                           "## How the code is laid out")
    assert all(len(e) == 1 for e in entries), "the README's tree has one level"
    named = {e[0] for e in entries}
    assert sorted(top_level() - named) == [], "modules the README's tree does not name"
    assert sorted(named - top_level()) == [], "names in the README's tree that are gone"


def layout_page_problems(markdown: str) -> list[str]:
    """What docs/layout.md's tree lacks (a top-level module, a package at any depth) or names
    that is not there."""
    entries = tree_entries(markdown, "## The tree")
    named = {e[0] for e in entries if len(e) == 1}
    packages = {tuple(f"{part}/" for part in p.parent.relative_to(PACKAGE).parts)
                for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    missing = sorted(top_level() - named) + ["".join(p) for p in sorted(packages - set(entries))]
    gone = ["".join(e) for e in entries if not (PACKAGE.joinpath(*e).is_file()
                                                or PACKAGE.joinpath(*e, "__init__.py").is_file())]
    return ([f"the layout page does not name {name}" for name in missing]
            + [f"the layout page names {name}, which is gone" for name in gone])


def test_the_layout_page_names_every_package_and_top_level_module():
    """docs/layout.md's tree: every top-level module and every package (at any depth), and
    only modules and packages that are there."""
    assert layout_page_problems((PACKAGE.parent / "docs" / "layout.md").read_text()) == []


def test_the_layout_check_sees_a_stale_or_missing_name():
    page = ("\n## The tree\n\n```text\naetool/\n  train/   training\n    gone.py  was here\n"
            "  fast/    not at the top\n```\n")
    assert tree_entries(page, "## The tree") == [("train/",), ("train/", "gone.py"), ("fast/",)]
    problems = layout_page_problems(page)
    assert "the layout page does not name config.py" in problems
    assert "the layout page does not name train/fast/" in problems
    assert "the layout page names train/gone.py, which is gone" in problems
    assert "the layout page names fast/, which is gone" in problems
    with pytest.raises(AssertionError, match="not a tree line"):
        tree_entries(page.replace("  train/   training", "  train/"), "## The tree")


def test_old_import_paths_still_work_with_a_warning():
    """One release of grace: an old dotted path imports the very module at its new path."""
    import importlib
    import sys

    from aetool.train import loop

    old_training, old_cpu, old_course = ("aetool." + name for name in  # (not rewritten by the move)
                                         ("training", "fast.cpu", "default_plugins.course"))
    for old in (old_training, old_cpu, old_course):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="aetool.train.loop"):
        assert importlib.import_module(old_training) is loop
    with pytest.warns(DeprecationWarning, match="aetool.train.fast.cpu"):
        importlib.import_module(old_cpu)
    with pytest.warns(DeprecationWarning, match="aetool.plugins.default.course"):
        importlib.import_module(old_course)
    with pytest.warns(DeprecationWarning, match="aetool.search.grid"):
        old_search = importlib.import_module("aetool" + ".search").SearchConfig
    assert old_search is SearchConfig


def test_each_file_has_one_name_and_the_report_needs_no_evaluate_or_search():
    """Issue 22: a file's name is the workspace's (the second names other modules had warn for
    one release), and the report reads every file through its record in `aetool.workspace`,
    importing neither `aetool.evaluate` nor `aetool.search`."""
    from aetool import experiment
    from aetool.evaluate import corrupt, embed
    from aetool.report import render

    imported = import_graph()["aetool.report.render"]
    assert not [m for m in imported if m.startswith(("aetool.evaluate", "aetool.search"))]
    for module, name in ((corrupt, "NOISE_TABLE"), (corrupt, "NOISE_EXAMPLES"),
                         (embed, "EMBEDDING_JSON"), (embed, "EMBEDDING_NPZ"),
                         (render, "REPORT_FILE"), (experiment, "STUDY_FILE")):
        assert name not in vars(module), (module.__name__, name)
        with pytest.warns(DeprecationWarning, match=f"aetool.workspace.{name}"):
            assert getattr(module, name) == getattr(runs, name)
    assert set(runs.RECORDS) == {runs.METRICS, runs.NOISE_TABLE, runs.EMBEDDING_JSON,
                                 runs.SEARCH_RESULTS, runs.STUDY_FILE}


def test_the_public_api_is_importable_from_aetool():
    import aetool

    assert aetool.fit_run is fit_run and aetool.FitConfig is FitConfig
    assert aetool.Workspace is runs.Workspace and aetool.SearchConfig is SearchConfig
    for name in aetool.__all__:
        assert getattr(aetool, name) is not None, name
    with pytest.raises(AttributeError):
        aetool.no_such_name  # noqa: B018


def test_the_wheel_ships_every_package():
    """pyproject.toml lists packages by hand: a new package must be added there."""
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(aetool(?:\.\w+)*)"', pyproject.split("packages = [", 1)[1]
                            .split("]", 1)[0]))
    present = {".".join(p.parent.relative_to(PACKAGE.parent).parts)
               for p in PACKAGE.rglob("__init__.py")}
    assert sorted(present - listed) == [] and sorted(listed - present) == ["aetool.templates"]
