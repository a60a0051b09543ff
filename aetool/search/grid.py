"""Grid search with k-fold cross-validation: the grid, the folds, the selection rule, and an
Optuna study that lets a search resume and spread over several workers.

What is searched. Every (ED, learning rate, weight decay) point of the grid is trained on each
of `folds` folds for `epochs` epochs, with `fit`'s training loop (`aetool.train.batched`: the same
initial weights, batch order, Adam and loss as `aetool.train.loop`). The folds come from
scikit-learn's `KFold(n_splits=folds, shuffle=True, random_state=seed)` over the training split
that `fit` trains on (`split_train_val(data, val_size, 0).train`: MNIST's 50,000 images outside
`fit`'s validation set); `fit`'s validation images and the test set are not touched.

How a setting is chosen (per ED). A setting is dropped when its final validation loss on any
fold is above `max_loss` (or not finite), or when it oscillates: its oscillation (the largest
over the folds) is above `max_oscillation`. The oscillation of one validation curve is the
sum of its epoch-to-epoch increases over the second half of the epochs, divided by the mean
loss over that half: 0 for a curve that only goes down, 0.1 when it gives back a tenth of its
level in bumps, 1 or more when it swings by its own size. On MNIST (ED 4, the report's grid,
20 epochs) every curve measured 0.03 or less, so the default bound, 0.2, keeps normal noise
and drops a curve with one jump of a fifth of its level or repeated smaller swings. Among the
settings kept, the lowest mean final validation loss over the folds wins.

How it survives and scales. The grid lives in an Optuna study (GridSampler's search space and
grid ids; one trial per grid point, with its fold losses and curves as trial attributes), by
default in a journal file in the workspace (`runs/search/study.log`), or in any Optuna storage.
Each worker claims pending points by creating RUNNING trials for them, drops a claim that
collides with an earlier live claim of the same point (lowest trial number wins), keeps a
heartbeat on its trials, and fails the RUNNING trials of workers that died (same host: the
process is gone; any host: no heartbeat for `grace_period` seconds), so their points are
trained again. Points are claimed by aetool, not by `GridSampler.ask`, because GridSampler
counts failed trials as visited and can hand one point to two workers.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from aetool import workspace as runs
from aetool.config import (  # noqa: F401 (SearchConfig and the grid's defaults were here)
    DEFAULT_EDS,
    DEFAULT_LRS,
    DEFAULT_WEIGHT_DECAYS,
    SEED_MAX,
    SEED_RULE,
    FitConfig,
    GridPoint,
    SearchConfig,
)
from aetool.data import load_dataset, split_train_val
from aetool.devices import device_description, resolve_device
from aetool.errors import (
    AetoolError,
    ProgressEvent,
    ProgressFn,
    RunError,
    first_line,
)
from aetool.models import parse_model_spec
from aetool.search.storage import (
    SEARCH_DIR,
    GridStudy,
    check_storage,
    hide_password,
    open_storage,  # noqa: F401 (API: tests and callers open the storage from here)
    open_study,
)
from aetool.search.workers import (
    check_workers,
    start_workers,
    stop_workers,
    threads_per_worker,
    torch_threads,
)
from aetool.train.batched import Curves, TrainJob, train_models
from aetool.train.fast.precision import resolve_precision

RESULTS = runs.SEARCH_RESULTS
OSCILLATION_DEFINITION = (
    "sum of epoch-to-epoch increases of the validation loss over the second half of the "
    "epochs, divided by its mean over that half; the largest over the folds"
)
# Models trained together on a CPU when --parallel is auto: on a 2-core CPU vmap gained
# nothing over the plain loop (benchmarks/search_speed.py), so the CPU trains one at a time.
CPU_PARALLEL = 1
GPU_MAX_PARALLEL = 128
BYTES_PER_IMAGE = 160_000  # activations and gradients of one image in one model, with slack

# Called with each group of models (one TrainJob per grid point and fold) right before this
# worker trains them: what a worker actually trains, e.g. to check that no point is trained
# twice. A group retried with fewer models after running out of GPU memory is reported again.
TrainHook = Callable[[list[TrainJob]], None]


# --------------------------------------------------------------------------- data and folds


def search_images(
    config: SearchConfig,
    data_dir: Path | str | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, str]:
    """The images the search cross-validates on, and the data set's checksum."""
    data = load_dataset(config.dataset, data_dir, device, progress,
                        resize=config.resize)
    train = split_train_val(data, config.val_size, 0).train
    if config.limit is not None:
        train = train[: config.limit]
    if train.shape[0] < 2 * config.folds:
        raise AetoolError(
            f"{train.shape[0]} training images are too few for {config.folds} folds."
        )
    return train, data.checksum


def fold_indices(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) index tensors of scikit-learn's shuffled, seeded `KFold`."""
    from sklearn.model_selection import KFold

    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(torch.from_numpy(tr).long(), torch.from_numpy(va).long())
            for tr, va in splitter.split(range(n))]


# --------------------------------------------------------------------------- selection


def oscillation(curve: Sequence[float | None]) -> float:
    """Upward variation of a loss curve over its second half, relative to its mean there."""
    values = [math.inf if v is None else float(v) for v in curve]
    if not all(math.isfinite(v) for v in values):
        return math.inf
    tail = values[len(values) // 2 :]
    if len(tail) < 2:
        return 0.0
    level = statistics.fmean(tail)
    rises = sum(max(0.0, b - a) for a, b in zip(tail, tail[1:], strict=False))
    return rises / level if level > 0 else 0.0


def _final(curve: Sequence[float | None]) -> float:
    value = curve[-1] if curve else None
    return math.nan if value is None else float(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values)


def summarize_setting(
    lr: float, weight_decay: float, train_curves: list[list], val_curves: list[list]
) -> dict[str, Any]:
    """One row of the results: fold losses at the last epoch, mean ± std, gap, oscillation."""
    fold_val = [_final(c) for c in val_curves]
    fold_train = [_final(c) for c in train_curves]
    val_mean, val_std = _mean_std(fold_val)
    train_mean, _ = _mean_std(fold_train)
    return {
        "lr": lr,
        "weight_decay": weight_decay,
        "fold_val": fold_val,
        "fold_train": fold_train,
        "val_mean": val_mean,
        "val_std": val_std,
        "train_mean": train_mean,
        "gap": val_mean - train_mean,
        "oscillation": max(oscillation(c) for c in val_curves),
        "kept": False,
        "reason": None,
        "curves": {"val": val_curves, "train": train_curves},
    }


def select_best(
    settings: list[dict[str, Any]], max_loss: float, max_oscillation: float
) -> dict[str, Any] | None:
    """Mark each setting kept or dropped (with the reason) and return the best kept one:
    dropped when the final validation loss on any fold is above `max_loss` or not finite, or
    when its oscillation is above `max_oscillation`; best is the lowest mean validation loss."""
    for setting in settings:
        finals = setting["fold_val"]
        bad = [(i, v) for i, v in enumerate(finals) if not (math.isfinite(v) and v <= max_loss)]
        if bad:
            fold, value = max(bad, key=lambda iv: iv[1] if math.isfinite(iv[1]) else math.inf)
            setting["reason"] = (
                f"diverged on fold {fold + 1}" if not math.isfinite(value)
                else f"val {value:.3g} > {max_loss:g} on fold {fold + 1}"
            )
        elif not setting["oscillation"] <= max_oscillation:
            setting["reason"] = f"oscillation {setting['oscillation']:.3g} > {max_oscillation:g}"
        else:
            setting["reason"] = None
        setting["kept"] = setting["reason"] is None
    kept = [s for s in settings if s["kept"]]
    if not kept:
        return None
    best = min(kept, key=lambda s: s["val_mean"])
    return {k: best[k] for k in ("lr", "weight_decay", "val_mean", "val_std")}


# --------------------------------------------------------------------------- the search


def auto_parallel(device: torch.device, batch_size: int) -> int:
    """How many models to train together: one on a CPU (vmap gains nothing there), on a GPU
    as many as half its free memory holds (at most GPU_MAX_PARALLEL)."""
    per_model = max(1, batch_size) * BYTES_PER_IMAGE
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "mps":
        free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    else:
        return CPU_PARALLEL
    return int(max(1, min(GPU_MAX_PARALLEL, free // 2 // per_model)))


def _clean(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def _train_units(
    jobs: list[TrainJob], images: torch.Tensor, epochs: int, parallel: int,
    progress: Callable[[int], None], on_train: TrainHook | None = None,
) -> tuple[list[Curves], int]:
    """Train jobs in groups of `parallel`; halve the group after running out of GPU memory.
    Returns the curves and the group size that worked. `on_train` sees each group first."""
    curves: list[Curves] = []
    start = 0
    while start < len(jobs):
        group = jobs[start : start + parallel]
        if on_train is not None:
            on_train(group)
        try:
            curves += train_models(group, images, epochs, progress)
        except torch.OutOfMemoryError:
            if parallel == 1:
                raise AetoolError(
                    "The device ran out of memory training a single model; lower --batch-size."
                ) from None
            if images.device.type == "cuda":
                torch.cuda.empty_cache()
            parallel = max(1, parallel // 2)
            continue
        start += len(group)
    return curves, parallel


def check_search(config: SearchConfig) -> None:
    """Check a search's settings before any work: the values (`SearchConfig.validate`), the
    storage URL, the device and the precision on it (`SettingError` names the field)."""
    config.validate()
    check_storage(config.storage)
    resolve_precision(config.precision, resolve_device(config.device))


def run_search(
    config: SearchConfig,
    runs_root: Path | str | None = None,
    *,
    workers: int = 1,
    threads: int | None = None,
    data_dir: Path | str | None = None,
    on_progress: ProgressFn | None = None,
    data_progress: ProgressFn | None = None,
    on_train: TrainHook | None = None,
) -> dict[str, Any]:
    """Work through the grid with any other workers of the same study, wait until every point
    is done, then write and return `runs/search/results.json`.

    `workers` processes on this machine share the search: this one and `workers - 1` helpers
    it starts (`python -m aetool.search`, given the settings on stdin; at most what the
    machine holds, see `aetool.search.workers`), which end with it. Each uses `threads`
    PyTorch CPU threads (None: an equal share of the cores with several workers, else as
    set) for the search. Progress and `on_train` (a `TrainHook`, called with every group of
    models this worker is about to train, after its claims on their grid points held) see
    this process's work only."""
    check_search(config)
    check_workers(workers, threads)
    spec = parse_model_spec(config.model)  # spelt out in full, and checked on a dummy batch
    spec.build(config.eds[0])
    config = replace(config, model=spec.spec)
    workspace = runs.Workspace(runs_root)
    device = resolve_device(config.device)
    config = replace(config, precision=resolve_precision(config.precision, device))
    threads = threads_per_worker(workers, threads)
    with torch_threads(threads):
        helpers = start_helpers(config, workspace.root, data_dir, workers - 1, threads)
        try:
            results = _search_here(config, workspace, device, data_dir, on_progress,
                                   data_progress, on_train)
        except BaseException:
            stop_workers(helpers, stop=True)
            raise
        stop_workers(helpers)
    return results


def _search_here(config: SearchConfig, workspace: runs.Workspace, device: torch.device,
                 data_dir: Path | str | None, on_progress: ProgressFn | None,
                 data_progress: ProgressFn | None, on_train: TrainHook | None
                 ) -> dict[str, Any]:
    """This process's part of `run_search`, then the results file."""
    images, checksum = search_images(config, data_dir, device, data_progress)
    folds = fold_indices(images.shape[0], config.folds, config.seed)
    protocol = {**config.protocol(), "train_images": int(images.shape[0]),
                "dataset_sha256": checksum}
    study = open_study(config, workspace.root, protocol)
    tic = time.perf_counter()
    with study.heartbeat():
        try:
            _work_through(config, study, images, folds, device, on_progress, on_train)
        except BaseException:
            study.fail_in_flight("stopped: the worker was interrupted or failed")
            raise
    results = build_results(config, study, protocol)
    results["study"]["storage"] = hide_password(config.storage) or str(workspace.search_log)
    results["study"]["seconds"] = time.perf_counter() - tic
    # Workers finishing together take turns: the lock is held only for the write.
    with workspace.lock(SEARCH_DIR, "The search results", wait=120):
        runs.SearchResults.from_json(results).write(workspace.search_results)
    return results


# --------------------------------------------------------------------------- helper workers


def start_helpers(config: SearchConfig, runs_root: Path, data_dir: Path | str | None,
                  count: int, threads: int | None) -> list[subprocess.Popen]:
    """Start `count` more worker processes on this search's study (`python -m aetool.search`,
    the settings as JSON on stdin); each ends when this process ends, even if it is killed."""
    if count < 1:
        return []
    return start_workers([sys.executable, "-m", "aetool.search"], count,
                         helper_settings(config, runs_root, data_dir, threads))


def helper_settings(config: SearchConfig, runs_root: Path | str, data_dir: Path | str | None,
                    threads: int | None) -> str:
    """What a helper worker is told on stdin, as JSON (read by `read_helper_settings`)."""
    return json.dumps({"config": asdict(config), "runs_root": str(Path(runs_root).absolute()),
                       "data_dir": None if data_dir is None else str(Path(data_dir).absolute()),
                       "threads": threads})


def read_helper_settings(text: str
                         ) -> tuple[SearchConfig, Path, Path | None, int | None]:
    """The settings `helper_settings` wrote: the search, the workspace, the data folder and
    the threads, checked as `run_search` checks them (an AetoolError or SettingError)."""
    try:
        data = json.loads(text)
        values, threads = data["config"], data["threads"]
        unknown = sorted(set(values) - {f.name for f in fields(SearchConfig)})
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        if threads is not None and not isinstance(threads, int):
            raise ValueError(f"threads must be a whole number, got {threads!r}")
        config = SearchConfig(**values)
        root = Path(data["runs_root"])
        data_dir = None if data["data_dir"] is None else Path(data["data_dir"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AetoolError("The search worker's settings on stdin are not what run_search "
                          f"writes: {first_line(exc)}.") from None
    check_search(config)
    check_workers(1, threads)
    return config, root, data_dir, threads


def _work_through(config: SearchConfig, study: GridStudy, images: torch.Tensor,
                  folds: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  on_progress: ProgressFn | None, on_train: TrainHook | None) -> None:
    """Claim and train pending grid points, a group at a time, until none is left; then wait
    for the points other workers are training."""
    from optuna.trial import TrialState

    parallel = config.parallel if config.parallel is not None else \
        auto_parallel(device, config.batch_size)
    total = len(config.grid()) * config.folds
    units = 0.0

    def report(value: float, status: str) -> None:
        nonlocal units
        units = value
        if on_progress is not None:  # a unit is one (ED, setting, fold)
            on_progress(ProgressEvent("search", min(units, total), total, status, "models"))

    while True:
        pending, done, elsewhere = study.status()
        if not pending:
            if not elsewhere:
                report(len(done) * config.folds, "done")
                return
            report(len(done) * config.folds,
                   f"waiting for {len(elsewhere)} settings other workers train")
            time.sleep(config.poll_interval)
            continue
        ed = pending[0].ed
        chosen = [p for p in pending if p.ed == ed][: max(1, parallel // config.folds)]
        claimed = study.claim(chosen)
        if not claimed:
            continue
        status = f"ED {ed}: {len(claimed)} settings x {config.folds} folds"
        report(len(done) * config.folds, status)
        jobs = [TrainJob(config.fit_config(point, str(device)), tr, va)
                for _, point in claimed for tr, va in folds]
        curves, parallel = _train_units(
            jobs, images, config.epochs, parallel,
            lambda model_epochs, status=status: report(units + model_epochs / config.epochs,
                                                       status),
            on_train)
        for i, (trial_id, _) in enumerate(claimed):
            fold_curves = curves[i * config.folds : (i + 1) * config.folds]
            study.finish(trial_id, TrialState.COMPLETE, *_trial_result(fold_curves, device))


def _trial_result(fold_curves: list[Curves], device: torch.device
                  ) -> tuple[float, dict[str, Any]]:
    """A trial's objective (mean final validation loss, inf if any fold diverged) and the
    attributes it keeps: fold losses and curves."""
    finals = [c.val[-1] for c in fold_curves]
    value = statistics.fmean(finals) if all(map(math.isfinite, finals)) else math.inf
    return value, {
        "fold_val": _clean(finals),
        "fold_train": _clean([c.train[-1] for c in fold_curves]),
        "curves": {"val": [_clean(c.val) for c in fold_curves],
                   "train": [_clean(c.train) for c in fold_curves]},
        "seconds": sum(c.seconds for c in fold_curves),
        "device": device_description(device),
        "threads": torch.get_num_threads(),  # the worker's intra-op CPU threads
    }


def build_results(config: SearchConfig, study: GridStudy, protocol: dict[str, Any]
                  ) -> dict[str, Any]:
    """The results file's content, from the study's COMPLETE trials (see COMMON format)."""
    done = study.completed()
    eds: dict[str, Any] = {}
    missing = []
    for ed in config.search_space()["ed"]:
        settings = []
        for point in (p for p in config.grid() if p.ed == ed):
            trial = done.get(point)
            if trial is None:
                missing.append(point.params)
                continue
            curves = trial.user_attrs["curves"]
            settings.append(summarize_setting(point.lr, point.weight_decay,
                                              curves["train"], curves["val"]))
        best = select_best(settings, config.max_loss, config.max_oscillation)
        eds[str(ed)] = {"settings": settings, "best": best}
    grid = {
        "ed": protocol["ed"], "lr": protocol["lr"], "weight_decay": protocol["weight_decay"],
        "folds": config.folds, "epochs": config.epochs, "batch_size": config.batch_size,
        "seed": config.seed, "dataset": config.dataset, "val_size": config.val_size,
        "limit": config.limit, "train_images": protocol["train_images"],
        "max_loss": config.max_loss, "max_oscillation": config.max_oscillation,
        "model": config.model, "precision": config.precision,
        "oscillation": OSCILLATION_DEFINITION,
        "std": "population standard deviation over the folds",
    }
    return {
        "grid": grid,
        "eds": eds,
        "complete": not missing,
        "missing": missing,
        "study": {"name": study.name},
    }


# --------------------------------------------------------------------------- reading results


def results_path(runs_root: Path | str | None = None) -> Path:
    return runs.Workspace(runs_root).search_results


def load_results(runs_root: Path | str | None = None) -> dict[str, Any]:
    path = results_path(runs_root)
    if not path.exists():
        raise RunError(f"There are no search results in {path}; run `aetool search` first.")
    return runs.SearchResults.read(path).to_json()


def best_setting(runs_root: Path | str | None, ed: int,
                 model: str | None = None) -> dict[str, float]:
    """The lr and weight decay the last search chose for encoding dimension `ed` (and, when
    given, for the model spec `model`: a search of another architecture is refused)."""
    results = load_results(runs_root)
    path = results_path(runs_root)
    searched = (results.get("grid") or {}).get("model", "course")
    if model is not None and searched != model:
        raise RunError(f"The search in {path} trained {searched!r}, not {model!r}; run "
                       "`aetool search` with that model first.")
    entry = results["eds"].get(str(ed))
    if entry is None:
        raise RunError(
            f"The search in {path} did not cover ED {ed}; run `aetool search --ed {ed}` first."
        )
    best = entry.get("best")
    if not best:
        raise RunError(
            f"No setting for ED {ed} passed the search's selection rule in {path}; "
            "widen the grid or loosen --max-loss / --max-oscillation."
        )
    from aetool.checks import check_best

    return check_best(path, ed, best)
