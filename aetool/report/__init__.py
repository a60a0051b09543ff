"""The offline HTML report: collecting every run's files and rendering them (`render`, with the
templates shipped as `aetool.templates`), and test MSE against time budgets (`budget`).

Names the old `aetool.report` module had still resolve here, with a DeprecationWarning:
import them from `aetool.report.render` (or `aetool` itself) instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    render = importlib.import_module("aetool.report.render")
    if not hasattr(render, name):
        raise AttributeError(f"module 'aetool.report' has no attribute {name!r}")
    warnings.warn(f"aetool.report.{name} is deprecated and goes in the next release; import "
                  f"it from aetool.report.render instead.", DeprecationWarning, stacklevel=2)
    return getattr(render, name)
