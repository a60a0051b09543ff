"""The offline HTML report: collecting every run's files and rendering them (`render`, with the
templates shipped as `aetool.templates`), and test MSE against time budgets (`budget`).

Names the old `aetool.report` module had still resolve here, with a DeprecationWarning:
import them from `aetool.report.render` (or `aetool` itself) instead.
"""

from __future__ import annotations

from aetool import old_names

__getattr__ = old_names("aetool.report", "aetool.report.render")
