"""The whole experiment in one call: search -> fit each ED -> corrupt -> embed -> report.

Each stage skips what the workspace already holds (a finished run, a saved noise table, a saved
embedding; the search resumes from its Optuna study), so running the study again after an
interruption continues where it stopped, and running it on a finished workspace only
re-renders the report. The wall time of every stage is saved in `runs/study.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aetool import workspace as runs
from aetool.config import FitConfig, StudySettings
from aetool.errors import AetoolError, ProgressEvent, ProgressFn, RunError, SettingError
from aetool.train.budget import MAX_EPOCHS, duration_text
from aetool.train.loop import fit_run, resume_config, run_config

STAGES = ("search", "fit", "corrupt", "embed", "report")


def check_study(settings: StudySettings) -> None:
    """Check the options of every stage before the first one starts (`SettingError`): the
    values (`StudySettings.validate`), the model at every ED, the data set, the device and its
    precision, the noises and the projections."""
    from aetool.data import check_dataset
    from aetool.devices import resolve_device
    from aetool.evaluate.embed import check_methods
    from aetool.models import parse_model_spec
    from aetool.noises import DEFAULT_NOISE_SPECS, parse_noise_specs
    from aetool.search.grid import check_search
    from aetool.train.fast.precision import resolve_precision

    settings.validate()
    for ed in settings.eds:
        parse_model_spec(settings.model).build(ed)  # the model keeps its contract at this ED
    if not settings.skip_search:
        check_search(settings.search_config())
    check_dataset(settings.dataset, settings.resize)
    resolve_precision(settings.precision, resolve_device(settings.device))
    try:
        parse_noise_specs(settings.noises or list(DEFAULT_NOISE_SPECS))
    except AetoolError as exc:
        raise SettingError("noises", str(exc)) from None
    try:
        check_methods(settings.methods)
    except AetoolError as exc:
        raise SettingError("methods", str(exc)) from None


@dataclass
class StageResult:
    stage: str
    seconds: float
    done: list[str]  # what this call computed
    skipped: list[str]  # what the workspace already had


Unloadable = list[runs.Unreadable]  # runs a stage could not load: skipped, the study goes on


def _note(unloadable: Unloadable, name: str, exc: AetoolError) -> None:
    """Note a run a stage skips (once per run, however many stages skip it)."""
    if all(entry.name != name for entry in unloadable):
        unloadable.append(runs.Unreadable(name, str(exc)))


def _search(settings: StudySettings, root: Path, data_dir: Path | None,
            progress: ProgressFn, unloadable: Unloadable) -> StageResult:
    from aetool.search.grid import run_search

    tic = time.perf_counter()
    results = run_search(
        settings.search_config(), root, data_dir=data_dir,
        on_progress=progress,
    )
    # The search resumes from its study: points trained before are not trained again.
    label = [f"ED {ed}" for ed in results.get("eds", {})]
    return StageResult("search", time.perf_counter() - tic, label, [])


def _fit(settings: StudySettings, root: Path, data_dir: Path | None,
         progress: ProgressFn, unloadable: Unloadable) -> StageResult:
    tic = time.perf_counter()
    done, skipped = [], []
    for i, ed in enumerate(settings.eds):
        name = runs.default_run_name(ed)
        if (root / name / runs.METRICS).exists():
            skipped.append(name)
            progress(ProgressEvent("fit", i + 1, len(settings.eds), f"{name} already trained"))
            continue
        # A new run's settings come from the study (and its search): a problem there stops it.
        config = None if (root / name / runs.STATE).exists() else _new_config(settings, root, ed)
        try:
            if config is None:  # an interrupted study: the run's own settings
                config = resume_config(root / name, device=settings.device)
            _fit_one(config, root, name, data_dir, progress, i, len(settings.eds))
        except RunError as exc:  # damaged, in use, or its model is not available here
            _note(unloadable, name, exc)
            continue
        done.append(name)
        progress(ProgressEvent("fit", i + 1, len(settings.eds), f"{name} done"))
    return StageResult("fit", time.perf_counter() - tic, done, skipped)


def _new_config(settings: StudySettings, root: Path, ed: int) -> FitConfig:
    """The settings of the study's new run for encoding dimension `ed`."""
    return run_config(
        settings.preset, runs_root=root, from_search=not settings.skip_search, ed=ed,
        max_epochs=settings.max_epochs or (MAX_EPOCHS if settings.fit_seconds else None),
        time_budget=settings.fit_seconds, seed=settings.seed, device=settings.device,
        dataset=settings.dataset, resize=settings.resize,
        val_size=settings.val_size, model=settings.model, precision=settings.precision,
    )


def _fit_one(config: FitConfig, root: Path, name: str, data_dir: Path | None,
             progress: ProgressFn, i: int, count: int) -> None:
    """Train (or resume) run `name`, the `i`-th of the study's `count`."""

    def on_epoch(record: Any, cfg: Any) -> None:
        progress(ProgressEvent("fit", i + record.epoch / config.max_epochs, count,
                               f"{name}: epoch {record.epoch}, val {record.val_loss:.5f}"))

    fit_run(config, root, name, existing="continue", data_dir=data_dir, on_epoch=on_epoch)


def _study_runs(settings: StudySettings, root: Path, unloadable: Unloadable) -> list[runs.Run]:
    """The study's runs that can be read; the others are noted in `unloadable`."""
    found = []
    for ed in settings.eds:
        name = runs.default_run_name(ed)
        if any(entry.name == name for entry in unloadable):
            continue  # an earlier stage could not load it
        try:
            found.append(runs.open_run(root / name))
        except RunError as exc:
            _note(unloadable, name, exc)
    return found


def _corrupt(settings: StudySettings, root: Path, data_dir: Path | None,
             progress: ProgressFn, unloadable: Unloadable) -> StageResult:
    from aetool.devices import resolve_device
    from aetool.evaluate.corrupt import corrupt_models, run_targets
    from aetool.noises import DEFAULT_NOISE_SPECS, parse_noise_specs

    tic = time.perf_counter()
    noises = parse_noise_specs(settings.noises or list(DEFAULT_NOISE_SPECS))
    device = resolve_device(settings.device)
    found = _study_runs(settings, root, unloadable)
    todo = [r for r in found if not (r.path / runs.NOISE_TABLE).exists()]
    total = max(len(todo) * len(noises), 1)
    # Each run is corrupted on the test images of the data set it was trained on.
    skipped: Unloadable = []
    corrupt_models(run_targets(todo, device, skipped=skipped), noises, device,
                   data_dir=data_dir, on_progress=progress, skipped=skipped)
    for entry in skipped:
        _note(unloadable, entry.name, RunError(entry.reason))
    todo = [r for r in todo if all(e.name != r.name for e in skipped)]
    progress(ProgressEvent("corrupt", total, total, "done"))
    return StageResult("corrupt", time.perf_counter() - tic, [r.name for r in todo],
                       [r.name for r in found if r not in todo])


def _embed(settings: StudySettings, root: Path, data_dir: Path | None,
           progress: ProgressFn, unloadable: Unloadable) -> StageResult:
    from aetool.devices import resolve_device
    from aetool.evaluate.embed import embed_runs

    tic = time.perf_counter()
    found = _study_runs(settings, root, unloadable)
    todo = [r for r in found if not (r.path / runs.EMBEDDING_JSON).exists()]
    # Each run is embedded with the data set it was trained on.
    skipped: Unloadable = []
    embed_runs(todo, settings.methods, resolve_device(settings.device), data_dir=data_dir,
               seed=settings.seed, skipped=skipped, on_progress=progress)
    for entry in skipped:
        _note(unloadable, entry.name, RunError(entry.reason))
    todo = [r for r in todo if all(e.name != r.name for e in skipped)]
    progress(ProgressEvent("embed", len(todo), max(len(todo), 1), "done"))
    return StageResult("embed", time.perf_counter() - tic, [r.name for r in todo],
                       [r.name for r in found if r not in todo])


def _report(settings: StudySettings, root: Path, data_dir: Path | None,
            progress: ProgressFn, unloadable: Unloadable) -> StageResult:
    from aetool.report.render import write_report

    tic = time.perf_counter()
    result = write_report(root)
    for entry in result.unreadable:  # listed in the page, and skipped by the study
        _note(unloadable, entry["name"], RunError(entry["reason"]))
    progress(ProgressEvent("report", 1, 1, str(result.path)))
    return StageResult("report", time.perf_counter() - tic, [str(result.path)], [])


REST_SHARE = 0.1  # of a study's time budget kept for corrupt, embed and report
MIN_FIT_SECONDS = 10.0


def split_time(settings: StudySettings, root: Path, spent: float
               ) -> tuple[StudySettings, dict[str, Any]]:
    """How a study's time budget is spent: the search takes what it takes (its grid is fixed
    work), a tenth of the budget is kept for corrupt, embed and report, and what is left goes
    in equal shares to the fits still to start, each of which trains to its share as
    `fit --time` does (a finished or interrupted run keeps its length)."""
    budget = float(settings.time_budget or 0)
    names = [runs.default_run_name(ed) for ed in settings.eds]
    todo = [name for name in names if not (root / name / runs.STATE).exists()
            and not (root / name / runs.METRICS).exists()]
    share = (budget * (1 - REST_SHARE) - spent) / max(len(todo), 1)
    if todo and share < MIN_FIT_SECONDS:
        raise AetoolError(
            f"The search took {duration_text(spent)} of the study's {duration_text(budget)}; "
            f"too little is left to fit {len(todo)} models; give more time."
        )
    plan = {"budget": budget, "search_seconds": spent, "rest_seconds": budget * REST_SHARE,
            "fits": todo, "seconds_per_fit": share if todo else 0.0,
            "rule": f"search first; {REST_SHARE:.0%} kept for corrupt, embed and report; the "
                    "rest split equally over the fits still to start"}
    return replace(settings, fit_seconds=share if todo else None), plan


RUNNERS = {"search": _search, "fit": _fit, "corrupt": _corrupt, "embed": _embed,
           "report": _report}


def run_study(
    settings: StudySettings,
    runs_root: Path | str | None = None,
    *,
    data_dir: Path | str | None = None,
    on_progress: ProgressFn | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> dict[str, Any]:
    """Run every stage in order, skipping finished work; return and save the stage timings.
    Every stage's options are checked before the first stage starts. A run a stage cannot
    load (damaged, or its model or data set not available here) is skipped by every stage
    and listed in the summary's `unloadable` (name and reason); the other runs go on."""
    check_study(settings)
    root = runs.workspace_root(runs_root)
    data_dir = Path(data_dir) if data_dir is not None else None
    progress = on_progress or (lambda event: None)
    stages = [s for s in STAGES if not (s == "search" and settings.skip_search)]
    results: list[StageResult] = []
    tic = time.perf_counter()
    time_plan = None
    unloadable: Unloadable = []
    for stage in stages:
        if stage == "fit" and settings.time_budget is not None:
            settings, time_plan = split_time(settings, root, time.perf_counter() - tic)
            progress(ProgressEvent("fit", 0, len(settings.eds), (
                f"time budget: {duration_text(time_plan['seconds_per_fit'])} for each of "
                f"{len(time_plan['fits'])} fits") if time_plan["fits"] else "nothing to fit"))
        result = RUNNERS[stage](settings, root, data_dir, progress, unloadable)
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    summary = {
        "settings": asdict(settings),
        "stages": [asdict(r) for r in results],
        "seconds": time.perf_counter() - tic,
        "report": str(runs.Workspace(root).report),
        "time_plan": time_plan,
        "unloadable": [asdict(entry) for entry in unloadable],
    }
    runs.StudySummary.from_json(summary).write(runs.Workspace(root).study)
    return summary


def __getattr__(name: str) -> Any:
    """The file name this module had (deprecated: it is the workspace's)."""
    return runs.old_file_name(__name__, name, ("STUDY_FILE",))
