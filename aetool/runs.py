"""The workspace and its run folders: names, locks, what each file is called, safe writing.

A workspace (default `./runs`, or `--runs` / `$AETOOL_RUNS`) holds one folder per trained
model (`ed4/`, `ed32/`, ...) and a `search/` folder. A run folder holds:

    config.json    the resolved settings it was trained with
    history.json   per-epoch train and validation loss, learning rate and seconds
    model.pt       the best weights by validation loss (a bare state_dict)
    state.pt       everything needed to resume (model, optimiser, RNG states, history)
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
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aetool.errors import RunError, SettingError
from aetool.files import jsonable, save_json, save_torch
from aetool.files import load_json as _load_json
from aetool.files import load_torch as _load_torch
from aetool.settings import FitConfig

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
    "CONFIG", "HISTORY", "METRICS", "MODEL", "STATE", "Run", "RunLock", "RunWarning", "RunWriter",
    "check_run_name", "jsonable", "list_runs", "load_json", "load_torch", "open_run",
    "run_lock", "save_json", "save_torch", "select_runs", "workspace_root",
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

    def select(self, names: list[str] | None = None, eds: list[int] | None = None) -> list[Run]:
        return select_runs(self.root, names, eds)

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

_held: dict[Path, list] = {}  # lock file -> [fd, depth]: re-entrant within one process


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _try_lock(fd: int) -> bool:
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the holder's note
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_note(fd: int) -> dict[str, Any]:
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


class RunLock:
    """An exclusive lock on one entry of a workspace (a run, or the search results).

    The lock file `ROOT/.NAME.lock` is locked by the operating system (released when the
    process ends, however it ends) and holds the holder's PID, host and command, so a second
    command is told who holds it. A note left by a process that died is taken over with a
    warning. Re-entrant within one process."""

    def __init__(self, root: Path | str, name: str, what: str | None = None,
                 wait: float = 0.0) -> None:
        self.root = Path(root)
        self.name = name
        self.path = self.root / f".{name}.lock"
        self.what = what or f"Run {name!r}"
        self.wait = wait  # seconds to wait for a holder to finish before giving up
        self._made: list[Path] = []  # folders the lock created, removed again if left empty

    def acquire(self) -> RunLock:
        key = self.path.absolute()
        if key in _held:
            _held[key][1] += 1
            return self
        self._made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                note = _read_note(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = f"process {note.get('pid', '?')}"
                if note.get("host") and note.get("host") != _host():
                    holder += f" on {note['host']}"
                raise RunError(f"{self.what} is in use by {holder} "
                               f"({note.get('command', 'aetool')}); wait for it to finish.")
            try:  # the holder before us may have removed the file as we opened it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        note = _read_note(fd)
        if note.get("pid") not in (None, os.getpid()) and note.get("host") == _host() \
                and not pid_alive(int(note["pid"])):
            warnings.warn(f"{self.what} was locked by process {note['pid']}, which stopped "
                          "without releasing it; taking it over.", RunWarning, stacklevel=2)
        mine = json.dumps({"pid": os.getpid(), "host": _host(),
                           "command": " ".join(["aetool", *sys.argv[1:2]])}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine, 0)
        _held[key] = [fd, 1]
        return self

    def release(self) -> None:
        key = self.path.absolute()
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            self.path.unlink(missing_ok=True)  # while still locked: no one else can hold it
            os.close(entry[0])
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


def recover(path: Path) -> None:
    """Tidy what an earlier command on run `path` left when it was killed: a new run that never
    finished its first epoch is removed, and an old run it was replacing is put back (or
    removed, when the new one had taken its place). Call with the run's lock held."""
    for leftover in path.parent.glob(f".{path.name}.new-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in path.parent.glob(f".{path.name}.old-*"):
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
            warnings.warn(f"Restored {path}: the command that was replacing it stopped before "
                          "its first epoch.", RunWarning, stacklevel=2)


class RunWriter:
    """Writes one run folder for the training loop: checks how it may start, saves each epoch,
    finishes with the metrics. The loop calls it and never joins a path itself.

    `resume`: continue the unfinished run in `path`. `replace`: a run already in `path` is
    replaced, but only once the new run has saved its first epoch; until then it stays."""

    def __init__(self, path: Path | str, *, resume: bool = False, replace: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self.replace = replace
        self._pending: Path | None = None  # a new run's folder until its first epoch is saved

    def check(self) -> dict[str, Any] | None:
        """Refuse a start that would lose work; return the saved state when resuming."""
        recover(self.path)
        if self.resume:
            if (self.path / METRICS).exists():
                raise RunError(f"{self.path} is already finished; there is nothing to resume.")
            if not (self.path / STATE).exists():
                raise RunError(f"{self.path} has no {STATE} to resume from.")
            state = load_torch(self.path / STATE)
            if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
                raise RunError(f"{self.path / STATE} does not hold a training state.")
            return state
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run folder.")
        if not self.replace and self.path.is_dir():
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
        self._pending = _staging(self.path, "new")
        shutil.rmtree(self._pending, ignore_errors=True)
        return None

    @property
    def folder(self) -> Path:
        """Where the files go now: the hidden new folder until the first epoch is saved."""
        return self._pending or self.path

    def save_epoch(self, config: FitConfig, state: dict[str, Any], history: list[dict],
                   best_weights: dict[str, torch.Tensor] | None) -> None:
        """One finished epoch: the best weights when they improved, then the resume state,
        then the history (a history on disk always has a state to resume from)."""
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        if self._pending is not None:
            save_json(folder / CONFIG, asdict(config))
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
        save_json(self.path / METRICS, metrics)

    def abandon(self) -> None:
        """Remove a new run's folder that never saved an epoch (a failed or stopped start)."""
        if self._pending is not None:
            shutil.rmtree(self._pending, ignore_errors=True)


# --------------------------------------------------------------------------- reading runs


def _check_metrics(path: Path, metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, dict):
        raise RunError(f"{path} must hold a JSON object, got {type(metrics).__name__}.")
    numbers = {"test_mse": (int, float), "best_val_loss": (int, float),
               "train_seconds": (int, float), "best_epoch": (int,), "epochs": (int,)}
    for key, kinds in numbers.items():
        value = metrics.get(key)
        if key in metrics and (isinstance(value, bool) or not isinstance(value, kinds)
                               or value < 0):
            raise RunError(f"{path}: {key!r} must be a number of at least 0, got {value!r}.")
    if "test_mse" not in metrics:
        raise RunError(f"{path} has no 'test_mse'.")
    if "environment" in metrics and not isinstance(metrics["environment"], dict):
        raise RunError(f"{path}: 'environment' must be a JSON object.")
    return metrics


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
        path = self.path / HISTORY
        history = load_json(path) if path.exists() else []
        if not isinstance(history, list):
            raise RunError(f"{path} must hold a JSON list of epochs.")
        return history

    def model(self, device: torch.device | str = "cpu"):  # noqa: ANN201 (nn.Module)
        """The run's best weights in its own architecture (`config.json`'s model), eval mode."""
        from aetool.models import load_weights

        return load_weights(self.settings.model, self.ed, self.path / MODEL, device)


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
    found = []
    for child in sorted(root.iterdir()):
        if child.name in RESERVED or child.name.startswith(".") or not child.is_dir():
            continue
        if not (child / CONFIG).exists() or not (child / MODEL).exists():
            continue
        try:
            run = open_run(child)
        except RunError as exc:
            if unreadable is None:
                raise
            unreadable.append(Unreadable(child.name, str(exc)))
            continue
        if finished_only and not run.finished:
            continue
        found.append(run)
    return sorted(found, key=lambda r: (r.ed, r.name))


def select_runs(
    root: Path | str | None = None, names: list[str] | None = None, eds: list[int] | None = None
) -> list[Run]:
    """Runs picked by name (`names`) or encoding dimension (`eds`); all finished by default."""
    root = workspace_root(root)
    if names:
        picked = [open_run(run_path(root, n)) for n in names]
    else:
        picked = list_runs(root)
        if not picked:
            raise RunError(
                f"No finished runs in {root}; train one with `aetool fit --ed 4` "
                "or point --runs / AETOOL_RUNS at your workspace."
            )
    if eds:
        picked = [r for r in picked if r.ed in eds]
        if not picked:
            raise RunError(f"No run in {root} has encoding dimension {', '.join(map(str, eds))}.")
    return picked
