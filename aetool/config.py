"""Every setting of aetool, declared once: the shared parts, `FitConfig`, `SearchConfig`,
`StudySettings`, the named presets and the learning-rate schedule.

The settings that several commands share (the seed; the data set, its resizing and validation
images; the model, its precision and device; the search grid) are declared once, each part
with its checks, and `FitConfig`, `SearchConfig` and `StudySettings` are built from them.
`FitConfig()` is the default preset (`best`). A `FitConfig` is saved as each run's
`config.json` and read back with `FitConfig.from_dict`, which checks every value's type and
range, so a hand-edited or damaged file gets one sentence instead of a traceback; a key the
file lacks takes the value older aetool versions trained with (`SAVED_DEFAULTS`).

This module checks values on their own; what needs the rest of aetool (the data set on disk,
the device on this machine, the model's contract, the storage URL, noises and projections) is
checked where the settings are used: `run_search` (`aetool.search.grid.check_search`) and
`run_study` (`aetool.experiment.check_study`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from aetool.errors import SettingError
from aetool.train.fast.precision import DEFAULT_PRECISION, PRECISIONS

SCHEDULES = ("constant", "cosine")
# Seeds run from 0 to 2**32 - 1 in every command: numpy and scikit-learn (the search's folds,
# embed's samples and t-SNE) take no others, and one range keeps a study's seed valid for all.
SEED_MAX = 2**32 - 1
SEED_RULE = f"a whole number from 0 to {SEED_MAX} (2**32 - 1)"
DEVICE_RULE = "be auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Named starting points. `report` is the seed report's final training, exactly; `best` is
# aetool's default (DEFAULT_PRESET), and FitConfig's field defaults are its values.
PRESETS: dict[str, dict[str, Any]] = {
    "report": dict(
        lr=1e-2, weight_decay=1e-5, batch_size=1000, max_epochs=2000,
        schedule="constant", warmup_epochs=0, patience=100, tolerance=1e-4,
    ),
    # Meant to beat the report's test MSE by 10% at every ED (check: benchmarks/accuracy.py;
    # figures in the README): many small steps, a short warm-up, cosine decay to 0 and no
    # early stopping (the gains come late in the decay; the best-validation epoch is kept).
    # At 20 epochs batch 128 beat 256 (0.02626 vs 0.02689, ED 4), and 256 beat 1000; lr 1e-2
    # and wd 1e-5 beat 5e-3 and 3e-5 (and wd 0); BCE as the training loss did worse.
    "best": dict(
        lr=1e-2, weight_decay=1e-5, batch_size=128, max_epochs=1000,
        schedule="cosine", warmup_epochs=3, patience=0, tolerance=1e-4,
    ),
}

DEFAULT_PRESET = "best"  # what `aetool fit` and `aetool study` start from, and FitConfig()
_DEFAULT = PRESETS[DEFAULT_PRESET]

# What a config.json without a key was trained with: the field defaults of every aetool
# before FitConfig() became the default preset, i.e. the report's training, float32 (before
# --precision) and preset `report`. A saved file is read with these, never with today's
# defaults, so a run made by any earlier version resumes and reports as it was trained.
SAVED_DEFAULTS: dict[str, Any] = dict(PRESETS["report"], preset="report", precision="32")

# The search grid: the report's EDs, learning rates and weight decays.
DEFAULT_EDS = (4, 8, 16, 32)
DEFAULT_LRS = (1e-2, 1e-3, 1e-4)
DEFAULT_WEIGHT_DECAYS = (1e-3, 1e-4, 1e-5)
# The search trains at the batch size the report searched at (its stated value; its code used
# 500), not at fit's default (128): the search's results stay comparable with the report's,
# and every search study keeps the name its settings gave it.
SEARCH_BATCH_SIZE = PRESETS["report"]["batch_size"]

# (field, whether its rule holds, the sentence that says what is wrong)
Check = tuple[str, bool, str]
S = TypeVar("S", bound="Settings")


class Settings:
    """The base of every settings class: `validate` runs the `checks` of every part."""

    def checks(self) -> list[Check]:
        """This part's rules; each part adds its own to those of the parts it builds on."""
        return []

    def must(self, name: str, rule: str) -> str:
        """The sentence for a broken rule: "seed must be ..., got -1."."""
        return f"{name} must {rule}, got {getattr(self, name)!r}."

    def validate(self) -> None:
        """Check every value; a `SettingError` names the first bad field."""
        for name, ok, message in self.checks():
            if not ok:
                raise SettingError(name, message)

    @classmethod
    def given(cls: type[S], **values: Any) -> S:
        """These settings with every value that is not None on top of the defaults (a
        command's options that were not given are None: the library fills them)."""
        return cls(**{k: v for k, v in values.items() if v is not None})


@dataclass
class SeedSettings(Settings):
    """The seed, by the rule every command shares."""

    seed: int = 0  # seed of initialisation, shuffling, noise and the search's folds

    def checks(self) -> list[Check]:
        return [*super().checks(),
                ("seed", 0 <= self.seed <= SEED_MAX, self.must("seed", f"be {SEED_RULE}"))]


@dataclass
class DataSettings(Settings):
    """The data set and how much of it validates."""

    dataset: str = "mnist"  # a registered data set, or the resolved path of one on disk
    resize: bool = False  # resize an image folder's images to 28x28 (else refused)
    val_size: int | None = None  # validation images; None: 10,000 or a sixth of fewer images

    def checks(self) -> list[Check]:
        return [*super().checks(),
                ("dataset", bool(self.dataset.strip()), self.must(
                    "dataset", "name a registered data set or the path of one")),
                ("val_size", self.val_size is None or self.val_size >= 1,
                 self.must("val_size", "be at least 1"))]


@dataclass
class ModelSettings(Settings):
    """What is trained, in which precision, on which device."""

    model: str = "course"  # the architecture, a spec like wide:width=16 (see `aetool models`)
    precision: str = DEFAULT_PRECISION  # 32 | bf16-mixed | 16-mixed (CUDA) | auto
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

    def checks(self) -> list[Check]:
        return [*super().checks(),
                ("model", bool(self.model.strip()),
                 self.must("model", "name a model (NAME or NAME:param=value,...)")),
                ("precision", self.precision in PRECISIONS,
                 self.must("precision", f"be one of {', '.join(PRECISIONS)}")),
                ("device", bool(_DEVICE.fullmatch(self.device)), self.must("device", DEVICE_RULE))]


@dataclass
class GridSettings(Settings):
    """The search grid, its cross-validation and its selection bound."""

    eds: list[int] = field(default_factory=lambda: list(DEFAULT_EDS))
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    weight_decays: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    folds: int = 3  # k of the k-fold cross-validation
    max_loss: float = 0.1  # drop a setting whose final val loss exceeds this on any fold

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            ("eds", bool(self.eds), "At least one encoding dimension (eds) is needed."),
            ("lrs", bool(self.lrs), "The grid needs at least one learning rate (lrs)."),
            ("weight_decays", bool(self.weight_decays),
             "The grid needs at least one weight decay (weight_decays)."),
            ("eds", all(e >= 1 for e in self.eds), "Every one of eds must be at least 1."),
            ("lrs", all(v > 0 and math.isfinite(v) for v in self.lrs),
             "Every one of lrs must be positive."),
            ("weight_decays", all(v >= 0 and math.isfinite(v) for v in self.weight_decays),
             "Every one of weight_decays must be zero or more."),
            ("folds", self.folds >= 2, f"Folds must be at least 2, got {self.folds}."),
            ("max_loss", self.max_loss > 0, f"Max_loss must be positive, got {self.max_loss}."),
        ]


@dataclass
class FitConfig(ModelSettings, DataSettings, SeedSettings):
    """Everything that decides how a model is trained. Saved as `config.json` in each run.
    The defaults are the default preset's (`best`)."""

    ed: int = 4  # encoding dimension (size of the latent code)
    lr: float = _DEFAULT["lr"]  # Adam's learning rate (the peak, when a schedule is used)
    weight_decay: float = _DEFAULT["weight_decay"]  # Adam's L2 penalty
    batch_size: int = _DEFAULT["batch_size"]  # images per optimiser step
    max_epochs: int = _DEFAULT["max_epochs"]  # upper bound on epochs
    schedule: str = _DEFAULT["schedule"]  # constant | cosine (to 0 at max_epochs)
    warmup_epochs: int = _DEFAULT["warmup_epochs"]  # linear warm-up over the first N epochs
    patience: int = _DEFAULT["patience"]  # early-stopping window in epochs; 0: off
    tolerance: float = _DEFAULT["tolerance"]  # stop once val loss moved less over the window
    split_seed: int = 0  # seed of the train/validation split
    noise: str | None = None  # train a denoising autoencoder on this noise (NAME:param=value)
    preset: str = DEFAULT_PRESET  # the preset the other values started from
    time_budget: float | None = None  # seconds (--time): max_epochs was chosen to fit them

    def validate(self) -> None:
        """Check every value's type and range; a `SettingError` names the first bad field."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        super().validate()

    def checks(self) -> list[Check]:
        rules = [
            ("ed", self.ed >= 1, "be at least 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "be positive"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, "be zero or more"),
            ("batch_size", self.batch_size >= 1, "be at least 1"),
            ("max_epochs", self.max_epochs >= 1, "be at least 1"),
            ("patience", self.patience >= 0, "be zero or more"),
            ("tolerance", 0 <= self.tolerance < math.inf, "be zero or more"),
            ("warmup_epochs", self.warmup_epochs >= 0, "be zero or more"),
            ("noise", self.noise is None or bool(self.noise.strip()),
             "name a noise (NAME or NAME:param=value,...), or be null for none"),
            ("schedule", self.schedule in SCHEDULES, f"be one of {', '.join(SCHEDULES)}"),
            ("time_budget", self.time_budget is None
             or (self.time_budget > 0 and math.isfinite(self.time_budget)), "be positive"),
        ]
        return [*super().checks(), *((n, ok, self.must(n, rule)) for n, ok, rule in rules)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitConfig:
        """Settings read back from a `config.json`: unknown keys are ignored, missing ones take
        the values older aetool versions trained with (`SAVED_DEFAULTS`), and every value is
        checked (`SettingError` names the first bad one)."""
        if not isinstance(values, dict):
            raise SettingError("config", f"settings must be a JSON object, got {values!r}.")
        known = {f.name for f in fields(cls)}
        config = cls(**{**SAVED_DEFAULTS, **{k: v for k, v in values.items() if k in known}})
        config.validate()
        return config


def _resolved_types() -> dict[str, Any]:
    hints = typing.get_type_hints(FitConfig)
    return {f.name: hints[f.name] for f in fields(FitConfig)}


def _check_type(name: str, value: Any, expected: Any) -> None:
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is not float and kind is not type(None) and type(value) is kind:
            return
    words = {int: "a whole number", float: "a number", str: "a string", type(None): "null",
             bool: "true or false"}
    wanted = " or ".join(words[k] for k in allowed)
    raise SettingError(name, f"{name} must be {wanted}, got {value!r}.")


_FIELD_TYPES = _resolved_types()


def preset_config(preset: str | None = DEFAULT_PRESET, **overrides: Any) -> FitConfig:
    """A `FitConfig` from a named preset (None: the default one), with explicit values (those
    not None) on top."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PRESETS:
        raise SettingError("preset", f"Unknown preset {preset!r}; choose one of: "
                           f"{', '.join(PRESETS)}.")
    values = dict(PRESETS[preset], preset=preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = FitConfig(**values)
    config.validate()
    return config


def settings_differ(saved: FitConfig, config: FitConfig,
                    ignore: tuple[str, ...] = ("max_epochs", "device")) -> list[str]:
    """The fields whose values differ between two settings, except those in `ignore`."""
    return [f.name for f in fields(FitConfig)
            if f.name not in ignore and getattr(saved, f.name) != getattr(config, f.name)]


def learning_rate(config: FitConfig, epoch: int) -> float:
    """The learning rate for 0-based `epoch` under the configured schedule and warm-up."""
    lr = config.lr
    if config.schedule == "cosine":
        lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.max_epochs))
    if epoch < config.warmup_epochs:
        lr *= (epoch + 1) / config.warmup_epochs
    return lr


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class GridPoint:
    """One point of the search grid."""

    ed: int
    lr: float
    weight_decay: float

    @property
    def params(self) -> dict[str, Any]:
        return {"ed": self.ed, "lr": self.lr, "weight_decay": self.weight_decay}

    def __str__(self) -> str:
        return f"ED {self.ed}, lr {self.lr:g}, wd {self.weight_decay:g}"


@dataclass
class SearchConfig(ModelSettings, DataSettings, SeedSettings, GridSettings):
    """Everything that decides a search (`aetool.search.grid.run_search`). What decides its
    results is `protocol()`; the storage URL is checked by `run_search`."""

    epochs: int = 20  # epochs per (setting, fold)
    batch_size: int = SEARCH_BATCH_SIZE  # the report's search batch size (see SEARCH_BATCH_SIZE)
    limit: int | None = None  # use only the first N training images (tests, demos)
    max_oscillation: float = 0.2  # drop a setting whose oscillation exceeds this
    parallel: int | None = None  # models trained together; None: sized for the device
    storage: str | None = None  # any Optuna storage URL or a journal file; None: the workspace's
    study_name: str | None = None  # None: derived from the settings above
    heartbeat_interval: float = 20.0  # seconds between heartbeats of a worker's trials
    grace_period: float = 120.0  # a trial without a heartbeat for this long is orphaned
    poll_interval: float = 2.0  # seconds between looks at the study while others finish

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            ("epochs", self.epochs >= 1, f"Epochs must be at least 1, got {self.epochs}."),
            ("batch_size", self.batch_size >= 1,
             f"Batch_size must be at least 1, got {self.batch_size}."),
            ("limit", self.limit is None or self.limit >= 2 * self.folds,
             f"Limit must leave at least two images per fold, got {self.limit}."),
            ("max_oscillation", self.max_oscillation >= 0,
             f"Max_oscillation must be zero or more, got {self.max_oscillation}."),
            ("parallel", self.parallel is None or self.parallel >= 1,
             f"Parallel must be at least 1, got {self.parallel}."),
            ("study_name", self.study_name is None or bool(self.study_name.strip()),
             "The study_name must not be empty (without one it is derived from the grid)."),
        ]

    def grid(self) -> list[GridPoint]:
        """Every grid point, ED by ED, in the order of the options."""
        return [GridPoint(e, lr, wd) for e in _unique(self.eds) for lr in _unique(self.lrs)
                for wd in _unique(self.weight_decays)]

    def search_space(self) -> dict[str, list[Any]]:
        return {"ed": _unique(self.eds), "lr": _unique(self.lrs),
                "weight_decay": _unique(self.weight_decays)}

    def protocol(self) -> dict[str, Any]:
        """What decides the results: two searches with the same protocol share a study."""
        protocol = {**self.search_space(), "folds": self.folds, "epochs": self.epochs,
                    "batch_size": self.batch_size, "seed": self.seed, "dataset": self.dataset,
                    "limit": self.limit,
                    # the default (None) keeps the name studies made with 10,000 had
                    "val_size": 10_000 if self.val_size is None else self.val_size}
        if self.resize:  # studies without it keep the names they had
            protocol["resize"] = True
        if self.model != "course":  # studies of the course model keep the names they had
            protocol["model"] = self.model
        if self.precision != "32":  # float32 studies keep the names they had
            protocol["precision"] = self.precision
        return protocol

    def default_study_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.protocol(), sort_keys=True).encode()).hexdigest()
        label = Path(self.dataset).name  # a path's last part; a registered name as it is
        return f"aetool-search-{label}-{digest[:12]}"

    def fit_config(self, point: GridPoint, device: str) -> FitConfig:
        """The settings `fit` would train this grid point with: the report's constant learning
        rate without warm-up, and no early stopping."""
        return FitConfig(
            ed=point.ed, lr=point.lr, weight_decay=point.weight_decay,
            batch_size=self.batch_size, max_epochs=self.epochs, patience=0, seed=self.seed,
            schedule="constant", warmup_epochs=0,
            device=device, dataset=self.dataset, resize=self.resize, val_size=self.val_size,
            preset="search",
            model=self.model, precision=self.precision,
        )


def _unique(values: typing.Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


# --------------------------------------------------------------------------- the study


@dataclass
class StudySettings(ModelSettings, DataSettings, SeedSettings, GridSettings):
    """What `aetool.experiment.run_study` runs. Defaults run the report's experiment (its EDs,
    search grid, folds and noises) with aetool's default training recipe; `preset="report"`
    fits exactly as the report did. `validate` checks the values; `run_study` also checks
    what needs the rest of aetool (`aetool.experiment.check_study`)."""

    search_epochs: int = 20  # epochs per (setting, fold) in the search
    preset: str = DEFAULT_PRESET  # fit's starting settings; the search's lr and wd go on top
    max_epochs: int | None = None  # cap on fit's epochs (None: the preset's)
    noises: list[str] | None = None  # corrupt's noises (None: the report's Table 1)
    methods: list[str] = field(default_factory=lambda: ["pca"])  # embed's projections
    time_budget: float | None = None  # seconds for the whole study (--time); see split_time
    fit_seconds: float | None = None  # each new fit's time budget, set by run_study
    search_limit: int | None = None  # use only the first N training images in the search
    skip_search: bool = False  # fit with the preset's lr and wd instead of searching

    def checks(self) -> list[Check]:
        return [*super().checks(),
                ("time_budget", self.time_budget is None or self.time_budget > 0,
                 self.must("time_budget", "be positive"))]

    def validate(self) -> None:
        """Check the values of every stage: the fit stage's at every ED, the search's."""
        super().validate()
        for ed in self.eds:  # the fit stage's settings, for every ED
            preset_config(self.preset, ed=ed, max_epochs=self.max_epochs, seed=self.seed,
                          device=self.device, dataset=self.dataset, val_size=self.val_size,
                          precision=self.precision, model=self.model)
        if not self.skip_search:
            self.search_config().validate()

    def search_config(self) -> SearchConfig:
        """The settings of the study's search."""
        return SearchConfig(
            eds=self.eds, lrs=self.lrs, weight_decays=self.weight_decays, folds=self.folds,
            epochs=self.search_epochs, seed=self.seed, dataset=self.dataset, resize=self.resize,
            val_size=self.val_size, limit=self.search_limit, device=self.device,
            max_loss=self.max_loss, model=self.model, precision=self.precision,
        )
