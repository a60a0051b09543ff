"""The whole experiment in one call: search -> fit each ED -> corrupt -> embed -> report.

Each stage skips what the workspace already holds (a finished run, a saved noise table, a saved
embedding; the search resumes from its Optuna study), so running the study again after an
interruption continues where it stopped, and running it on a finished workspace only
re-renders the report. The wall time of every stage is saved in `runs/study.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aetool import runs
from aetool.errors import AetoolError
from aetool.training import DEFAULT_PRESET

STAGES = ("search", "fit", "corrupt", "embed", "report")
STUDY_FILE = "study.json"


@dataclass
class StudySettings:
    """What the study runs. Defaults run the report's experiment (its EDs, search grid, folds
    and noises) with aetool's default training recipe; `preset="report"` fits exactly as the
    report did."""

    eds: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    lrs: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])  # search grid
    weight_decays: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-5])
    folds: int = 3  # k-fold cross-validation of the search
    search_epochs: int = 20  # epochs per (setting, fold) in the search
    max_loss: float = 0.1  # the search drops settings whose final val loss exceeds this
    preset: str = DEFAULT_PRESET  # fit's starting settings; the search's lr and wd go on top
    max_epochs: int | None = None  # cap on fit's epochs (None: the preset's)
    noises: list[str] | None = None  # corrupt's noises (None: the report's Table 1)
    methods: list[str] = field(default_factory=lambda: ["pca"])  # embed's projections
    seed: int = 0
    device: str = "auto"
    dataset: str = "mnist"
    val_size: int = 10_000
    search_limit: int | None = None  # use only the first N training images in the search
    skip_search: bool = False  # fit with the preset's lr and wd instead of searching


# Progress: (stage, units done, units in all, what is happening now).
StudyProgressFn = Callable[[str, float, float, str], None]


@dataclass
class StageResult:
    stage: str
    seconds: float
    done: list[str]  # what this call computed
    skipped: list[str]  # what the workspace already had


def _search(settings: StudySettings, root: Path, data_dir: Path | None,
            progress: StudyProgressFn) -> StageResult:
    from aetool.search import SearchConfig, run_search

    config = SearchConfig(
        eds=settings.eds, lrs=settings.lrs, weight_decays=settings.weight_decays,
        folds=settings.folds, epochs=settings.search_epochs, seed=settings.seed,
        dataset=settings.dataset, val_size=settings.val_size, limit=settings.search_limit,
        device=settings.device, max_loss=settings.max_loss,
    )
    tic = time.perf_counter()
    results = run_search(
        config, root, data_dir=data_dir,
        on_progress=lambda done, total, status: progress("search", done, total, status),
    )
    # The search resumes from its study: points trained before are not trained again.
    label = [f"ED {ed}" for ed in results.get("eds", {})]
    return StageResult("search", time.perf_counter() - tic, label, [])


def _fit(settings: StudySettings, root: Path, data_dir: Path | None,
         progress: StudyProgressFn) -> StageResult:
    from aetool.training import fit, preset_config, resume_config

    tic = time.perf_counter()
    done, skipped = [], []
    for i, ed in enumerate(settings.eds):
        run_dir = root / f"ed{ed}"
        if (run_dir / runs.METRICS).exists():
            skipped.append(run_dir.name)
            progress("fit", i + 1, len(settings.eds), f"{run_dir.name} already trained")
            continue
        resume = (run_dir / runs.STATE).exists()
        if resume:
            config = resume_config(run_dir, device=settings.device)
        else:
            best: dict[str, Any] = {}
            if not settings.skip_search:
                from aetool.search import best_setting

                best = best_setting(root, ed)
            config = preset_config(
                settings.preset, ed=ed, lr=best.get("lr"),
                weight_decay=best.get("weight_decay"), max_epochs=settings.max_epochs,
                seed=settings.seed, device=settings.device, dataset=settings.dataset,
                val_size=settings.val_size,
            )
        total = config.max_epochs

        def on_epoch(record: Any, cfg: Any, i: int = i, name: str = run_dir.name,
                     total: int = total) -> None:
            progress("fit", i + record.epoch / total, len(settings.eds),
                     f"{name}: epoch {record.epoch}, val {record.val_loss:.5f}")

        fit(config, run_dir, data_dir=data_dir, resume=resume, on_epoch=on_epoch)
        done.append(run_dir.name)
        progress("fit", i + 1, len(settings.eds), f"{run_dir.name} done")
    return StageResult("fit", time.perf_counter() - tic, done, skipped)


def _study_runs(settings: StudySettings, root: Path) -> list[runs.Run]:
    return [runs.open_run(root / f"ed{ed}") for ed in settings.eds]


def _corrupt(settings: StudySettings, root: Path, data_dir: Path | None,
             progress: StudyProgressFn) -> StageResult:
    from aetool.corrupt import NOISE_TABLE, corrupt_and_save
    from aetool.data import load_dataset
    from aetool.devices import resolve_device
    from aetool.noises import DEFAULT_NOISE_SPECS, parse_noise_specs

    tic = time.perf_counter()
    noises = parse_noise_specs(settings.noises or list(DEFAULT_NOISE_SPECS))
    device = resolve_device(settings.device)
    todo = [r for r in _study_runs(settings, root) if not (r.path / NOISE_TABLE).exists()]
    skipped = [r.name for r in _study_runs(settings, root) if r not in todo]
    test_sets: dict[str, Any] = {}  # each run is corrupted on its own data set's test images
    total = max(len(todo) * len(noises), 1)
    count = 0
    for run in todo:

        def on_row(row: Any, name: str = run.name) -> None:
            nonlocal count
            count += 1
            progress("corrupt", count, total, f"{name}: {row['label']}")

        dataset = run.settings.dataset
        if dataset not in test_sets:
            test_sets[dataset] = load_dataset(dataset, data_dir, device).test_images
        corrupt_and_save(run.model(device), test_sets[dataset], noises, run.path, run.name,
                         run.ed, on_row=on_row)
    progress("corrupt", total, total, "done")
    return StageResult("corrupt", time.perf_counter() - tic, [r.name for r in todo], skipped)


def _embed(settings: StudySettings, root: Path, data_dir: Path | None,
           progress: StudyProgressFn) -> StageResult:
    from aetool.data import load_dataset
    from aetool.devices import resolve_device
    from aetool.embed import EMBEDDING_JSON, embed_run

    tic = time.perf_counter()
    device = resolve_device(settings.device)
    found = _study_runs(settings, root)
    todo = [r for r in found if not (r.path / EMBEDDING_JSON).exists()]
    loaded: dict[str, Any] = {}  # each run is embedded with its own data set
    for i, run in enumerate(todo):
        progress("embed", i, len(todo), f"{run.name}")
        dataset = run.settings.dataset
        if dataset not in loaded:
            loaded[dataset] = load_dataset(dataset, data_dir, device)
        embed_run(run, loaded[dataset], settings.methods, device, seed=settings.seed)
    progress("embed", len(todo), max(len(todo), 1), "done")
    return StageResult("embed", time.perf_counter() - tic, [r.name for r in todo],
                       [r.name for r in found if r not in todo])


def _report(settings: StudySettings, root: Path, data_dir: Path | None,
            progress: StudyProgressFn) -> StageResult:
    from aetool.report import write_report

    tic = time.perf_counter()
    result = write_report(root)
    progress("report", 1, 1, str(result.path))
    return StageResult("report", time.perf_counter() - tic, [str(result.path)], [])


RUNNERS = {"search": _search, "fit": _fit, "corrupt": _corrupt, "embed": _embed,
           "report": _report}


def run_study(
    settings: StudySettings,
    runs_root: Path | str | None = None,
    *,
    data_dir: Path | str | None = None,
    on_progress: StudyProgressFn | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> dict[str, Any]:
    """Run every stage in order, skipping finished work; return and save the stage timings."""
    if not settings.eds:
        raise AetoolError("The study needs at least one encoding dimension.")
    root = runs.workspace_root(runs_root)
    data_dir = Path(data_dir) if data_dir is not None else None
    progress = on_progress or (lambda *args: None)
    stages = [s for s in STAGES if not (s == "search" and settings.skip_search)]
    results: list[StageResult] = []
    tic = time.perf_counter()
    for stage in stages:
        result = RUNNERS[stage](settings, root, data_dir, progress)
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    summary = {
        "settings": asdict(settings),
        "stages": [asdict(r) for r in results],
        "seconds": time.perf_counter() - tic,
        "report": str(root / "report.html"),
    }
    runs.save_json(root / STUDY_FILE, summary)
    return summary
