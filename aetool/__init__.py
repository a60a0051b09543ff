"""aetool: train, search, stress-test and explain convolutional autoencoders on MNIST-like
images.

The Python API is importable from here (`from aetool import fit_run, run_search,
corrupt_models, embed_runs, write_report, Workspace, FitConfig`); each name loads its module
on first use, so `import aetool` stays cheap. The module paths before the 0.2 layout
(`aetool.training`, `aetool.runs`, `aetool.hookspecs`, ...) still import, as the same module
objects, with a DeprecationWarning naming the new path; they go in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("aetool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from aetool.errors import AetoolError, ProgressEvent, ProgressFn, SettingError  # noqa: E402

# public name -> the module that owns it
_API = {
    "FitConfig": "aetool.config", "preset_config": "aetool.config",
    "Workspace": "aetool.workspace", "Run": "aetool.workspace", "open_run": "aetool.workspace",
    "list_runs": "aetool.workspace",
    "load_dataset": "aetool.data",
    "build_model": "aetool.models", "load_model": "aetool.models",
    "fit": "aetool.train.loop", "fit_run": "aetool.train.loop", "run_config": "aetool.train.loop",
    "resume_config": "aetool.train.loop", "FitResult": "aetool.train.loop",
    "plan_fit": "aetool.train.loop", "FitPlan": "aetool.train.loop",
    "SearchConfig": "aetool.config", "run_search": "aetool.search.grid",
    "corrupt_models": "aetool.evaluate.corrupt", "embed_runs": "aetool.evaluate.embed",
    "write_report": "aetool.report.render",
    "StudySettings": "aetool.config", "run_study": "aetool.experiment",
}

# module path before the 0.2 layout -> where it lives now (sub-modules follow their package)
MOVED = {
    "aetool.settings": "aetool.config",
    "aetool.runs": "aetool.workspace",
    "aetool.study": "aetool.experiment",
    "aetool.model": "aetool.models",
    "aetool.hookspecs": "aetool.plugins.hookspecs",
    "aetool.params": "aetool.plugins.params",
    "aetool.default_plugins": "aetool.plugins.default",
    "aetool.datasets": "aetool.data.registry",
    "aetool.data_files": "aetool.data.files",
    "aetool.idx": "aetool.data.idx",
    "aetool.training": "aetool.train.loop",
    "aetool.steps": "aetool.train.step",
    "aetool.budget": "aetool.train.budget",
    "aetool.batched": "aetool.train.batched",
    "aetool.resume_state": "aetool.train.resume",
    "aetool.fast": "aetool.train.fast",
    "aetool.search_study": "aetool.search.storage",
    "aetool.search_workers": "aetool.search.workers",
    "aetool.corrupt": "aetool.evaluate.corrupt",
    "aetool.embed": "aetool.evaluate.embed",
    "aetool.report_budget": "aetool.report.budget",
}


def moved_to(name: str) -> str | None:
    """The module an old dotted path now names, or None when `name` did not move."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the very module at its new path (so monkeypatching either
    patches both), with a DeprecationWarning naming the new path."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if moved_to(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        old = module.__name__
        new = moved_to(old)
        warnings.warn(f"{old} is deprecated and goes in the next release; import {new} "
                      "instead.", DeprecationWarning, stacklevel=2)
        sys.modules[old] = importlib.import_module(new)


def old_names(package: str, module: str) -> Callable[[str], Any]:
    """The `__getattr__` of a package that took the place of a module of the same name
    (`aetool.search`, `aetool.report`): the names that module had come from `module`, its new
    home, with a DeprecationWarning naming it."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        home = importlib.import_module(module)
        if not hasattr(home, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(f"{package}.{name} is deprecated and goes in the next release; import "
                      f"it from {module} instead.", DeprecationWarning, stacklevel=2)
        return getattr(home, name)

    return __getattr__


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


def __getattr__(name: str) -> Any:
    owner = _API.get(name)
    if owner is None:
        raise AttributeError(f"module 'aetool' has no attribute {name!r}")
    return getattr(importlib.import_module(owner), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = ["AetoolError", "ProgressEvent", "ProgressFn", "SettingError", "__version__", *_API]
