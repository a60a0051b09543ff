"""The workspace and its run folders: names, locks, what each file is called, safe writing.

A workspace (default `./runs`, or `--runs` / `$AETOOL_RUNS`) holds one folder per trained
model (`ed4/`, `ed32/`, ...) and a `search/` folder. A run folder holds:

    config.json    the resolved settings it was trained with (their one record)
    history.json   per-epoch train and validation loss, learning rate and seconds
    model.pt       the best weights by validation loss (a bare state_dict)
    state.pt       the training state to resume from (model, optimiser, RNG states, history)
    metrics.json   written last: final test MSE, best epoch, timing, device, versions

Nothing outside the workspace is written or deleted: a run name is one plain folder name
(`check_run_name`). A command that writes into a run holds its lock (`RunLock`) for as long
as it works on it, so two commands never write the same run at once. A new run is built in a
hidden sibling folder until its first epoch is saved and only then takes its name, so a
failed start leaves nothing behind and `--force` replaces an old run only once the new one is
training. Every file is written under a temporary name and renamed into place, and
everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import filelock
import torch

from aetool.config import FitConfig
from aetool.errors import AetoolError, RunError, SettingError, os_reason
from aetool.files import jsonable, save_json, save_torch
from aetool.files import load_json as _load_json
from aetool.files import load_torch as _load_torch

# A run folder's files.
CONFIG = "config.json"
HISTORY = "history.json"
MODEL = "model.pt"
STATE = "state.pt"
METRICS = "metrics.json"
NOISE_TABLE = "noise_table.json"  # aetool corrupt
NOISE_EXAMPLES = "noise_examples.png"
EMBEDDING_NPZ = "embedding.npz"  # aetool embed
EMBEDDING_JSON = "embedding.json"
# The workspace's own files.
SEARCH_DIR = "search"  # aetool search: its folder, results and Optuna journal
SEARCH_RESULTS = "results.json"
SEARCH_LOG = "study.log"
REPORT_FILE = "report.html"  # aetool report
STUDY_FILE = "study.json"  # aetool study
RESERVED = {SEARCH_DIR}
NAME_RULE = ("one folder name of letters, digits, '_', '-' and '.', starting with a letter or "
             "a digit, at most 100 characters")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

__all__ = [
    "CONFIG", "EMBEDDING_JSON", "HISTORY", "METRICS", "MODEL", "NOISE_TABLE", "RECORDS",
    "SEARCH_RESULTS", "STATE", "STUDY_FILE", "EmbeddingSummary", "Metrics", "NoiseRow",
    "NoiseTable", "Record", "Run", "RunLock", "RunWarning", "RunWriter", "SearchResults",
    "StudySummary", "check_run_name", "default_run_name", "jsonable", "list_runs", "load_json",
    "load_torch", "open_run", "run_lock", "save_json", "save_torch", "select_runs",
    "workspace_root",
]


def load_json(path: Path | str) -> Any:
    return _load_json(path, RunError)


def load_torch(path: Path | str) -> Any:
    return _load_torch(path, RunError)


class RunWarning(UserWarning):
    """Something about a run the user should know, that did not stop the command."""


# --------------------------------------------------------------------------- names and roots


def check_run_name(name: Any) -> str:
    """`name` if it is one plain folder name inside the workspace, else a `SettingError`.

    Refused: anything with `/` or `\\`, `.` and `..`, absolute paths, hidden names, control or
    other characters outside the rule, and the workspace's own `search` folder."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED:
        shown = repr(name) if isinstance(name, str) else type(name).__name__
        raise SettingError(
            "name", f"Run name {shown} is not allowed: a run name is {NAME_RULE}, and not "
            f"{', '.join(sorted(RESERVED))}."
        )
    return name


def default_run_name(config: FitConfig | int) -> str:
    """The name of a run that is not given one: `ed{ED}` for the settings `config` (or an
    encoding dimension). The one place that decides it: fit, study and every reader use it."""
    return f"ed{config if isinstance(config, int) else config.ed}"


def workspace_root(root: Path | str | None = None) -> Path:
    """The workspace folder: `root`, else `$AETOOL_RUNS`, else `./runs`. It may not exist yet,
    but it may not be a file."""
    path = Path(root) if root is not None else Path(os.environ.get("AETOOL_RUNS") or "runs")
    if path.exists() and not path.is_dir():
        raise SettingError("runs", f"The workspace {path} is a file, not a folder.")
    return path


def default_runs_root() -> Path:
    """The workspace when none is named (kept for callers of earlier versions)."""
    return workspace_root()


def run_path(root: Path | str | None, name: str) -> Path:
    """The folder of run `name` in the workspace, after checking the name."""
    return workspace_root(root) / check_run_name(name)


def old_file_name(module: str, name: str, names: tuple[str, ...]) -> str:
    """A file name constant that `module` had as a second name of the workspace's (one of
    `names`), with a DeprecationWarning; an `AttributeError` for any other `name`."""
    if name not in names:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} is deprecated and goes in the next release; use "
                  f"aetool.workspace.{name} instead.", DeprecationWarning, stacklevel=3)
    return globals()[name]


def embedding_plot(method: str) -> str:
    """The file name of a run's latent-space scatter plot for projection `method`."""
    return f"latent_{method}.png"


class Workspace:
    """A workspace folder and every path in it: the one place that knows the layout.

    `Workspace()` is `$AETOOL_RUNS` or `./runs`; `Workspace(path)` any folder (not a file)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = workspace_root(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def run_dir(self, name: str) -> Path:
        """The folder of run `name`, after checking the name (`check_run_name`)."""
        return self.root / check_run_name(name)

    def runs(self, finished_only: bool = True,
             unreadable: list[Unreadable] | None = None) -> list[Run]:
        return list_runs(self.root, finished_only, unreadable)

    def select(self, names: list[str] | None = None, eds: list[int] | None = None,
               unreadable: list[Unreadable] | None = None) -> list[Run]:
        return select_runs(self.root, names, eds, unreadable)

    def lock(self, name: str, what: str | None = None, wait: float = 0.0) -> RunLock:
        return RunLock(self.root, name, what, wait)

    @property
    def search_dir(self) -> Path:
        return self.root / SEARCH_DIR

    @property
    def search_results(self) -> Path:
        return self.search_dir / SEARCH_RESULTS

    @property
    def search_log(self) -> Path:
        return self.search_dir / SEARCH_LOG

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def study(self) -> Path:
        return self.root / STUDY_FILE


# --------------------------------------------------------------------------- locks

_held: dict[Path, list] = {}  # lock file -> [FileLock, depth]: re-entrant within one process
_NOTE_LIMIT = 4096  # bytes of a holder's note read at most
_PID_MAX = 2**31 - 1


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one we may not signal counts as running)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= _PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True


def _read_note(path: Path) -> dict[str, Any]:
    """The holder's note beside a lock: `pid` (a plausible process number), `host` and
    `command` (strings). Whatever else the file holds (a link, a folder, garbage, a huge file,
    a PID of 1e20) is ignored: the note is only ever used for messages."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        note = json.loads(os.read(fd, _NOTE_LIMIT) or b"{}")
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(note, dict):
        return {}
    clean: dict[str, Any] = {}
    pid = note.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= _PID_MAX:
        clean["pid"] = pid
    for key in ("host", "command"):
        if isinstance(note.get(key), str):
            clean[key] = note[key][:200]
    return clean


def holder_command(argv: list[str] | None = None) -> str:
    """What holds a lock, as another process that wants it is told: `aetool fit` for the
    command line (`aetool search worker` for a search's helper), else the program
    (`precision_check.py`, `pytest`), or `python` for `python -c` and the interpreter."""
    argv = sys.argv if argv is None else argv
    path = Path(argv[0]) if argv and argv[0] else Path()
    if path.name == "aetool":
        return " ".join(["aetool", *argv[1:2]])
    if path.name == "__main__.py" and "aetool" in path.parts:
        top = max(i for i, part in enumerate(path.parts) if part == "aetool")
        package = path.parts[top + 1:-1]  # () for aetool/__main__.py, ("search",) for its worker
        return " ".join(["aetool", *package, "worker"] if package else ["aetool", *argv[1:2]])
    return path.name if path.name not in ("", "-c", "-") else "python"


def _lock_path_problem(path: Path) -> str | None:
    """Why `path` cannot be aetool's lock file (a link, a folder...), or None when it can."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({os_reason(exc)})"
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not stat.S_ISREG(mode):
        return "is a folder" if stat.S_ISDIR(mode) else "is not a regular file"
    return None


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.lstat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


class RunLock:
    """An exclusive lock on one entry of a workspace (a run, or the search results).

    The lock file `ROOT/.NAME.lock` is locked with `filelock` (by the operating system:
    released when the process ends, however it ends; opened without following symbolic links,
    and refused when it is a link, a folder or anything but a plain file). Beside it the note
    `ROOT/.NAME.lock.json` holds the holder's PID, host and command, so a second command is
    told who holds it; a note left by a process that died is taken over with a warning.
    Re-entrant within one process."""

    def __init__(self, root: Path | str, name: str, what: str | None = None,
                 wait: float = 0.0) -> None:
        self.root = Path(root)
        self.name = name
        self.path = self.root / f".{name}.lock"
        self.note = self.root / f".{name}.lock.json"
        self.what = what or f"Run {name!r}"
        self.wait = wait  # seconds to wait for a holder to finish before giving up
        self._made: list[Path] = []  # folders the lock created, removed again if left empty

    def acquire(self) -> RunLock:
        key = self.path.absolute()
        if key in _held:
            _held[key][1] += 1
            return self
        self._made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"Cannot create the workspace {self.root}: "
                           f"{os_reason(exc)}.") from None
        lock = self._lock_file()
        note = _read_note(self.note)
        if note.get("pid") not in (None, os.getpid()) and note.get("host") == _host() \
                and not pid_alive(note["pid"]):
            warnings.warn(f"{self.what} was locked by process {note['pid']}, which stopped "
                          "without releasing it; taking it over.", RunWarning, stacklevel=2)
        _held[key] = [lock, 1]
        mine = {"pid": os.getpid(), "host": _host(), "command": holder_command()}
        try:
            save_json(self.note, mine)
        except AetoolError:
            self.release()
            raise
        return self

    def _lock_file(self) -> filelock.FileLock:
        """The held `FileLock` of `self.path`. The file is removed again on release (while
        still held), so a lock won on a file that its holder removed meanwhile is let go and
        taken again on the new file."""
        deadline = time.monotonic() + self.wait
        while True:
            problem = _lock_path_problem(self.path)
            if problem is not None:
                raise RunError(f"{self.path} {problem}, not a lock file aetool made; remove it "
                               "(when no aetool command is running) and try again.")
            fds: list[int] = []
            lock = filelock.FileLock(str(self.path), timeout=max(0.0, deadline - time.monotonic()),
                                     mode=0o644, on_acquired=fds.append)
            try:
                lock.acquire(poll_interval=0.05)
            except filelock.Timeout:
                raise RunError(self._in_use()) from None
            except OSError as exc:
                problem = _lock_path_problem(self.path) or \
                    f"cannot be opened ({os_reason(exc)})"
                raise RunError(f"Cannot lock {self.what}: {self.path} {problem}.") from None
            if fds and _same_file(self.path, fds[-1]):
                return lock
            lock.release()

    def _in_use(self) -> str:
        note = _read_note(self.note)
        holder = f"process {note.get('pid', '?')}"
        if note.get("host") and note.get("host") != _host():
            holder += f" on {note['host']}"
        return (f"{self.what} is in use by {holder} ({note.get('command', 'aetool')}); wait for "
                "it to finish.")

    def release(self) -> None:
        key = self.path.absolute()
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            self.note.unlink(missing_ok=True)  # while still locked: no one else writes them
            self.path.unlink(missing_ok=True)
            entry[0].release()
            for folder in self._made:  # a workspace made for a command that wrote nothing
                try:
                    folder.rmdir()
                except OSError:  # not empty (or not ours to remove): it stays
                    break

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def run_lock(folder: Path | str) -> Iterator[RunLock]:
    """Hold the lock of the run at `folder` (its workspace is the parent folder)."""
    folder = Path(folder)
    with RunLock(folder.parent, folder.name) as lock:
        yield lock


# --------------------------------------------------------------------------- writing a run


def _staging(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _staged(path: Path, kind: str) -> list[Path]:
    """The staging folders of run `path` exactly (`.NAME.KIND-PID`), never another run's: with
    runs `a` and `a.new-x`, `.a.new-x.old-7` belongs to `a.new-x` alone."""
    pattern = re.compile(re.escape(f".{path.name}.{kind}-") + r"[0-9]+")
    try:
        children = sorted(path.parent.iterdir())
    except OSError:
        return []
    return [child for child in children if pattern.fullmatch(child.name)]


def recover(path: Path) -> None:
    """Tidy what an earlier command on run `path` left when it was killed: a new run that never
    finished its first epoch is removed, and an old run it was replacing is put back (or
    removed, when the new one had taken its place). Call with the run's lock held."""
    for leftover in _staged(path, "new"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in _staged(path, "old"):
        if path.exists() or path.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
            warnings.warn(f"Restored {path}: the command that was replacing it stopped before "
                          "its first epoch.", RunWarning, stacklevel=2)


# What aetool itself writes into a run folder; `--force` replaces only a folder holding these.
RUN_FILES = {CONFIG, HISTORY, MODEL, STATE, METRICS, NOISE_TABLE, NOISE_EXAMPLES, EMBEDDING_NPZ,
             EMBEDDING_JSON}
_RUN_FILE = re.compile(r"latent_[a-z0-9_]+\.png|\..+\.tmp")


def foreign_entries(path: Path) -> list[str]:
    """What in folder `path` aetool did not write: sub-folders, links and files other than a
    run's (sorted); empty for a run folder aetool made (or an empty folder)."""
    foreign = []
    for child in sorted(path.iterdir()):
        ours = child.name in RUN_FILES or _RUN_FILE.fullmatch(child.name)
        if not ours or child.is_symlink() or not child.is_file():
            foreign.append(child.name + ("/" if child.is_dir() else ""))
    return foreign


def check_replaceable(path: Path) -> None:
    """Refuse (`SettingError` on `replace`) to replace `path` unless it is a run aetool made:
    a folder (not a link) holding a config.json and only the files aetool writes."""
    if path.is_symlink():
        raise SettingError("replace", f"{path} is a symbolic link, not a run folder; --force "
                           "replaces only runs aetool made.")
    if not path.is_dir():
        return
    foreign = foreign_entries(path)
    if foreign or (any(path.iterdir()) and not (path / CONFIG).is_file()):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SettingError("replace", f"{path} is not an aetool run (it holds "
                           f"{shown or 'no ' + CONFIG}); --force replaces only runs aetool "
                           "made: move the folder away or pick another name.")


class RunWriter:
    """Writes one run folder for the training loop: checks how it may start, saves each epoch,
    finishes with the metrics. The loop calls it and never joins a path itself.

    `resume`: continue the unfinished run in `path`. `replace`: a run already in `path` is
    replaced, but only once the new run has saved its first epoch; until then it stays."""

    def __init__(self, path: Path | str, *, resume: bool = False, replace: bool = False,
                 provenance: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.resume = resume
        self.replace = replace
        self.provenance = provenance  # config.json's record of what provided model and data
        self._pending: Path | None = None  # a new run's folder until its first epoch is saved
        self.recorded: dict[str, Any] | None = None  # config.json as on disk (when resuming)

    def check(self) -> dict[str, Any] | None:
        """Refuse a start that would lose work; return the saved state when resuming."""
        recover(self.path)
        if self.path.is_symlink():
            raise RunError(f"{self.path} is a symbolic link, not a run folder; aetool writes "
                           "only into folders of its own workspace.")
        if self.resume:
            return self._resume_state()
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run folder.")
        if self.replace:
            check_replaceable(self.path)
        elif self.path.is_dir():
            self._check_new()
        self._pending = _staging(self.path, "new")
        shutil.rmtree(self._pending, ignore_errors=True)
        return None

    def _resume_state(self) -> dict[str, Any]:
        if (self.path / METRICS).exists():
            raise RunError(f"{self.path} is already finished; there is nothing to resume.")
        if not (self.path / STATE).exists():
            raise RunError(f"{self.path} has no {STATE} to resume from.")
        if not (self.path / CONFIG).is_file():
            raise RunError(f"{self.path} has no {CONFIG}; it cannot be resumed.")
        recorded = load_json(self.path / CONFIG)
        if not isinstance(recorded, dict):
            raise RunError(f"{self.path / CONFIG}: settings must be a JSON object, got "
                           f"{recorded!r}.")
        self.recorded = recorded
        state = load_torch(self.path / STATE)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise RunError(f"{self.path / STATE} does not hold a training state.")
        return state

    def _check_new(self) -> None:
        if (self.path / METRICS).exists():
            raise RunError(f"{self.path} already holds a finished run; pick another name "
                           "or replace it (`aetool fit --force`).")
        if (self.path / STATE).exists():
            raise RunError(f"{self.path} holds an unfinished run; resume it or replace it "
                           "(`aetool fit --resume` or `--force`).")
        others = sorted(p.name for p in self.path.iterdir() if p.name != CONFIG)
        if others:
            raise RunError(f"{self.path} already exists and is not an aetool run (it holds "
                           f"{', '.join(others[:3])}); pick another name.")

    @property
    def folder(self) -> Path:
        """Where the files go now: the hidden new folder until the first epoch is saved."""
        return self._pending or self.path

    def save_epoch(self, config: FitConfig, state: dict[str, Any], history: list[dict],
                   best_weights: dict[str, torch.Tensor] | None) -> None:
        """One finished epoch: the settings when they are new or changed (config.json, the
        one record of them: a resumed run may be given a new length), the best weights when
        they improved, then the resume state (training state only, no settings), then the
        history (a history on disk always has a state to resume from)."""
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        settings = asdict(config)
        if self._pending is not None or self.recorded is None or \
                any(self.recorded.get(k, v) != v for k, v in settings.items()):
            extra = {"provenance": self.provenance} if self.provenance and \
                self._pending is not None else {}
            self.recorded = {**(self.recorded or {}), **settings, **extra}
            save_json(folder / CONFIG, self.recorded)
        if best_weights is not None:
            save_torch(folder / MODEL, best_weights)
        save_torch(folder / STATE, state)
        save_json(folder / HISTORY, history)
        if self._pending is not None:
            self._take_place()

    def _take_place(self) -> None:
        assert self._pending is not None
        old = None
        if self.path.exists():  # replaced (or an empty/failed start): moved aside, then gone
            old = _staging(self.path, "old")
            os.replace(self.path, old)
        os.replace(self._pending, self.path)
        self._pending = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def best_weights(self) -> dict[str, torch.Tensor]:
        return load_torch(self.path / MODEL)

    def finish(self, metrics: dict[str, Any]) -> None:
        """Write `metrics.json` through its record, the same one every reader uses."""
        Metrics.from_json(metrics, self.path / METRICS).write(self.path / METRICS)

    def abandon(self) -> None:
        """Remove a new run's folder that never saved an epoch (a failed or stopped start)."""
        if self._pending is not None:
            shutil.rmtree(self._pending, ignore_errors=True)


# --------------------------------------------------------------------------- reading runs


# What metrics.json and history.json may hold (`aetool.checks`): a test MSE or loss that is
# not a number (a model that diverged) is a result to show, written as null or "inf".
METRICS_FIELDS = {
    "test_mse": "loss", "best_val_loss": "loss", "final_train_loss": "loss",
    "best_epoch": "int", "epochs": "int", "train_seconds": "seconds",
    "seconds_per_epoch": "seconds", "train_images": "int?", "val_images": "int?",
    "test_images": "int?", "parameters": "int?", "dataset_sha256": "str?",
    "stopped_early": "bool?", "environment": "scalars", "time_budget": "dict?",
}
HISTORY_FIELDS = {"epoch": "count", "train_loss": "loss", "val_loss": "loss", "lr": "number?",
                  "seconds": "seconds?"}


def _check_metrics(path: Path, metrics: Any) -> dict[str, Any]:
    return Metrics.from_json(metrics, path).to_json()


@dataclass
class Run:
    """A trained model's folder and what it says about itself."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def settings(self) -> FitConfig:
        return FitConfig.from_dict(self.config)

    @property
    def ed(self) -> int:
        return int(self.config["ed"])

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    def history(self) -> list[dict[str, Any]]:
        """The epochs of history.json, each checked (losses as floats, NaN allowed)."""
        from aetool.checks import check_list

        path = self.path / HISTORY
        history = load_json(path) if path.exists() else []
        return check_list(path, history, HISTORY_FIELDS, entry="epoch")

    def model(self, device: torch.device | str = "cpu"):  # noqa: ANN201 (nn.Module)
        """The run's best weights in its own architecture (`config.json`'s model), eval mode.
        A model no plugin here provides is a `RunError` naming the run and its config.json."""
        from aetool.models import load_model

        try:
            module = load_model(self.path / MODEL, self.ed, device, model=self.settings.model)
        except SettingError as exc:
            raise self.unavailable("model", self.settings.model, exc) from None
        self._warn_if_changed("model", self.settings.model)
        return module

    def _warn_if_changed(self, what: str, value: str) -> None:
        """A warning when the package that provides the run's model now has another version
        than the one config.json records (the run still loads)."""
        from aetool import plugins
        from aetool.models import parse_model_spec

        record = self.config.get("provenance")
        entry = record.get(what) if isinstance(record, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
            return
        now = plugins.provided_by(parse_model_spec(value).model.plugin)
        if now.get("package") == entry.get("package") and now.get("version") != entry["version"]:
            warnings.warn(f"Run {self.name!r} was trained with {entry['package']} "
                          f"{entry['version']}; {now['package']} {now['version']} provides its "
                          f"{what} {value!r} here, and its results may differ.", RunWarning,
                          stacklevel=3)

    def dataset(self) -> tuple[str, bool]:
        """The data set the run was trained on and its `resize`, after checking it is there (a
        `RunError` naming the run and its config.json when it is not)."""
        from aetool.data import check_dataset

        settings = self.settings
        try:
            return check_dataset(settings.dataset, settings.resize), settings.resize
        except SettingError as exc:
            raise self.unavailable("data set", settings.dataset, exc) from None

    def unavailable(self, what: str, value: str, exc: Exception) -> RunError:
        """The sentence for a run whose config.json names a model or data set (`what`) that
        cannot be had here."""
        from aetool.errors import first_line

        record = self.config.get("provenance")  # which package provided it, when recorded
        entry = record.get("model" if what == "model" else "dataset") \
            if isinstance(record, dict) else None
        package = entry.get("package") if isinstance(entry, dict) else None
        if isinstance(package, str) and package != "aetool":
            version = entry.get("version")
            advice = f"install {package}{f' {version}' if isinstance(version, str) else ''}, " \
                "the package it came from"
        else:
            advice = "install the plugin that provides it" if what == "model" else \
                "restore it, or install the plugin that provides it"
        return RunError(f"Run {self.name!r} cannot be loaded: {self.path / CONFIG} names the "
                        f"{what} {value!r}, which is not available here: "
                        f"{first_line(exc).rstrip('.')}; {advice}.")


def open_run(path: Path | str) -> Run:
    """Read a run folder and check its files; a bad file gets a `RunError` that names it."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"Run folder {path} does not exist.")
    if not (path / CONFIG).exists():
        raise RunError(f"{path} is not a run folder (it has no {CONFIG}).")
    raw = load_json(path / CONFIG)
    try:
        config = FitConfig.from_dict(raw)
    except SettingError as exc:
        raise RunError(f"{path / CONFIG}: {exc}") from None
    metrics = {}
    if (path / METRICS).exists():
        metrics = _check_metrics(path / METRICS, load_json(path / METRICS))
    return Run(path, {**raw, **asdict(config)}, metrics)


@dataclass
class Unreadable:
    """A run folder that could not be read, and why."""

    name: str
    reason: str


def list_runs(root: Path | str | None = None, finished_only: bool = True,
              unreadable: list[Unreadable] | None = None) -> list[Run]:
    """Every run folder in the workspace, sorted by encoding dimension then name.

    A folder whose files are damaged raises a `RunError` naming the file, unless `unreadable`
    is a list: then it is appended there and the other runs are still returned."""
    root = workspace_root(root)
    if not root.is_dir():
        return []
    try:
        children = sorted(root.iterdir())
    except OSError as exc:
        raise RunError(f"Cannot read the workspace {root}: "
                       f"{os_reason(exc)}.") from None
    found = []
    for child in children:
        try:
            if child.name in RESERVED or child.name.startswith(".") or not child.is_dir() \
                    or not (child / CONFIG).exists() or not (child / MODEL).exists():
                continue
            run = open_run(child)
        except (OSError, RunError) as exc:  # damaged, or a folder that cannot be read
            error = exc if isinstance(exc, RunError) else RunError(
                f"Cannot read {child}: {os_reason(exc)}.")
            if unreadable is None:
                raise error from None
            unreadable.append(Unreadable(child.name, str(error)))
            continue
        if finished_only and not run.finished:
            continue
        found.append(run)
    return sorted(found, key=lambda r: (r.ed, r.name))


def select_runs(
    root: Path | str | None = None, names: list[str] | None = None,
    eds: list[int] | None = None, unreadable: list[Unreadable] | None = None,
) -> list[Run]:
    """Runs picked by name (`names`) or encoding dimension (`eds`); all finished by default.

    A named run that cannot be read is a `RunError`. Without names, a damaged run is one too,
    unless `unreadable` is a list: then it is skipped and appended there (`list_runs`)."""
    root = workspace_root(root)
    if names:
        picked = [open_run(run_path(root, n)) for n in names]
    else:
        picked = list_runs(root, unreadable=unreadable)
        if not picked and not unreadable:
            raise RunError(
                f"No finished runs in {root}; train one with `aetool fit --ed 4` "
                "or point --runs / AETOOL_RUNS at your workspace."
            )
    if eds:
        picked = [r for r in picked if r.ed in eds]
        if not picked and not unreadable:
            raise RunError(f"No run in {root} has encoding dimension {', '.join(map(str, eds))}.")
    return picked


# --------------------------------------------------------------------------- records


R = TypeVar("R", bound="Record")


@dataclass
class Record:
    """What one file of the workspace holds, as typed fields: the one description of the file
    that its writer and every reader use.

    `from_json(obj, path)` checks the parsed JSON with `aetool.checks` (a damaged or
    hand-edited file is one `RunError` sentence naming the file and the value); `to_json()`
    is what `write` saves. A file may lack keys (older versions wrote fewer: they read as None
    and are not written back) and may hold keys a record does not know (kept in `extra` and
    written back), so `from_json(obj).to_json()` is `obj`, checked."""

    FILE: ClassVar[str] = ""  # the file's name in its folder
    FIELDS: ClassVar[dict[str, str]] = {}  # key -> kind (`aetool.checks`)
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # keys not written when None

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    @classmethod
    def from_json(cls: type[R], obj: Any, path: Path | str | None = None,
                  what: str | None = None) -> R:
        """The record of a parsed JSON object read from `path` (`what`: its place in the
        file, when it is an entry of a list)."""
        from aetool.checks import check_object

        where = path if path is not None else cls.FILE or cls.__name__
        checked = cls.check_parts(where, check_object(where, obj, cls.FIELDS, cls.REQUIRED, what))
        return cls.build(checked)

    @classmethod
    def build(cls: type[R], checked: dict[str, Any]) -> R:
        """The record of an already checked object (its unknown keys go to `extra`)."""
        known = {f.name for f in fields(cls) if f.init} - {"extra"}
        record = cls(**{k: v for k, v in checked.items() if k in known},
                     extra={k: v for k, v in checked.items() if k not in known})
        record._absent = frozenset(known - set(checked))
        return record

    @classmethod
    def check_parts(cls, path: Path | str, checked: dict[str, Any]) -> dict[str, Any]:
        """Check (and build) what `FIELDS` cannot say: lists of entries, nested objects."""
        return checked

    def to_json(self) -> dict[str, Any]:
        """The file's content as plain Python values (`save_json` writes the non-finite
        numbers JSON cannot hold)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.init or f.name == "extra" or (value is None and (
                    f.name in self._absent or f.name in self.OMIT_NONE)):
                continue
            out[f.name] = [v.to_json() if isinstance(v, Record) else v for v in value] \
                if isinstance(value, list) else value
        return {**out, **self.extra}

    @classmethod
    def read(cls: type[R], path: Path | str) -> R:
        """The checked record of the file `path` (a `RunError` naming it when it is missing,
        not JSON or damaged)."""
        return cls.from_json(load_json(path), path)

    def write(self, path: Path | str) -> Path:
        """Save the record to `path` atomically."""
        save_json(path, self.to_json())
        return Path(path)


@dataclass
class Metrics(Record):
    """`metrics.json`: written last by `aetool fit`, what the finished run achieved."""

    FILE = METRICS
    FIELDS = METRICS_FIELDS
    REQUIRED = ("test_mse",)

    test_mse: float | None = None  # NaN when the model diverged
    best_val_loss: float | None = None
    final_train_loss: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    seconds_per_epoch: float | None = None
    train_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    parameters: int | None = None
    dataset_sha256: str | None = None
    stopped_early: bool | None = None
    environment: dict[str, Any] | None = None
    time_budget: dict[str, Any] | None = None


@dataclass
class NoiseRow(Record):
    """One row of a noise table: a noise, its parameters and the MSE under it."""

    FIELDS = {"label": "str", "mse": "loss", "noise": "str?", "params": "dict?"}

    label: str | None = None  # how tables show it (two noises may share one)
    noise: str | None = None  # the noise's name
    params: dict[str, Any] | None = None  # every parameter's value
    mse: float | None = None

    @property
    def spec(self) -> str:
        """The noise spec that rebuilds this row's noise (`gaussian:sigma=0.1,clip=false`):
        what identifies a row across runs. A hand-made row without a noise: its label."""
        from aetool.plugins.params import spec_of

        if self.noise is None:
            return str(self.label)
        return spec_of(self.noise, self.params or {})


@dataclass
class NoiseTable(Record):
    """`noise_table.json`: written by `aetool corrupt`, the report's Table 1 for one run."""

    FILE = NOISE_TABLE
    FIELDS = {"rows": "list", "examples": "str?", "test_images": "int?", "seed": "number?",
              "run": "str?", "ed": "int?"}
    REQUIRED = ("rows",)

    run: str | None = None
    ed: int | None = None
    seed: int | None = None
    test_images: int | None = None
    rows: list[NoiseRow] = field(default_factory=list)
    examples: str | None = None  # the example grid's file name in the run folder

    @classmethod
    def check_parts(cls, path: Path | str, checked: dict[str, Any]) -> dict[str, Any]:
        from aetool.checks import check_list

        rows = check_list(path, checked["rows"], NoiseRow.FIELDS, entry="row", key="rows")
        return {**checked, "rows": [NoiseRow.build(row) for row in rows]}


@dataclass
class EmbeddingSummary(Record):
    """`embedding.json`: written last by `aetool embed`, how a run's latent space looks."""

    FILE = EMBEDDING_JSON
    FIELDS = {
        "run": "str?", "ed": "int?", "method": "str?", "methods": "list?", "images": "int?",
        "classes": "list?", "explained_variance": "list?", "silhouette": "number?",
        "knn_accuracy": "number?", "projection_scores": "dict?", "knn_neighbors": "int?",
        "knn_folds": "int?", "silhouette_sample": "int?", "seed": "int?", "note": "str?",
        "dataset": "str?", "dataset_sha256": "str?", "device": "str?", "plot": "str?",
        "plots": "dict?", "codes": "str?",
    }
    OMIT_NONE = frozenset({"note"})

    run: str | None = None
    ed: int | None = None
    method: str | None = None  # the first projection
    methods: list[str] | None = None
    images: int | None = None
    classes: list[str] | None = None  # None: a data set without labels
    explained_variance: list[float] | None = None
    silhouette: float | None = None
    knn_accuracy: float | None = None
    projection_scores: dict[str, dict[str, float]] | None = None
    knn_neighbors: int | None = None
    knn_folds: int | None = None
    silhouette_sample: int | None = None
    seed: int | None = None
    note: str | None = None
    dataset: str | None = None
    dataset_sha256: str | None = None
    device: str | None = None
    plot: str | None = None
    plots: dict[str, str] | None = None  # method -> its scatter plot's file name
    codes: str | None = None  # the codes' file name (embedding.npz)

    @classmethod
    def check_parts(cls, path: Path | str, checked: dict[str, Any]) -> dict[str, Any]:
        from aetool.checks import check_object, check_value

        for method, name in (checked.get("plots") or {}).items():
            check_value(f"{path}: 'plots' {method!r}", name, "str?")
        for i, ratio in enumerate(checked.get("explained_variance") or []):
            check_value(f"{path}: 'explained_variance' {i + 1}", ratio, "number")
        for method, scores in (checked.get("projection_scores") or {}).items():
            check_object(path, scores, {"silhouette": "number?", "knn_accuracy": "number?"},
                         what=f"'projection_scores' {method!r}")
        return checked


@dataclass
class SearchResults(Record):
    """`search/results.json`: written by `aetool search`, the grid's cross-validated losses
    per encoding dimension and the best setting of each."""

    FILE = SEARCH_RESULTS
    FIELDS = {"eds": "dict", "grid": "dict?", "missing": "list?", "complete": "bool?",
              "study": "dict?"}
    REQUIRED = ("eds",)

    grid: dict[str, Any] | None = None  # the protocol: lr and weight decay values, folds...
    eds: dict[str, Any] = field(default_factory=dict)  # "ED" -> {"settings", "best"}
    complete: bool | None = None
    missing: list[Any] | None = None  # the settings still to run
    study: dict[str, Any] | None = None  # the Optuna study's name, storage and seconds

    @classmethod
    def check_parts(cls, path: Path | str, checked: dict[str, Any]) -> dict[str, Any]:
        from aetool.checks import check_search_results

        return check_search_results(path, checked)


@dataclass
class StudySummary(Record):
    """`study.json`: written by `aetool study`, its settings and the time of every stage."""

    FILE = STUDY_FILE
    FIELDS = {"settings": "dict", "stages": "list", "seconds": "seconds", "report": "str?",
              "time_plan": "dict?", "unloadable": "list?"}
    REQUIRED = ("stages",)

    settings: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    report: str | None = None
    time_plan: dict[str, Any] | None = None
    unloadable: list[dict[str, str]] = field(default_factory=list)


# Every record, by the file it describes.
RECORDS: dict[str, type[Record]] = {r.FILE: r for r in (
    Metrics, NoiseTable, EmbeddingSummary, SearchResults, StudySummary)}
