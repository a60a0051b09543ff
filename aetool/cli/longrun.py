"""What long commands (fit, search, corrupt, embed, study) share: progress on stderr that is a
live bar on a terminal and plain lines in a log, `--quiet`, `--log-every` and `--threads`.

On a terminal the progress is a Rich bar. Anywhere else (a batch job's log, `2>log`, a pipe)
it is one plain line per update, at most one every `--log-every` seconds (10), plus the first
and the last line of each task, each with position/total, the status (losses where there are
any), elapsed time and ETA, flushed at once so a log shows it while the command runs. stdout is
never written, so `--json` stays clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TextColumn

from aetool.cli.common import non_negative, progress_bar, stderr, thread_count
from aetool.errors import ProgressEvent

DEFAULT_LOG_EVERY = 10.0

QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output (results and errors still "
                       "print).")
]
LogEveryOption = Annotated[
    float, typer.Option("--log-every", envvar="AETOOL_LOG_EVERY", callback=non_negative,
                        help="When stderr is not a terminal: seconds between progress lines "
                        "(0: every update).")
]


ThreadsOption = Annotated[
    int | None, typer.Option("--threads", envvar="AETOOL_THREADS", callback=thread_count,
                             help="PyTorch's CPU threads (intra-op). Processes sharing a "
                             "machine should add up to its cores.",
                             show_default="PyTorch's default: the cores")
]


def duration(value: str | None) -> float | None:
    """A Typer callback reading `--time` (90, 45s, 10m, 1h30m) as seconds (exit 2 if bad)."""
    from aetool.train.budget import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def use_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (None: leave its default); return the number in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def clock_text(seconds: float | None) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour); `?` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Task:
    """One line of progress: `description done/total status`, with its own clock."""

    def __init__(self, owner: Progress, description: str, total: float | None,
                 completed: float, status: str, started: bool, unit: str,
                 elapsed: float = 0.0) -> None:
        self.owner, self.description, self.total = owner, description, total
        self.unit = unit
        self.completed, self.status = completed, status
        self.base = completed  # work done before this task started (a resumed run)
        self.started_at: float | None = owner.clock() - elapsed if started else None
        self.printed = False
        self.printed_done = False
        self.rich_id: Any = None

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = self.owner.clock()
            self.base = self.completed

    def update(self, completed: float | None = None, total: float | None = None,
               status: str | None = None, description: str | None = None) -> None:
        self.start()
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = completed
        if status is not None:
            self.status = status
        if description is not None:
            self.description = description
        self.owner.show(self)

    def advance(self, amount: float = 1) -> None:
        self.update(completed=self.completed + amount)

    @property
    def done(self) -> bool:
        return self.total is not None and self.completed >= self.total

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else self.owner.clock() - self.started_at

    def eta(self) -> float | None:
        """Seconds left at the rate since the task started; None while unknown."""
        progressed = self.completed - self.base
        if self.total is None or progressed <= 0:
            return None
        return self.elapsed() / progressed * max(self.total - self.completed, 0)

    def line(self) -> str:
        done = f"{self.completed:g}" if self.total is None else (
            f"{self.completed:.0f}/{self.total:.0f}" if self.total >= 10 or
            float(self.completed).is_integer() else f"{self.completed:.1f}/{self.total:g}")
        status = f"  {self.status}" if self.status else ""
        unit = f"{self.unit} " if self.unit else ""
        return (f"{self.description}: {unit}{done}{status}  elapsed {clock_text(self.elapsed())}  "
                f"eta {clock_text(0.0 if self.done else self.eta())}")


class Progress:
    """Progress of one command on stderr: a live Rich bar on a terminal, plain lines (at most
    one every `interval` seconds, plus each task's first and last) elsewhere, nothing with
    `quiet`. Use as a context manager. It is the library's `ProgressFn`: called with a
    `ProgressEvent`, it shows the task the event names, added with its first event (so an
    error found before any progress is the first line on stderr) unless `add` made it."""

    def __init__(self, *, quiet: bool = False, interval: float = DEFAULT_LOG_EVERY,
                 live: bool | None = None, write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet, self.interval, self.clock = quiet, interval, clock
        self.live = stderr.is_terminal if live is None else live
        self.write = write or _write_stderr
        self.tasks: list[Task] = []
        self.by_task: dict[str, Task] = {}  # tasks by the `ProgressEvent.task` they show
        self._bar: Any = None
        self._last_line: float | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __call__(self, event: ProgressEvent) -> None:
        """Show a library `ProgressEvent` on the line of its task (`event.task`)."""
        description = f"{event.task} {event.name}" if event.name else None
        task = self.by_task.get(event.task)
        if task is None:
            task = self.add(description or event.task, event.total, unit=event.unit,
                            key=event.task)
        task.update(completed=event.done, total=event.total, status=event.status,
                    description=description)

    def add(self, description: str, total: float | None = None, *, completed: float = 0,
            status: str = "", start: bool = True, unit: str = "", elapsed: float = 0.0,
            key: str | None = None) -> Task:
        """A new task, shown by the events whose `task` is `key` (default: `description`);
        `elapsed` seconds of its work happened before it was added."""
        task = Task(self, description, total, completed, status, start, unit, elapsed)
        self.tasks.append(task)
        self.by_task[key or description] = task
        if self.live and not self.quiet:
            if self._bar is None:
                self._bar = progress_bar(TextColumn("{task.fields[status]}"))
                self._bar.start()
            task.rich_id = self._bar.add_task(escape(description), total=total,
                                              completed=completed, status=escape(status),
                                              start=start)
        return task

    def show(self, task: Task) -> None:
        if self.quiet:
            return
        if self._bar is not None and task.rich_id is not None:
            self._bar.start_task(task.rich_id)
            self._bar.update(task.rich_id, completed=task.completed, total=task.total,
                             status=escape(task.status), description=escape(task.description))
            return
        now = self.clock()
        due = self._last_line is None or now - self._last_line >= self.interval
        last = task.done and not task.printed_done
        if due or not task.printed or last:
            self.write(task.line())
            task.printed = True
            task.printed_done = task.done
            self._last_line = now

    def note(self, message: str) -> None:
        """One line of information (not with --quiet)."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(escape(message), highlight=False)
        else:
            self.write(message)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _write_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
