"""What every command shares: consoles, options, error handling, interrupts, JSON output."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from aetool.config import PRESETS, SEED_MAX, SEED_RULE, DataSettings, ModelSettings
from aetool.data import check_dataset
from aetool.errors import AetoolError, SettingError, os_reason

stderr = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])



def shown(value: Any) -> str:
    """A library default as `--help` shows it: `4 8 16 32`, `0.001`, `course`. An option that
    sets a library setting defaults to None (the library fills it) and shows the library's
    default with `show_default=shown(...)`, so the default is written once, in aetool.config."""
    if isinstance(value, (list, tuple)):
        return " ".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# Options shared by several commands.
RunsOption = Annotated[
    Path | None,
    typer.Option("--runs", envvar="AETOOL_RUNS", help="Workspace folder holding the runs.",
                 show_default="runs"),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="AETOOL_DATA", help="Folder with MNIST/raw etc.",
                 show_default="the user's cache folder"),
]
DeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.",
                 show_default=shown(ModelSettings.device)),
]
def one_of(choices: Any, what: str) -> Callable[[Any], Any]:
    """A Typer callback accepting only the names in `choices` (a library table), exit 2."""

    def callback(value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in choices:
                raise typer.BadParameter(f"unknown {what} {item!r}; choose one of: "
                                         f"{', '.join(choices)}")
        return value

    return callback


preset_choice = one_of(PRESETS, "preset")
DATASET_HELP = ("A registered data set (`aetool datasets` lists them), or the path of an image "
                "folder, an .npz file or a folder of IDX files.")


def dataset_choice(value: str | None) -> str | None:
    """A Typer callback accepting a registered data set's name or the path of one (made
    absolute); anything else exits 2. Plugin warnings are printed once, on stderr."""
    if value is None:
        return None
    from aetool.plugins import PluginWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        try:
            value = check_dataset(value)
        except SettingError as exc:
            raise typer.BadParameter(str(exc)) from None
    for warning in caught:
        warn(str(warning.message))
    return value


DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help=DATASET_HELP, callback=dataset_choice,
                             show_default=shown(DataSettings.dataset))
]
ResizeOption = Annotated[
    bool, typer.Option("--resize", help="Resize an image folder's images to 28x28 (Pillow's "
                       "Lanczos filter) instead of refusing other sizes.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable results on stdout.")
]


def at_least(minimum: int) -> Callable[[int | None], int | None]:
    """A Typer callback refusing whole numbers below `minimum` (exit 2)."""

    def callback(value: int | None) -> int | None:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"must be at least {minimum}, got {value}")
        return value

    return callback


def seed_range(value: int | None) -> int | None:
    """A Typer callback refusing seeds outside 0..2**32-1 (exit 2): numpy and scikit-learn
    take no others, and every command accepts the same seeds."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"must be {SEED_RULE}, got {value}")
    return value


THREADS_PER_CORE = 4  # --threads beyond this many per CPU core only slows PyTorch down
MAX_THREADS = 1024  # and never more: libgomp crashed (SIGSEGV) when asked for 100,000


def thread_limit() -> int:
    """The most CPU threads `--threads` may ask for on this machine."""
    return min(MAX_THREADS, THREADS_PER_CORE * (os.cpu_count() or 1))


def thread_count(value: int | None) -> int | None:
    """A Typer callback accepting 1 to `thread_limit()` threads (exit 2 otherwise), checked
    before PyTorch is asked for them."""
    if value is None:
        return None
    if value < 1:
        raise typer.BadParameter(f"must be at least 1, got {value}")
    limit = thread_limit()
    if value > limit:
        raise typer.BadParameter(
            f"must be at most {limit} ({THREADS_PER_CORE} per CPU core of this machine, "
            f"which has {os.cpu_count() or 1}, and never over {MAX_THREADS}), got {value}")
    return value


def positive(value: float | None) -> float | None:
    """A Typer callback refusing numbers that are not positive and finite (exit 2)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be positive, got {value:g}")
    return value


def non_negative(value: float | None) -> float | None:
    """A Typer callback refusing negative numbers (exit 2)."""
    if value is not None and not value >= 0:
        raise typer.BadParameter(f"must be zero or more, got {value:g}")
    return value


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear sentence on stderr and return the Exit to raise."""
    stderr.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr that did not stop the command."""
    stderr.print(f"[yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


# The library's names for settings whose command-line option is called otherwise.
_OPTION_NAMES = {"name": ("name", "run"), "runs": ("runs_root",), "replace": ("force",),
                 "eds": ("ed",), "lrs": ("lr",), "weight_decays": ("weight_decay",),
                 "epochs": ("epochs", "search_epochs"), "methods": ("method",),
                 "noises": ("noise",)}


def command_options(func: Callable[..., Any]) -> dict[str, str]:
    """A command function's parameters and the options that set them (`runs_root` ->
    `--runs`), read from its `Annotated[..., typer.Option(...)]` declarations."""
    options = {}
    for name, hint in typing.get_type_hints(func, include_extras=True).items():
        for info in getattr(hint, "__metadata__", ()):
            flags = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")]
            options[name] = flags[0] if flags else "--" + name.replace("_", "-")
    return options


def usage_error(exc: SettingError, options: dict[str, str]) -> typer.BadParameter:
    """A library `SettingError` as a usage error (exit 2) naming the command's option for it
    (`val_size` -> `--val-size`, `name` -> `--name` or `--run`)."""
    message = str(exc)
    if message.startswith(f"{exc.field} "):
        message = message[len(exc.field) + 1:]
    names = _OPTION_NAMES.get(exc.field, ()) + (exc.field,)
    option = next((options[n] for n in names if n in options),
                  "--" + exc.field.replace("_", "-"))
    return typer.BadParameter(message, param_hint=f"'{option}'")


def os_error_sentence(exc: OSError) -> str:
    """`PermissionError(13, 'Permission denied', '/x')` as "Cannot use /x: permission denied."."""
    return f"Cannot use {exc.filename}: {os_reason(exc)}."


def _show_warning(message: Any, category: type, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    warn(str(message))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def handle_errors(func: F) -> F:
    """Turn AetoolError into one line and exit 1; Ctrl-C / SIGTERM into exit 130."""

    options: dict[str, str] = {}

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread (e.g. some test runners)
            previous = None
        try:
            with warnings.catch_warnings():
                from aetool.data.files import DataWarning
                from aetool.workspace import RunWarning

                warnings.simplefilter("always", RunWarning)
                warnings.simplefilter("always", DataWarning)
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except SettingError as exc:
            options.update(options or command_options(func))
            raise usage_error(exc, options) from None
        except AetoolError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:  # the environment (a folder we may not read or write), not a bug
            if exc.filename is None:
                raise
            raise fail(os_error_sentence(exc)) from None
        except KeyboardInterrupt:
            stderr.print("[yellow]Interrupted.[/] Finished work is saved.")
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """JSON on stdout, nothing else, so `--json` output pipes cleanly."""
    from aetool.files import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def progress_bar(*extra_columns: Any, transient: bool = False) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr,
        transient=transient,
    )

