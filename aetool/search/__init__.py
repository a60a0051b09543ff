"""The grid search: the k-fold grid (`grid`), its Optuna storage and claims (`storage`), and
the worker processes that share one search (`workers`).

Names the old `aetool.search` module had still resolve here, with a DeprecationWarning:
import them from `aetool.search.grid` (or `aetool` itself) instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    grid = importlib.import_module("aetool.search.grid")
    if not hasattr(grid, name):
        raise AttributeError(f"module 'aetool.search' has no attribute {name!r}")
    warnings.warn(f"aetool.search.{name} is deprecated and goes in the next release; import "
                  f"it from aetool.search.grid instead.", DeprecationWarning, stacklevel=2)
    return getattr(grid, name)
