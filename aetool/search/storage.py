"""The Optuna side of `aetool search`: storage, and claiming grid points among workers.

The grid lives in an Optuna study (GridSampler's search space and grid ids; one trial per grid
point, with its fold losses and curves as trial attributes), by default in a journal file in
the workspace (`runs/search/study.log`), or in any Optuna storage. Each worker claims pending
points by creating RUNNING trials for them, drops a claim that collides with an earlier live
claim of the same point (lowest trial number wins), keeps a heartbeat on its trials, and fails
the RUNNING trials of workers that died (same host: the process is gone; any host: no
heartbeat for `grace_period` seconds), so their points are trained again. Points are claimed by
aetool, not by `GridSampler.ask`, because GridSampler counts failed trials as visited and can
hand one point to two workers.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aetool import workspace as runs
from aetool.config import GridPoint, SearchConfig
from aetool.errors import AetoolError, RunError, SettingError, first_line

SEARCH_DIR = runs.SEARCH_DIR  # file names are the workspace's (aetool.workspace)
STUDY_LOG = runs.SEARCH_LOG
PROTOCOL_ATTR = "aetool:protocol"
WORKER_ATTR = "aetool:worker"
HEARTBEAT_ATTR = "aetool:heartbeat"

# The storages Optuna can use besides a journal file: SQLAlchemy's databases and a Redis
# journal, each written `scheme://...`, the scheme maybe with a driver (`postgresql+psycopg`).
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql",
                   "redis", "rediss")
STORAGE_FORMS = "sqlite:///FILE.db, postgresql://..., mysql://... or redis://..."
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\... is a path, not a URL


def check_storage(url: str | None) -> None:
    """The storage rule: None is the workspace's journal; a value with `:` is a URL
    `scheme://...` with a scheme of `STORAGE_SCHEMES`; anything else is a journal file's path.
    A value that is neither (`sqlite:/x.db`, `garbage:x`, empty) is a `SettingError`."""
    if url is None or (url.strip() and (":" not in url or _WINDOWS_DRIVE.match(url))):
        return
    scheme, sep, rest = url.partition("://")
    if not url.strip() or not sep or not rest or \
            scheme.split("+")[0].lower() not in STORAGE_SCHEMES:
        raise SettingError("storage", f"storage {hide_password(url)!r} is neither a database "
                           f"URL nor a journal file path: write a URL as {STORAGE_FORMS}, "
                           "and a journal file's path without ':'.")


def check_journal(path: Path) -> None:
    """Refuse a file Optuna cannot read as a journal, naming it: each of its lines must be
    one JSON record with an `op_code` (a last line without its newline is one another worker
    is still writing, and is left alone)."""
    if not path.exists():
        return
    if not path.is_file():
        raise AetoolError(f"The study journal {path} is not a file; choose another storage.")
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("op_code"), int):
                raise AetoolError(f"{path} is not an Optuna journal file (line {number} is not "
                                  "a journal record); move it away, or choose another storage.")


def storage_name(url: str | None, runs_root: Path) -> str:
    """How messages name a storage: its URL without the password, or the journal's path."""
    return hide_password(url) if url else str(runs_root / SEARCH_DIR / STUDY_LOG)


def open_storage(url: str | None, runs_root: Path) -> Any:
    """An Optuna storage: a database URL (sqlite:///, postgresql://, mysql://...), a
    `redis://` journal, or a journal file path; by default `runs/search/study.log`.
    `check_storage` says which values are which; errors name the URL or the path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    # aetool reports progress itself; Optuna's per-study INFO lines would clutter stderr.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_storage(url)
    try:
        if url is None or "://" not in url:
            path = Path(url) if url else runs_root / SEARCH_DIR / STUDY_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            check_journal(path)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("redis"):
            return optuna.storages.JournalStorage(JournalRedisBackend(url))
        return _rdb_storage(database_url(url))
    except ImportError as exc:
        hint = (" (pip install 'aetool[postgres]')" if database_url(url) != url
                or url.startswith("postgresql+psycopg:") else "")
        raise AetoolError(f"The storage {hide_password(url)} needs a package{hint}: "
                          f"{exc}.") from None
    except AetoolError:
        raise
    except Exception as exc:  # sqlalchemy and drivers raise many types for a bad URL or server
        raise AetoolError(f"Cannot open the storage {storage_name(url, runs_root)}: "
                          f"{first_line(exc)}") from None


def open_study(config: SearchConfig, runs_root: Path, protocol: dict[str, Any]) -> GridStudy:
    """The `GridStudy` of `config` in its storage (`open_storage`); a storage whose records
    Optuna cannot replay is one sentence naming it."""
    storage = open_storage(config.storage, runs_root)
    try:
        return GridStudy(config, storage, protocol)
    except AetoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - Optuna replays damaged records with any error
        raise AetoolError(f"Cannot read the study in the storage "
                          f"{storage_name(config.storage, runs_root)}: "
                          f"{type(exc).__name__}: {first_line(exc)}.") from None


def _rdb_storage(url: str, tries: int = 4) -> Any:
    """Optuna's RDBStorage. Workers started together on a fresh database all create its
    tables, and PostgreSQL lets one `CREATE TABLE` win and fails the others (a unique
    violation, or "already exists"): those try again after a moment, and find the tables."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def database_url(url: str) -> str:
    """The SQLAlchemy URL for a storage URL: `postgresql://` and `postgres://` without a
    driver mean psycopg 3 (the `aetool[postgres]` extra) on every SQLAlchemy 2.x, where 2.0
    would pick psycopg2 and 2.1 picks psycopg. A URL naming its driver
    (`postgresql+psycopg2://`) is kept."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


def hide_password(url: str | None) -> str | None:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url) if url else url


def host_identity() -> str:
    """This machine: its host name and hardware address (two containers may share a name).
    Where no hardware address is found, uuid gives a random one per process, and workers are
    then told apart by heartbeat alone."""
    return f"{socket.gethostname()}/{uuid.getnode():012x}"


class GridStudy:
    """One search's trials in an Optuna storage, shared by every worker that opens it."""

    def __init__(self, config: SearchConfig, storage: Any, protocol: dict[str, Any]) -> None:
        import optuna

        self.config = config
        self.storage = storage
        self.name = config.study_name or config.default_study_name()
        space = config.search_space()
        try:  # an existing study is checked before anything is written to its storage
            saved = storage.get_study_user_attrs(storage.get_study_id_from_name(self.name))
            self._check_protocol(saved.get(PROTOCOL_ATTR), protocol)
        except KeyError:  # no such study yet
            pass
        study = optuna.create_study(
            storage=storage, study_name=self.name, direction="minimize", load_if_exists=True,
            sampler=optuna.samplers.GridSampler(space, seed=config.seed),
        )
        self.study_id = storage.get_study_id_from_name(self.name)
        saved = study.user_attrs.get(PROTOCOL_ATTR)
        if saved is None:
            study.set_user_attr(PROTOCOL_ATTR, protocol)
        self._check_protocol(saved, protocol)
        self.distributions = {
            k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()
        }
        self.grid_ids = self._grid_ids(space, config.seed)
        self.search_space = space
        self.host = host_identity()
        self.in_flight: dict[int, GridPoint] = {}
        self.numbers: dict[int, int] = {}  # trial id -> trial number, for the trials made here
        self._lock = threading.Lock()

    def _check_protocol(self, saved: dict[str, Any] | None, protocol: dict[str, Any]) -> None:
        """Refuse to continue a study started with other settings (or on data that changed)."""
        if saved is None or saved == json.loads(json.dumps(protocol)):
            return
        differ = sorted(k for k in set(saved) | set(protocol) if saved.get(k) != protocol.get(k))
        if "dataset_sha256" in differ and "dataset" not in differ:
            raise RunError(
                f"The data set {protocol.get('dataset')} has changed since the search "
                f"{self.name!r} started on it (sha256 {str(saved.get('dataset_sha256'))[:12]}..., "
                f"now {str(protocol.get('dataset_sha256'))[:12]}...); restore that data, or search "
                "it under another --study-name."
            )
        raise RunError(
            f"The study {self.name!r} was started with other settings ({', '.join(differ)} "
            "differ); use the same options, or another --study-name."
        )

    @staticmethod
    def _grid_ids(space: dict[str, list[Any]], seed: int) -> dict[GridPoint, int]:
        """GridSampler's own id of each point: it gives trial number i < grid size grid id i,
        so asking a throwaway in-memory study once per point reads its numbering."""
        import optuna

        probe = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=seed))
        ids = {}
        for _ in range(math.prod(len(v) for v in space.values())):
            trial = probe.ask()  # never told: telling the last point would stop the study
            point = GridPoint(**{k: trial.suggest_categorical(k, v) for k, v in space.items()})
            ids[point] = trial.number
        return ids

    # ---------------------------------------------------------------- reading

    def trials(self) -> list[Any]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    @staticmethod
    def point_of(trial: Any) -> GridPoint | None:
        try:
            return GridPoint(int(trial.params["ed"]), float(trial.params["lr"]),
                             float(trial.params["weight_decay"]))
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self, trial: Any) -> bool:
        """Whether a RUNNING trial's worker still works on it."""
        worker = trial.system_attrs.get(WORKER_ATTR) or {}
        if worker.get("host") == self.host:
            if worker.get("pid") == os.getpid():
                return any(self.numbers.get(i) == trial.number for i in self.in_flight)
            if isinstance(worker.get("pid"), int) and not runs.pid_alive(worker["pid"]):
                return False
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None and trial.datetime_start is not None:
            beat = trial.datetime_start.timestamp()
        return beat is not None and time.time() - float(beat) <= self.config.grace_period

    def completed(self, trials: list[Any] | None = None) -> dict[GridPoint, Any]:
        """The first COMPLETE trial of each grid point."""
        from optuna.trial import TrialState

        done: dict[GridPoint, Any] = {}
        for trial in sorted(trials if trials is not None else self.trials(),
                            key=lambda t: t.number):
            point = self.point_of(trial)
            if trial.state == TrialState.COMPLETE and point is not None:
                done.setdefault(point, trial)
        return done

    def fail_orphans(self, trials: list[Any]) -> int:
        """Fail the RUNNING trials whose worker is gone, so that their points are retried."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        failed = 0
        for trial in trials:
            if trial.state == TrialState.RUNNING and not self.alive(trial):
                try:
                    trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                        self.study_id, trial.number)
                    self.storage.set_trial_system_attr(
                        trial_id, "aetool:failed", "orphaned: its worker stopped"
                    )
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                    failed += 1
                except (UpdateFinishedTrialError, RuntimeError, KeyError):
                    pass  # another worker got there first, or it just finished
        return failed

    def status(self) -> tuple[list[GridPoint], set[GridPoint], set[GridPoint]]:
        """(pending points in grid order, points done, points others are training)."""
        from optuna.trial import TrialState

        trials = self.trials()
        if self.fail_orphans(trials):
            trials = self.trials()
        done = set(self.completed(trials))
        running = {self.point_of(t) for t in trials
                   if t.state == TrialState.RUNNING and self.alive(t)}
        pending = [p for p in self.config.grid() if p not in done and p not in running]
        return pending, done, running - done

    # ---------------------------------------------------------------- writing

    def _worker(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid()}

    def claim(self, points: list[GridPoint]) -> list[tuple[int, GridPoint]]:
        """Start a trial for each point; keep those no other live trial already covers."""
        from optuna.trial import TrialState, create_trial

        mine = []
        for point in points:
            template = create_trial(
                state=TrialState.RUNNING, params=point.params, distributions=self.distributions,
                system_attrs={
                    "search_space": self.search_space, "grid_id": self.grid_ids[point],
                    WORKER_ATTR: self._worker(), HEARTBEAT_ATTR: time.time(),
                },
            )
            trial_id = self.storage.create_new_trial(self.study_id, template_trial=template)
            with self._lock:
                self.numbers[trial_id] = self.storage.get_trial_number_from_id(trial_id)
                self.in_flight[trial_id] = point
            mine.append(trial_id)
        trials = self.trials()
        by_number = {t.number: t for t in trials}
        kept = []
        for trial_id in mine:
            trial = by_number[self.numbers[trial_id]]
            point = self.in_flight[trial_id]
            earlier = [
                t for t in trials
                if t.number != trial.number and self.point_of(t) == point
                and (t.state == TrialState.COMPLETE
                     or (t.state == TrialState.RUNNING and t.number < trial.number
                         and self.alive(t)))
            ]
            if earlier:
                self.finish(trial_id, TrialState.PRUNED,
                            note=f"duplicate of trial {earlier[0].number}")
            else:
                kept.append((trial_id, point))
        return kept

    def finish(self, trial_id: int, state: Any, value: float | None = None,
               attrs: dict[str, Any] | None = None, note: str | None = None) -> None:
        """Record a trial's outcome; a COMPLETE result survives its trial having been failed
        as orphaned meanwhile (it is then added as a new trial unless the point is done)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState, create_trial

        with self._lock:
            point = self.in_flight.pop(trial_id, None)
        try:
            for key, val in (attrs or {}).items():
                self.storage.set_trial_user_attr(trial_id, key, val)
            if note:
                self.storage.set_trial_system_attr(trial_id, "aetool:note", note)
            self.storage.set_trial_state_values(
                trial_id, state, None if value is None else [value]
            )
        except UpdateFinishedTrialError:
            if state != TrialState.COMPLETE or point is None or point in self.completed():
                return
            self.storage.create_new_trial(self.study_id, template_trial=create_trial(
                state=TrialState.COMPLETE, value=value, params=point.params,
                distributions=self.distributions, user_attrs=attrs or {},
                system_attrs={"search_space": self.search_space,
                              "grid_id": self.grid_ids[point], WORKER_ATTR: self._worker()},
            ))

    def fail_in_flight(self, reason: str) -> None:
        from optuna.trial import TrialState

        for trial_id in list(self.in_flight):
            try:
                self.finish(trial_id, TrialState.FAIL, note=reason)
            except Exception:  # noqa: BLE001 - best effort while stopping; orphans get retried
                pass

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Refresh the heartbeat of this worker's trials in a background thread."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_interval):
                with self._lock:
                    ids = list(self.in_flight)
                for trial_id in ids:
                    try:
                        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                    except Exception:  # noqa: BLE001 - finished meanwhile, or storage hiccup
                        pass

        thread = threading.Thread(target=beat, name="aetool-search-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
