"""Training one autoencoder: the epoch step, evaluation, early stopping, the loop, resume.

Settings live in `aetool.config`, run folders in `aetool.workspace` (the loop hands each finished
epoch to a `RunWriter` and never joins a path itself). The loop knows nothing about the
command line. It reads batches straight out of one
device-resident uint8 tensor (no DataLoader, no per-sample Python) and reports each finished
epoch through a callback.
"""

from __future__ import annotations

import copy
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from aetool import __version__
from aetool import workspace as runs
from aetool.config import (  # noqa: F401 (re-exported: settings used to live here)
    DEFAULT_PRESET,
    PRESETS,
    SCHEDULES,
    FitConfig,
    learning_rate,
    preset_config,
    settings_differ,
)
from aetool.data import (
    ProgressFn,
    Split,
    check_dataset,
    check_unchanged,
    load_dataset,
    split_train_val,
)
from aetool.devices import device_description, resolve_device, synchronize
from aetool.errors import AetoolError, RunError, SettingError
from aetool.models import ModelSpec, count_parameters, parse_model_spec
from aetool.train import budget
from aetool.train.fast import make_train_epoch, resolve_mode, resolve_precision
from aetool.train.step import (  # noqa: F401 (re-exported: they used to live here)
    BackwardFn,
    NoiseFn,
    evaluate,
    make_generator,
    mean_image_mse,
    train_epoch,
)

# --------------------------------------------------------------------------- building blocks


def should_stop(val_losses: list[float], patience: int, tolerance: float) -> bool:
    """The report's rule: stop once the validation loss moved less than `tolerance` (either
    way) over the last `patience` epochs. Catches both a plateau and a slow drift."""
    if patience <= 0 or len(val_losses) <= patience:
        return False
    return abs(val_losses[-1] - val_losses[-1 - patience]) < tolerance


# --------------------------------------------------------------------------- the fit


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    run_dir: Path | None
    config: FitConfig
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    test_mse: float
    stopped_early: bool
    seconds: float
    device: str
    metrics: dict[str, Any] = field(default_factory=dict)


EpochCallback = Callable[[EpochRecord, FitConfig], None]


def _resolve_noise(spec: str | None) -> NoiseFn | None:
    if not spec:
        return None
    from aetool.noises import build_noise  # imported lazily: plugins load only when needed

    return build_noise(spec)


def _environment(device: torch.device, train_mode: str, precision: str) -> dict[str, Any]:
    return {
        "precision": precision,  # the training's (evaluation is always float32)
        "aetool": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_description(device),
        "train_mode": train_mode,
        "threads": torch.get_num_threads(),  # intra-op CPU threads (--threads)
    }


class _InMemory:
    """Where a fit without a run folder keeps its best weights: the `RunWriter` interface,
    in memory."""

    def __init__(self) -> None:
        self._best: dict[str, torch.Tensor] | None = None

    def save_epoch(self, config: FitConfig, state: dict[str, Any], history: list[dict],
                   best_weights: dict[str, torch.Tensor] | None) -> None:
        if best_weights is not None:
            self._best = {k: v.detach().clone() for k, v in best_weights.items()}

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        return self._best

    def finish(self, metrics: dict[str, Any]) -> None:
        pass


@dataclass
class _Training:
    """What one fit trains: the model, its optimiser, its generators and its progress."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    noise_generator: torch.Generator
    history: list[EpochRecord] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0
    elapsed: float = 0.0
    mode: str = "eager"  # how the epochs ran (aetool.train.fast), for the metrics
    dataset_sha256: str | None = None  # of the data it trains on, kept for --resume to check

    def state(self) -> dict[str, Any]:
        """The training state `--resume` needs, as tensors and plain values only; the settings
        are not in it (config.json is their one record)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "noise_generator": self.noise_generator.get_state().cpu(),
            "history": [asdict(r) for r in self.history],
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "seconds": self.elapsed,
            "dataset_sha256": self.dataset_sha256,
        }

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a saved state; anything in it that does not fit (types, shapes,
        values that are not finite) is a `RunError` naming the file."""
        from aetool.models import check_finite
        from aetool.train.resume import check_optimizer, check_state

        state = check_state(state, source)
        fresh = [dict(group) for group in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.shuffle.set_state(state["shuffle"])
            self.noise_generator.set_state(state["noise_generator"])
        except Exception:  # noqa: BLE001 - PyTorch says "does not fit" in many ways
            raise RunError(f"{source} does not match the model and settings in its run's "
                           f"{runs.CONFIG}; it cannot be resumed.") from None
        check_finite(self.model.state_dict(), source)
        check_optimizer(self.optimizer, fresh, source)
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.elapsed = state["seconds"]


def provenance(config: FitConfig, spec: ModelSpec | None = None,
               noise: Any = None) -> dict[str, Any]:
    """What provided the run's model, data set and noise (package and version, see
    `plugins.provided_by`) and aetool's version: recorded in config.json and metrics.json.
    `spec` and `noise` (a `ConfiguredNoise`) are the parsed model and noise, when at hand."""
    from aetool import plugins
    from aetool.data.registry import registered_datasets
    from aetool.noises import ConfiguredNoise, parse_noise_spec

    spec = spec if spec is not None else parse_model_spec(config.model)
    record: dict[str, Any] = {"aetool": __version__,
                              "model": plugins.provided_by(spec.model.plugin)}
    datasets = registered_datasets()
    record["dataset"] = (plugins.provided_by(datasets[config.dataset].plugin)
                         if config.dataset in datasets else {"path": config.dataset})
    if config.noise:
        noise = noise if isinstance(noise, ConfiguredNoise) else parse_noise_spec(config.noise)[0]
        record["noise"] = plugins.provided_by(noise.noise.plugin)
    return record


@dataclass
class FitPlan:
    """A fit's specs resolved once, at its entry (`plan_fit`), and passed down: the settings
    as config.json records them (the model spelt out in full, the data set a registered name or
    an absolute path, the precision concrete), the parsed model, the device, the noise, the
    provenance, and the run's network: built once (after `torch.manual_seed(config.seed)`) and
    checked against the contract (`models.check_contract`) before any data is read."""

    config: FitConfig
    spec: ModelSpec
    device: torch.device
    provenance: dict[str, Any]
    noise: NoiseFn | None = None
    network: torch.nn.Module | None = None  # until the fit that trains it takes it
    dataset_resolved: bool = True  # False: the fit was given its data (`split`)

    def take_network(self) -> torch.nn.Module:
        """The run's initial network, once; a plan used again builds the same one afresh."""
        network, self.network = self.network, None
        if network is None:
            torch.manual_seed(self.config.seed)
            network = self.spec.build(self.config.ed)
        return network


def plan_fit(config: FitConfig, *, noise: NoiseFn | None = None,
             load_data: bool = True) -> FitPlan:
    """Check every setting and resolve each spec of `config` once (`SettingError` for the
    first that cannot work, before anything is read or written): the model (parsed, its
    network built and checked), the device, `auto` precision, the noise (unless `noise` is
    given), the data set (unless `load_data` is False: the caller has the data) and the
    provenance."""
    config.validate()
    spec = parse_model_spec(config.model)
    torch.manual_seed(config.seed)  # the run's initial weights
    network = spec.build(config.ed)
    device = resolve_device(config.device)
    config = replace(config, model=spec.spec,
                     precision=resolve_precision(config.precision, device))
    configured = _resolve_noise(config.noise) if noise is None else None
    if load_data:
        config = replace(config, dataset=check_dataset(config.dataset, config.resize))
    return FitPlan(config, spec, device, provenance(config, spec, configured),
                   noise if noise is not None else configured, network, load_data)


def _start(config: FitConfig, network: torch.nn.Module, device: torch.device) -> _Training:
    model = network.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return _Training(model, optimizer, torch.Generator().manual_seed(config.seed),
                     make_generator(device, config.seed + 1))


def _load_split(plan: FitPlan, split: Split | None, data_dir: Path | str | None,
                progress: ProgressFn | None) -> tuple[Split, str | None]:
    config, device = plan.config, plan.device
    if split is not None:  # data already in memory (tests pass small slices)
        return Split(*(None if t is None else t.to(device) for t in (
            split.train, split.val, split.test,
            split.train_labels, split.val_labels, split.test_labels,
        ))), None
    data = load_dataset(config.dataset, data_dir, device, progress, resize=config.resize,
                        resolved=plan.dataset_resolved)
    return split_train_val(data, config.val_size, config.split_seed), data.checksum


COLLAPSE_STEPS = 1000  # a model no better than the mean image after this many steps is stuck


def collapse_check_epoch(train_images: int, batch_size: int) -> int:
    """The epoch after which a run is checked for collapse: the first to reach
    `COLLAPSE_STEPS` optimizer steps, and at least the second."""
    steps_per_epoch = max(math.ceil(train_images / batch_size), 1)
    return max(2, math.ceil(COLLAPSE_STEPS / steps_per_epoch))


def _warn_if_collapsed(epoch: int, val_loss: float, val_images: torch.Tensor) -> None:
    """Warn when the validation loss is no better than the mean image's: such a run rarely
    recovers, and a long one would spend hours there."""
    baseline = mean_image_mse(val_images)
    if baseline > 0 and val_loss >= 0.99 * baseline:
        warnings.warn(
            f"After {epoch} epochs the validation loss ({val_loss:.5f}) is no better than the "
            f"mean image's ({baseline:.5f}): the model reconstructs every image alike and has "
            "likely collapsed. Stop it and start again with another seed or a lower learning "
            "rate.", runs.RunWarning, stacklevel=2)


def _run_epochs(config: FitConfig, t: _Training, split: Split, writer: Any, noise: NoiseFn | None,
                device: torch.device, mode: str, on_epoch: EpochCallback | None) -> bool:
    """Train from where `t` stands to the end or an early stop; returns whether it stopped
    early. Each finished epoch goes to `writer` before `on_epoch` hears of it."""
    run_epoch = make_train_epoch(t.model, t.optimizer, device, mode, config.precision)
    t.mode = run_epoch.mode
    check_epoch = collapse_check_epoch(split.train.shape[0], config.batch_size)
    stopped_early = should_stop([r.val_loss for r in t.history], config.patience, config.tolerance)
    for epoch in range(len(t.history), config.max_epochs):
        if stopped_early:
            break
        lr = learning_rate(config, epoch)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        synchronize(device)
        tic = time.perf_counter()
        train_loss = run_epoch(t.model, t.optimizer, split.train, config.batch_size, t.shuffle,
                               noise, t.noise_generator)
        val_loss = evaluate(t.model, split.val)
        synchronize(device)
        seconds = time.perf_counter() - tic
        if not math.isfinite(train_loss):
            raise AetoolError(
                f"Training diverged at epoch {epoch + 1} (loss {train_loss}); lower the "
                "learning rate."
            )
        t.elapsed += seconds
        if epoch + 1 == check_epoch:
            _warn_if_collapsed(epoch + 1, val_loss, split.val)
        record = EpochRecord(epoch + 1, train_loss, val_loss, lr, seconds)
        t.history.append(record)
        improved = val_loss < t.best_val
        if improved:
            t.best_val, t.best_epoch = val_loss, epoch + 1
        stopped_early = should_stop([r.val_loss for r in t.history], config.patience,
                                    config.tolerance)
        writer.save_epoch(config, t.state(), [asdict(r) for r in t.history],
                          t.model.state_dict() if improved else None)
        if on_epoch is not None:
            on_epoch(record, config)
    return stopped_early


def _plan_time_budget(config: FitConfig, network: torch.nn.Module, split: Split,
                      device: torch.device, mode: str,
                      noise: NoiseFn | None) -> tuple[FitConfig, dict[str, Any]]:
    """The settings with `max_epochs` chosen so the whole run fits `config.time_budget`
    (`aetool.train.budget`), timed on a throwaway copy of the run's `network` that leaves
    the random number generators as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _timed_plan(config, _start(replace(config, seed=config.seed + 1),
                                          copy.deepcopy(network), device),
                           split, device, mode, noise)


def _timed_plan(config: FitConfig, probe: _Training, split: Split, device: torch.device,
                mode: str, noise: NoiseFn | None) -> tuple[FitConfig, dict[str, Any]]:
    run_epoch = make_train_epoch(probe.model, probe.optimizer, device, mode, config.precision)
    images = split.train.shape[0]
    batch = min(config.batch_size, images)

    def train_batches(k: int) -> int:
        run_epoch(probe.model, probe.optimizer, split.train[: k * batch], batch, probe.shuffle,
                  noise, probe.noise_generator)
        synchronize(device)
        return math.ceil(min(k * batch, images) / batch)

    def evaluate_val() -> None:
        evaluate(probe.model, split.val)
        synchronize(device)

    plan = budget.plan_epochs(
        float(config.time_budget or 0), train_batches, evaluate_val,
        batches_per_epoch=math.ceil(images / config.batch_size),
        test_ratio=split.test.shape[0] / max(split.val.shape[0], 1), cap=config.max_epochs)
    return replace(config, max_epochs=plan.max_epochs), asdict(plan)


def _train(fit_plan: FitPlan, writer: Any, state: dict[str, Any] | None, source: Path | None,
           split: Split, checksum: str | None, mode: str,
           on_epoch: EpochCallback | None) -> FitResult:
    config, device, noise = fit_plan.config, fit_plan.device, fit_plan.noise
    network, plan = fit_plan.take_network(), None
    if state is None and config.time_budget is not None:  # a resumed run keeps its length
        config, plan = _plan_time_budget(config, network, split, device, mode, noise)
    t = _start(config, network, device)
    if state is not None:
        t.restore(state, source or Path(runs.STATE))
        check_unchanged(config.dataset, checksum, state.get("dataset_sha256"),
                        f"run {(source or Path(runs.STATE)).parent.name!r}")
    t.dataset_sha256 = checksum
    stopped_early = _run_epochs(config, t, split, writer, noise, device, mode, on_epoch)
    # Final figures come from the best weights, on the untouched test set.
    best = writer.best_weights()
    if best is not None:
        try:
            t.model.load_state_dict(best)
        except Exception:  # noqa: BLE001 - a model.pt damaged while the run was stopped
            raise RunError(f"The best weights of {source.parent if source else 'the run'} "
                           "(model.pt) do not fit its model; the run is damaged.") from None
    test_mse = evaluate(t.model, split.test)
    metrics = {
        "test_mse": test_mse,
        "best_epoch": t.best_epoch,
        "best_val_loss": t.best_val,
        "final_train_loss": t.history[-1].train_loss if t.history else None,
        "epochs": len(t.history),
        "stopped_early": stopped_early,
        "train_seconds": t.elapsed,
        "seconds_per_epoch": t.elapsed / max(len(t.history), 1),
        "train_images": int(split.train.shape[0]),
        "val_images": int(split.val.shape[0]),
        "test_images": int(split.test.shape[0]),
        "dataset_sha256": checksum,
        "parameters": count_parameters(t.model),
        "environment": _environment(device, t.mode, config.precision),
        "provenance": fit_plan.provenance,
        "time_budget": plan or ({"budget": config.time_budget} if config.time_budget else None),
    }
    writer.finish(metrics)
    return FitResult(None, config, t.history, t.best_epoch, t.best_val, test_mse, stopped_early,
                     t.elapsed, str(device), metrics)


def fit(
    config: FitConfig | FitPlan,
    run_dir: Path | str | None = None,
    *,
    split: Split | None = None,
    data_dir: Path | str | None = None,
    existing: str = "refuse",
    on_epoch: EpochCallback | None = None,
    noise: NoiseFn | None = None,
    data_progress: ProgressFn | None = None,
    mode: str = "auto",
    resume: bool | None = None,
    replace: bool | None = None,
) -> FitResult:
    """Train one autoencoder with early stopping and write its run folder.

    `config` is checked and resolved once (`plan_fit`; or pass a `FitPlan`). `split` may be
    passed to train on data already in memory (tests pass small slices); otherwise the
    configured data set is loaded onto the device. `existing` says what to do with a run
    already in `run_dir`: `refuse` it, `resume` it (the unfinished run continues from
    `state.pt` to the same result an uninterrupted run reaches), `replace` it (once the new
    run has saved its first epoch; until then it stays as it was), or `continue` (return a
    finished run as it is, resume an unfinished one, start a new one where there is none).
    `resume=True` and `replace=True` are the deprecated spellings of the last two. An interrupt
    (KeyboardInterrupt) leaves the last finished epoch on disk; a start that fails before its
    first epoch leaves nothing. `mode` picks how each epoch runs (`aetool.train.fast.MODES`:
    auto, graph, compile, tuned, eager); all give the same losses within float tolerance, and
    `eager` is the plain loop to debug. Every setting is checked before anything is read or
    written (`SettingError`).
    """
    existing = _existing(existing, resume, replace)
    if run_dir is not None and existing == "continue":
        if (Path(run_dir) / runs.METRICS).exists():
            return finished_result(run_dir)
        existing = "resume" if (Path(run_dir) / runs.STATE).exists() else "refuse"
    plan = config if isinstance(config, FitPlan) else \
        _plan_for(config, run_dir, existing, noise=noise, load_data=split is None)
    mode = resolve_mode(mode, plan.device)
    if run_dir is None:
        data, checksum = _load_split(plan, split, data_dir, data_progress)
        return _train(plan, _InMemory(), None, None, data, checksum, mode, on_epoch)
    run_dir = Path(run_dir)
    with runs.run_lock(run_dir):
        writer = runs.RunWriter(run_dir, resume=existing == "resume",
                                replace=existing == "replace", provenance=plan.provenance)
        state = writer.check()  # refuse early, before any data is loaded
        if state is not None:
            _check_resumable(run_dir, writer.recorded or {}, plan)
        try:
            data, checksum = _load_split(plan, split, data_dir, data_progress)
            result = _train(plan, writer, state, run_dir / runs.STATE, data, checksum, mode,
                            on_epoch)
        finally:
            writer.abandon()
    result.run_dir = run_dir
    return result


EXISTING = ("refuse", "resume", "replace", "continue")  # what fit does with a run there


def _existing(existing: str, resume: bool | None, replace: bool | None) -> str:
    """`existing` checked, with the deprecated `resume=` and `replace=` of `fit` turned into
    it (each with a DeprecationWarning)."""
    for keyword, value in (("resume", resume), ("replace", replace)):
        if value is not None:
            warnings.warn(f"fit's {keyword}= is deprecated and goes in a later release; write "
                          f"existing={keyword!r} instead.", DeprecationWarning, stacklevel=3)
    if resume and replace:
        raise SettingError("replace", "resume and replace exclude each other.")
    if (resume or replace) and existing != "refuse":
        raise SettingError("existing", f"existing={existing!r} and the deprecated "
                           f"{'resume' if resume else 'replace'}=True exclude each other.")
    existing = "resume" if resume else "replace" if replace else existing
    if existing not in EXISTING:
        raise SettingError("existing", f"existing must be one of {', '.join(EXISTING)}, "
                           f"got {existing!r}.")
    return existing


def _plan_for(config: FitConfig, run_dir: Path | str | None, existing: str,
              **options: Any) -> FitPlan:
    """`plan_fit(config, **options)`; when resuming, a model or data set that the run's
    config.json names and that cannot be had here is a `RunError` naming that file."""
    try:
        return plan_fit(config, **options)
    except SettingError as exc:
        what = {"model": "model", "dataset": "data set", "resize": "data set"}.get(exc.field)
        record = Path(run_dir) / runs.CONFIG if run_dir is not None else None
        if what is None or existing != "resume" or record is None or not record.is_file():
            raise
        value = config.model if what == "model" else config.dataset
        saved = runs.load_json(record)
        if not isinstance(saved, dict) or \
                saved.get("model" if what == "model" else "dataset") != value:
            raise
        raise runs.Run(Path(run_dir), saved).unavailable(what, value, exc) from None


def fit_run(
    config: FitConfig | FitPlan,
    runs_root: Path | str | None = None,
    name: str | None = None,
    *,
    existing: str = "refuse",
    **options: Any,
) -> FitResult:
    """Fit run `name` (default `workspace.default_run_name`: `ed{ED}`; one plain folder name)
    in the workspace `runs_root` (default `$AETOOL_RUNS` or `./runs`); `existing` and the
    other `options` go to `fit`.

    `existing` says what to do with a run already in that folder: `refuse` it (start a new run
    only where there is none), `resume` it (the unfinished run, with the same settings),
    `replace` it (once the new run has trained its first epoch), or `continue` (return a
    finished run as it is, resume an unfinished one, start a new one where there is none)."""
    settings = config.config if isinstance(config, FitPlan) else config
    path = runs.Workspace(runs_root).run_dir(
        name if name is not None else runs.default_run_name(settings))
    return fit(config, path, existing=existing, **options)


def finished_result(path: Path | str) -> FitResult:
    """The `FitResult` of a finished run folder, read from its files."""
    run = runs.open_run(path)
    if not run.finished:
        raise RunError(f"{run.path} is not finished.")
    m = run.metrics
    history = [EpochRecord(**{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "lr",
                                                    "seconds")}) for r in run.history()]
    device = (m.get("environment") or {}).get("device", "")
    return FitResult(run.path, run.settings, history, m.get("best_epoch", 0),
                     m.get("best_val_loss", math.nan), m["test_mse"],
                     bool(m.get("stopped_early")), m.get("train_seconds", 0.0), device, m)


def run_config(preset: str | None = DEFAULT_PRESET, *, runs_root: Path | str | None = None,
               from_search: bool = False, **overrides: Any) -> FitConfig:
    """The settings of a new run: the preset's, then (with `from_search`) the learning rate and
    weight decay `aetool search` chose for this ED in the workspace, then every override that
    is not None; the model spelt out with every parameter."""
    if from_search:
        from aetool.search.grid import best_setting  # optuna loads only when needed

        model = parse_model_spec(overrides.get("model")).spec
        ed = overrides.get("ed")  # None: the default; 0 is a (bad) value, not "not given"
        best = best_setting(runs_root, FitConfig.ed if ed is None else ed, model)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        overrides = {"lr": best["lr"], "weight_decay": best["weight_decay"], **chosen,
                     "model": model}
        return preset_config(preset, **overrides)
    config = preset_config(preset, **overrides)
    return replace(config, model=parse_model_spec(config.model).spec)


def _saved_settings(run_dir: Path, recorded: Any = None) -> FitConfig:
    """The settings of the run in `run_dir` from its config.json (the one record of them; read
    from disk unless `recorded` holds what it says); a `RunError` naming it when it is bad."""
    if recorded is None:
        recorded = runs.load_json(run_dir / runs.CONFIG)
    try:
        return FitConfig.from_dict(recorded)
    except SettingError as exc:
        raise RunError(f"{run_dir / runs.CONFIG}: {exc}") from None


def _check_same_settings(run_dir: Path, saved: FitConfig, config: FitConfig) -> None:
    if saved.precision != config.precision:
        raise RunError(
            f"Cannot resume {run_dir} in precision {config.precision}: it was trained in "
            f"{saved.precision}; resume in that precision (or without --precision)."
        )
    differ = settings_differ(saved, config)
    if differ:
        raise RunError(
            f"Cannot resume {run_dir}: its settings differ in {', '.join(differ)}; "
            "resume with the same settings (or none: they are read from the run)."
        )


def _check_resumable(run_dir: Path, recorded: dict[str, Any], plan: FitPlan) -> None:
    """Refuse to resume with settings other than config.json's (`recorded`), or when the best
    weights saved so far do not fit the plan's network (checked without building another)."""
    saved, config = _saved_settings(run_dir, recorded), plan.config
    if saved.schedule == "cosine" and saved.max_epochs != config.max_epochs:
        raise RunError(
            f"Cannot resume {run_dir} with max_epochs {config.max_epochs}: its cosine schedule "
            f"decays over the {saved.max_epochs} epochs it was started with; resume without "
            "a new max_epochs."
        )
    _check_same_settings(run_dir, saved, config)
    if (run_dir / runs.MODEL).exists() and plan.network is not None:
        from aetool.models import check_finite, load_state_dict_file, state_mismatch

        best = load_state_dict_file(run_dir / runs.MODEL)  # read again at the end
        problem = state_mismatch(best, dict(plan.network.state_dict()))
        if problem is not None:
            raise AetoolError(f"{run_dir / runs.MODEL} does not hold the weights of a "
                              f"{config.model!r} model with encoding dimension {config.ed} "
                              f"({problem}).")
        check_finite(best, run_dir / runs.MODEL)


def resume_config(run_dir: Path | str, **overrides: Any) -> FitConfig:
    """The settings an unfinished run was started with, read from its config.json (optionally
    with a new max_epochs; other overrides must equal them). Whether its model and data set can
    be had here is checked once, by the fit."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG).exists():
        raise RunError(f"{run_dir} has no {runs.CONFIG}; there is nothing to resume.")
    saved = _saved_settings(run_dir)
    config = replace(saved, **{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    _check_same_settings(run_dir, saved, config)
    return config
