"""What commands over the whole workspace (`corrupt`, `embed`, `report`, `study`) do with a
run they cannot load: a warning naming it and why, every other run finished, exit 1 at the
end."""

from __future__ import annotations

from collections.abc import Sequence

from aetool.cli.common import fail, warn
from aetool.workspace import SEARCH_DIR, Unreadable


def finish(skipped: Sequence[Unreadable], left_out: str = "skipped") -> None:
    """Warn about each run in `skipped` (the workspace's search results when its name is
    `search`, which no run may have), then exit 1 when there is any."""
    subjects = []
    for entry in skipped:
        search = entry.name == SEARCH_DIR
        subjects.append(("The search results", "are", "were") if search
                        else (f"Run {entry.name}", "is", "was"))
        warn(f"{subjects[-1][0]} {subjects[-1][1]} {left_out}: {entry.reason}")
    if len(subjects) == 1:
        subject, _, verb = subjects[0]
        raise fail(f"{subject} could not be loaded and {verb} {left_out}; everything else "
                   "is done.")
    if subjects:
        names = ", ".join(entry.name for entry in skipped)
        raise fail(f"{len(subjects)} runs could not be loaded and were {left_out} ({names}); "
                   "everything else is done.")
