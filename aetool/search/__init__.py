"""The grid search: the k-fold grid (`grid`), its Optuna storage and claims (`storage`), and
the worker processes that share one search (`workers`).

Names the old `aetool.search` module had still resolve here, with a DeprecationWarning:
import them from `aetool.search.grid` (or `aetool` itself) instead.
"""

from __future__ import annotations

from aetool import old_names

__getattr__ = old_names("aetool.search", "aetool.search.grid")
