"""The dependencies in pyproject.toml are the ones aetool's code needs: every third-party module
imported anywhere under aetool/ (lazy imports inside functions included) is declared, as a
dependency or in an optional extra; an extra's module is imported only where its absence can be
handled (inside a function, or in a `try` that catches ImportError); every dependency is used;
and each floor is at least the first release with the newest API aetool relies on."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGE = ROOT / "aetool"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIRED = {canonicalize_name(Requirement(r).name): Requirement(r)
            for r in PROJECT["dependencies"]}
EXTRAS = {canonicalize_name(Requirement(r).name): extra
          for extra, reqs in PROJECT.get("optional-dependencies", {}).items() for r in reqs}

# The first release of each dependency that has what aetool needs, and what that is; a floor
# below it lets pip install a version on which aetool fails. "module:attribute" names an API
# that the installed version must have as well.
FLOORS = {
    "optuna": ("4.3", "optuna.exceptions:UpdateFinishedTrialError"),  # 4.0: storages.journal
    "torch": ("2.5", "torch.mps:recommended_max_memory"),  # 2.4: torch.OutOfMemoryError
    "torchvision": ("0.20", "the release built for torch 2.5"),
    "sqlalchemy": ("2.0", "sqlalchemy.dialects.postgresql:psycopg"),  # postgresql+psycopg://
    # 0.12.4 reads `list[int] | None` options; 0.12.4 to 0.15.3 allow a click (8.2+) they
    # break on, 0.15.4 keeps click below 8.2 and 0.16 runs on it.
    "typer": ("0.15.4", "list[int] | None options and a click it runs on"),
    "pillow": ("9.1", "PIL.Image:Resampling"),
}


class Import:
    """One `import` of a third-party module: where, and whether a missing module is handled."""

    def __init__(self, module: str, path: Path, line: int, guarded: bool) -> None:
        self.module, self.path, self.line, self.guarded = module, path, line, guarded

    def __repr__(self) -> str:
        return f"{self.module} ({self.path.relative_to(ROOT)}:{self.line})"


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imports(tree: ast.AST, path: Path, guarded: bool = False) -> list[Import]:
    """Absolute imports in `tree`; `guarded` once inside a function, a `try` catching
    ImportError, or an `if TYPE_CHECKING:` block."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, path, node.lineno, guarded) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(node.module, path, node.lineno, guarded))
        inner = guarded or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Try) and _catches_import_error(node):
            inner = True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inner = True
        found += _imports(node, path, inner)
    return found


def third_party_imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _imports(ast.parse(path.read_text(), filename=str(path)), path)
    return [i for i in found if i.module.split(".")[0] not in
            {*sys.stdlib_module_names, "aetool", "__future__"}]


IMPORTS = third_party_imports()
DISTRIBUTIONS = importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    """The distributions that provide a top-level module (its own name when none installed
    does)."""
    top = module.split(".")[0]
    return {canonicalize_name(d) for d in DISTRIBUTIONS.get(top, [top])}


def test_the_walk_finds_module_level_and_lazy_imports():
    found = {(i.module, i.path.name) for i in IMPORTS}
    assert ("typer", "app.py") in found  # at module level
    assert ("optuna.storages.journal", "storage.py") in found  # inside a function
    assert ("sqlalchemy.exc", "storage.py") in found


def test_the_walk_tells_guarded_imports_apart():
    source = """
import a
from b.c import d
def f():
    import e
try:
    import g
except (ModuleNotFoundError, OSError):
    pass
try:
    import h
except OSError:
    pass
if TYPE_CHECKING:
    import i
"""
    found = {i.module: i.guarded for i in _imports(ast.parse(source), PACKAGE / "x.py")}
    assert found == {"a": False, "b.c": False, "e": True, "g": True, "h": False, "i": True}


def test_every_third_party_import_is_declared():
    declared = set(REQUIRED) | set(EXTRAS)
    missing = [i for i in IMPORTS if not distributions(i.module) & declared]
    names = sorted({d for i in missing for d in distributions(i.module)})
    assert not missing, f"imported but not declared in pyproject.toml: {names}, by {missing}"


def test_imports_of_optional_extras_are_guarded():
    """A module only an extra installs may be missing: import it inside the function that needs
    it, or in a `try` that turns ImportError into a clear message."""
    optional = set(EXTRAS) - set(REQUIRED)
    unguarded = [i for i in IMPORTS if distributions(i.module) & optional and not i.guarded]
    assert not unguarded, f"imports of optional extras at module level: {unguarded}"


def test_every_dependency_is_imported():
    used = {d for i in IMPORTS for d in distributions(i.module)}
    assert set(REQUIRED) <= used, f"declared but never imported: {sorted(set(REQUIRED) - used)}"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floors_are_at_least_the_first_release_with_what_aetool_uses(name):
    first, needs = FLOORS[name]
    assert name in REQUIRED, f"pyproject.toml does not declare {name} (aetool imports it)."
    floors = [Version(s.version) for s in REQUIRED[name].specifier if s.operator == ">="]
    assert floors and max(floors) >= Version(first), (
        f"pyproject.toml declares {REQUIRED[name]}, but aetool needs {name}>={first} ({needs}).")
    if ":" in needs:
        module, attribute = needs.split(":")
        imported = importlib.import_module(module)
        assert hasattr(imported, attribute) or importlib.import_module(f"{module}.{attribute}")
