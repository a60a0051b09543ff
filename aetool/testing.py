"""Checks for plugin authors: does a model, a noise or a data set keep the guarantees aetool
gives its built-ins? Each check runs on a few small batches of synthetic 28x28 images (nothing
is downloaded, except a registered data set's own files) and gives one row, passed or failed,
with a sentence saying what was found.

From a plugin's own pytest suite:

    from aetool.testing import assert_model_ok, check_model

    def test_my_model_keeps_aetool_s_guarantees():
        report = check_model("mypkg/dense:hidden=64")
        assert report.ok, report          # or simply: assert_model_ok("mypkg/dense:hidden=64")

`check_model(spec)`: the contract (shapes, `encode` width equal to ED, outputs in [0, 1]),
determinism under a seed, a state_dict round trip through a checkpoint file, every training
mode against eager within the tolerances docs/benchmarks.md states, batched training (`vmap`, what
`aetool search` does) against one at a time, and evaluation-mode consistency. `check_noise(spec)`:
output shape, finite values (and whether they stay in [0, 1]), the input left untouched,
determinism under a generator's seed, and the parameters' bounds. `check_dataset(name_or_path)`:
dtype, image shape, labels within the classes, a non-empty train and test split.
`aetool models check`, `aetool noises check` and `aetool datasets check` print the same rows.

A spec or data set that cannot be read at all is a `SettingError` (the command line's exit 2),
not a report.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aetool.data import ProgressFn, to_float
from aetool.errors import AetoolError, SettingError, first_line
from aetool.models import SIDE, ModelSpec, parse_model_spec

# How close a fast training mode must train to eager mode: the README's "about 1e-6" for the
# losses and, for the weights, the share of how far training moved them (tests/train/test_fast.py
# measured both; CUDA's bounds are its placeholders until measured on a GPU).
LOSS_RTOL, WEIGHT_GAP = 2e-6, 2e-3
CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP = 1e-4, 1e-2
# How close models trained together (vmap) must train to one at a time, relative, in float32
# (tests/train/test_batched.py's bound).
BATCHED_RTOL = 2e-4
# Evaluation mode: an image's output alone and within a batch (other kernels may sum in
# another order; a batch-dependent output, as BatchNorm's without running statistics, is off
# by far more). CUDA's convolutions may use TF32, hence its looser bound.
EVAL_RTOL, EVAL_ATOL = 1e-4, 1e-6
CUDA_EVAL_RTOL, CUDA_EVAL_ATOL = 1e-3, 1e-4

# The training runs: 160 images in batches of 64 (two full batches and a short one), 2 epochs,
# 48 validation images, Adam at a small learning rate (short trajectories stay well
# conditioned, so fast modes part from eager by rounding only).
TRAIN_IMAGES, VAL_IMAGES, BATCH_SIZE, EPOCHS = 160, 48, 64, 2
LR, WEIGHT_DECAY = 1e-3, 1e-5
SLOW_MODES = ("compile",)  # checked only when asked for: torch.compile takes 10-30 s


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Check:
    """One row of a report: a check's name, whether it passed, and what was found. A skipped
    check (it cannot run here, or was not asked for) counts as passed."""

    name: str
    passed: bool
    detail: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


@dataclass
class Report:
    """The rows of one `check_*` call; `ok` when none failed. `str(report)` lists every row,
    so `assert report.ok, report` shows what failed."""

    subject: str  # what was checked, e.g. "model 'course' at ED 4 on cpu"
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def summary(self) -> str:
        """One sentence: all passed, or which failed."""
        if self.ok:
            return f"All {len(self.checks)} checks of the {self.subject} passed."
        names = ", ".join(check.name for check in self.failures)
        return (f"{len(self.failures)} of {len(self.checks)} checks of the {self.subject} "
                f"failed: {names}.")

    def __str__(self) -> str:
        rows = [f"  {c.status} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join([self.summary(), *rows])

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "ok": self.ok, "checks": [
            {"name": c.name, "status": c.status, "passed": c.passed, "detail": c.detail}
            for c in self.checks]}

    def assert_ok(self) -> Report:
        """This report, or an AssertionError listing every row when a check failed."""
        if not self.ok:
            raise AssertionError(str(self))
        return self


class Skip(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a check that cannot run here; its message is the row's detail."""


def run_check(name: str, test: Callable[[], str]) -> Check:
    """Run `test`, which returns the detail of a pass, raises `AssertionError` (its message the
    detail of a failure) or `Skip`; anything else it raises is a failure in one sentence."""
    try:
        return Check(name, True, test())
    except Skip as skip:
        return Check(name, True, str(skip), skipped=True)
    except (AssertionError, AetoolError) as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - the plugin's code may raise anything
        return Check(name, False, f"{type(exc).__name__}: {first_line(exc)}")


def not_run(names: Sequence[str], why: str) -> list[Check]:
    """Rows skipped because an earlier check failed (that row is the failure)."""
    return [Check(name, True, f"Not run: {why}.", skipped=True) for name in names]


# --------------------------------------------------------------------------- synthetic images


def synthetic_images(n: int, seed: int) -> torch.Tensor:
    """`n` smooth random uint8 images (N, 1, 28, 28): blobs, not noise, so a model has
    something to learn in a few steps."""
    coarse = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    fine = F.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return (fine * 255).round().to(torch.uint8)


def _probe(device: torch.device) -> torch.Tensor:
    return to_float(synthetic_images(8, seed=3)).to(device)


def _resolve(device: torch.device | str) -> torch.device:
    from aetool.devices import resolve_device

    return resolve_device(str(device))


# --------------------------------------------------------------------------- models

MODEL_CHECKS = ("contract", "determinism", "training", "state_dict round trip")


def check_model(spec: str | None = None, ed: int = 4, *, device: torch.device | str = "cpu",
                modes: Sequence[str] | None = None, seed: int = 0) -> Report:
    """Check the model `spec` (`NAME` or `NAME:param=value,...`; None is the default model)
    at encoding dimension `ed` on `device`: one row per check (see the module's docstring).

    `modes`: the training modes compared with eager (default: `tuned`, and `graph` on CUDA);
    `compile` compiles for 10-30 s, so it runs only when named. A spec that does not parse is
    a `SettingError`. Torch's global random state is left as it was."""
    if not isinstance(ed, int) or isinstance(ed, bool) or ed < 1:
        raise SettingError("ed", f"ed must be a whole number of at least 1, got {ed!r}.")
    parsed = parse_model_spec(spec)
    device = _resolve(device)
    wanted = _modes(modes, device)
    report = Report(f"model {parsed.spec!r} at ED {ed} on {device.type}")
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        report.checks += _model_checks(parsed, ed, device, wanted, seed)
    return report


def _modes(modes: Sequence[str] | None, device: torch.device) -> list[str]:
    """The training modes to compare with eager, checked (`SettingError` for an unknown one)."""
    from aetool.train.fast import MODES, resolve_mode

    if modes is None:
        return ["tuned", "graph"] if device.type == "cuda" else ["tuned"]
    wanted: list[str] = []
    for mode in modes:
        if mode not in MODES:
            raise SettingError("mode", f"Unknown training mode {mode!r}; choose one of: "
                               f"{', '.join(m for m in MODES if m != 'auto')}.")
        concrete = mode if mode == "graph" else resolve_mode(mode, device)
        if concrete != "eager" and concrete not in wanted:
            wanted.append(concrete)
    return wanted


def _model_checks(parsed: ModelSpec, ed: int, device: torch.device, modes: list[str],
                  seed: int) -> list[Check]:
    contract = run_check("contract", lambda: _contract(parsed, ed, device))
    mode_names = [f"mode {m}" for m in ("tuned", "compile", "graph")]
    later = [*MODEL_CHECKS[1:], *mode_names, "batched", "eval consistency"]
    if not contract.passed:
        return [contract, *not_run(later, "the model does not keep the contract")]
    data = _TrainingData.make(device)
    runs: list[Trained] = []
    training = run_check("training", lambda: _eager_runs(parsed, ed, data, seed, runs))
    checks = [contract, run_check("determinism", lambda: _determinism(parsed, ed, device,
                                                                     seed, runs)), training]
    if not training.passed:
        return checks + not_run(later[2:], "eager training fails")
    reference = runs[0]
    checks.append(run_check("state_dict round trip",
                            lambda: _round_trip(parsed, ed, reference, data)))
    if checks[1].passed:  # comparisons of trainings need the same start from the same seed
        for mode in ("tuned", "compile", "graph"):
            checks.append(run_check(f"mode {mode}", lambda mode=mode: _mode(
                parsed, ed, data, seed, mode, modes, reference)))
        checks.append(run_check("batched", lambda: _batched(parsed, ed, data, seed)))
    else:
        checks += not_run(later[3:-1], "the same seed does not give the same model")
    checks.append(run_check("eval consistency", lambda: _eval_consistency(reference, data)))
    return checks


def _contract(parsed: ModelSpec, ed: int, device: torch.device) -> str:
    """aetool's own check (`check_contract`, as every run does), and the shapes and range of a
    training-mode forward pass on a batch of 3 images."""
    torch.manual_seed(0)
    module = parsed.build(ed).to(device)  # builds and checks the contract on a dummy batch
    module.train()
    x = _probe(device)[:3]
    out = module(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 1, SIDE, SIDE), (
        f"In training mode forward returned "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, "
        f"not (3, 1, {SIDE}, {SIDE}).")
    assert bool(((out >= 0) & (out <= 1)).all()), \
        "In training mode forward returned values outside [0, 1]."
    return (f"encode gives (N, {ed}), decode and forward (N, 1, {SIDE}, {SIDE}) in [0, 1], in "
            "evaluation and training mode.")


@dataclass
class _TrainingData:
    """The synthetic training and validation images, on the device."""

    train: torch.Tensor
    val: torch.Tensor
    probe: torch.Tensor

    @classmethod
    def make(cls, device: torch.device) -> _TrainingData:
        images = synthetic_images(TRAIN_IMAGES + VAL_IMAGES, seed=1).to(device)
        return cls(images[:TRAIN_IMAGES], images[TRAIN_IMAGES:], _probe(device))


@dataclass
class Trained:
    """One short training run: per-epoch training losses then the validation loss, the weights
    before and after, the first outputs, the module, the mode that ran and its warnings."""

    losses: list[float]
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    first_outputs: torch.Tensor
    module: torch.nn.Module
    mode: str
    notes: list[str]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()
            if v.is_floating_point()}


def train_briefly(parsed: ModelSpec, ed: int, data: _TrainingData, seed: int,
                  mode: str = "eager") -> Trained:
    """Build the model with `seed` (as `fit` does) and train it for EPOCHS epochs in `mode`."""
    from aetool.train.fast import make_train_epoch
    from aetool.train.step import evaluate

    device = data.train.device
    torch.manual_seed(seed)
    module = parsed.build(ed).to(device)
    start = _state(module)
    module.eval()
    with torch.no_grad():
        first = module(data.probe).detach().cpu()
    optimizer = torch.optim.Adam(module.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        run_epoch = make_train_epoch(module, optimizer, device, mode)
        shuffle = torch.Generator().manual_seed(seed)
        losses = [run_epoch(module, optimizer, data.train, BATCH_SIZE, shuffle)
                  for _ in range(EPOCHS)]
    losses.append(evaluate(module, data.val))
    notes = [first_line(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return Trained(losses, start, _state(module), first, module,
                   getattr(run_epoch, "mode", mode), notes)


def _eager_runs(parsed: ModelSpec, ed: int, data: _TrainingData, seed: int,
                runs: list[Trained]) -> str:
    """Two eager trainings with the same seed (the reference, and a repeat for determinism)."""
    for _ in range(2):
        runs.append(train_briefly(parsed, ed, data, seed))
    losses = runs[0].losses
    assert all(math.isfinite(x) for x in losses), \
        f"Eager training gave losses that are not finite numbers: {_numbers(losses)}."
    return (f"{EPOCHS} eager epochs on {TRAIN_IMAGES} synthetic images: training losses "
            f"{_numbers(losses[:-1])}, validation {losses[-1]:.4g}.")


def _numbers(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def _determinism(parsed: ModelSpec, ed: int, device: torch.device, seed: int,
                 runs: list[Trained]) -> str:
    if len(runs) < 2:
        raise Skip("Not run: eager training fails.")
    a, b = runs
    differ = [k for k in a.start if not torch.equal(a.start[k], b.start[k])]
    assert not differ, (
        f"Two builds after torch.manual_seed({seed}) gave different weights (first "
        f"{differ[0]!r}): initialise them from torch's global generator.")
    exact = device.type == "cpu"  # CUDA's kernels may sum in another order from call to call
    assert torch.equal(a.first_outputs, b.first_outputs) or (not exact and torch.allclose(
        a.first_outputs, b.first_outputs, CUDA_EVAL_RTOL, CUDA_EVAL_ATOL)), (
        "The same weights gave different outputs for the same images in evaluation mode.")
    same = a.losses == b.losses if exact else _worst(a.losses, b.losses) <= CUDA_LOSS_RTOL
    assert same, (f"Two trainings with seed {seed} gave different losses ({_numbers(a.losses)} "
                  f"against {_numbers(b.losses)}).")
    return (f"Two builds with seed {seed} have the same weights and outputs, and train to the "
            f"same losses{'' if exact else ' within ' + format(CUDA_LOSS_RTOL, 'g')}.")


def _worst(values: Sequence[float], reference: Sequence[float]) -> float:
    """The largest relative difference (NaN counts as infinite)."""
    worst = 0.0
    for value, ref in zip(values, reference, strict=True):
        gap = abs(value - ref) / max(abs(ref), 1e-12)
        worst = max(worst, gap if math.isfinite(gap) else math.inf)
    return worst


def _round_trip(parsed: ModelSpec, ed: int, trained: Trained, data: _TrainingData) -> str:
    """Save the trained weights with aetool's `save_torch`, read them back as every command
    does (`load_model`: weights_only=True, shapes checked), compare the outputs."""
    from aetool.files import save_torch
    from aetool.models import load_model

    module = trained.module.eval()
    with tempfile.TemporaryDirectory(prefix="aetool-check-") as folder:
        path = Path(folder) / "model.pt"
        save_torch(path, module.state_dict())
        loaded = load_model(path, ed, data.probe.device, model=parsed.spec)
    with torch.no_grad():
        want, got = module(data.probe), loaded(data.probe)
    cuda = want.device.type == "cuda"
    rtol, atol = (CUDA_EVAL_RTOL, CUDA_EVAL_ATOL) if cuda else (1e-6, 1e-7)
    assert torch.allclose(got, want, rtol, atol), (
        "The weights read back from a checkpoint give other outputs (largest difference "
        f"{float((got - want).abs().max()):.2e}): the state_dict does not hold all the model "
        "needs.")
    return ("Saved with save_torch, read back with weights_only=True: the same outputs in "
            "evaluation mode.")


def _mode(parsed: ModelSpec, ed: int, data: _TrainingData, seed: int, mode: str,
          modes: list[str], reference: Trained) -> str:
    """Train in `mode` and compare the losses and weights with eager training."""
    device = data.train.device
    if mode == "graph" and device.type != "cuda":
        raise Skip("Needs a CUDA device.")
    if mode not in modes:
        slow = "torch.compile compiles for 10-30 s; " if mode in SLOW_MODES else ""
        raise Skip(f"Not asked for ({slow}ask with --mode {mode}).")
    trained = train_briefly(parsed, ed, data, seed, mode)
    if trained.mode != mode:
        raise Skip(f"Fell back to {trained.mode!r}: {'; '.join(trained.notes) or 'no reason'}.")
    cuda = device.type == "cuda"
    loss_rtol, max_gap = (CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP) if cuda else (LOSS_RTOL, WEIGHT_GAP)
    loss_gap = _worst(trained.losses, reference.losses)
    weight_gap = model_gap(trained.end, reference.end, reference.start)
    words = (f"losses within {loss_gap:.1e} of eager (at most {loss_rtol:g}), weights within "
             f"{weight_gap:.1e} of how far training moved them (at most {max_gap:g})")
    assert loss_gap <= loss_rtol and weight_gap <= max_gap, (
        f"Trains otherwise than eager: {words}; losses {_numbers(trained.losses)} against "
        f"{_numbers(reference.losses)}.")
    return words[0].upper() + words[1:] + "."


def model_gap(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
              start: dict[str, torch.Tensor]) -> float:
    """|state - reference| / |reference - start| over all floating-point tensors together (as
    tests/train/test_fast.py measures modes); infinite when training moved nothing but they
    differ."""
    off = sum(float((state[k].float() - reference[k].float()).norm()) ** 2 for k in reference)
    moved = sum(float((reference[k].float() - start[k].float()).norm()) ** 2 for k in reference)
    if moved == 0:
        return 0.0 if off == 0 else math.inf
    gap = (off / moved) ** 0.5
    return gap if math.isfinite(gap) else math.inf


def _batched(parsed: ModelSpec, ed: int, data: _TrainingData, seed: int) -> str:
    """Two models trained together with vmap (`aetool search --parallel`) against one at a
    time; a model the search trains one at a time anyway is a skip saying why."""
    from aetool.config import FitConfig
    from aetool.train import batched

    images = torch.cat([data.train, data.val])
    index = torch.arange(images.shape[0])
    folds = [(index[:100], index[160:200]), (index[40:136], index[100:148])]
    jobs = [batched.TrainJob(FitConfig(ed=ed, lr=lr, weight_decay=wd, batch_size=32,
                                       seed=seed + m, model=parsed.spec), train, val)
            for m, ((train, val), (lr, wd)) in enumerate(zip(folds, [(LR, WEIGHT_DECAY),
                                                                     (3e-3, 0.0)], strict=True))]
    # `unbatchable`: why the search would train this model one at a time (its own trial).
    unbatchable = getattr(batched, "unbatchable", None)
    reason = unbatchable(jobs[0].config, images.device) if unbatchable is not None else None
    if reason is not None:
        raise Skip(f"aetool search trains this model one at a time: {reason}.")
    together = batched.train_batched(jobs, images, epochs=EPOCHS)
    alone = batched.train_sequential(jobs, images, epochs=EPOCHS)
    ours = [x for c in together for x in c.train + c.val]
    reference = [x for c in alone for x in c.train + c.val]
    gap = _worst(ours, reference)
    assert gap <= BATCHED_RTOL, (
        f"Trained together with vmap, the losses differ from one-at-a-time training by "
        f"{gap:.1e} (relative, at most {BATCHED_RTOL:g}): {_numbers(ours)} against "
        f"{_numbers(reference)}; a search with --parallel would rank settings on wrong "
        "numbers.")
    return (f"Two models trained together give the one-at-a-time training and validation "
            f"losses within {gap:.1e} (at most {BATCHED_RTOL:g}).")


@torch.no_grad()
def _eval_consistency(trained: Trained, data: _TrainingData) -> str:
    """In evaluation mode: the same outputs twice, and an image's output (and code) in part of
    the batch, alone and in the whole batch alike."""
    module = trained.module.eval()
    x = data.probe
    cuda = x.device.type == "cuda"
    rtol, atol = (CUDA_EVAL_RTOL, CUDA_EVAL_ATOL) if cuda else (EVAL_RTOL, EVAL_ATOL)
    out, again = module(x), module(x)
    assert torch.equal(out, again) or (cuda and torch.allclose(out, again, rtol, atol)), (
        "In evaluation mode two calls on the same images give different outputs: the model "
        "draws random numbers (or changes itself) when evaluating.")
    pairs = [(module(x[2:6]), out[2:6]), (module.encode(x[2:6]), module.encode(x)[2:6])]
    try:
        pairs += [(torch.cat([module(x[i : i + 1]) for i in (0, 5)]), out[[0, 5]]),
                  (module.encode(x[:1]), module.encode(x)[:1])]
    except Exception as exc:  # noqa: BLE001 - the plugin's layers may refuse a single image
        _assert_close_pairs(pairs, rtol, atol)
        raise AssertionError(
            f"In evaluation mode the model cannot take a single image ({type(exc).__name__}: "
            f"{first_line(exc)}); aetool's last batch may hold one.") from None
    _assert_close_pairs(pairs, rtol, atol)
    return ("In evaluation mode the same images give the same outputs and codes, alone or in "
            f"any batch (within {rtol:g} relative).")


def _assert_close_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]], rtol: float,
                        atol: float) -> None:
    if all(torch.allclose(a, b, rtol, atol) for a, b in pairs):
        return
    gap = max(float((a - b).abs().max()) for a, b in pairs)
    raise AssertionError(
        f"In evaluation mode an image's output depends on the other images of its batch (off "
        f"by up to {gap:.2e}), as BatchNorm's without running statistics does; reconstructions "
        "and codes would change with the batch size.")


def assert_model_ok(spec: str | None = None, ed: int = 4, **options: Any) -> Report:
    """`check_model(spec, ed, **options)`, raising AssertionError that lists every row when a
    check failed; the report otherwise."""
    return check_model(spec, ed, **options).assert_ok()


# --------------------------------------------------------------------------- noises

NOISE_CHECKS = ("shape", "values", "input untouched", "determinism", "parameters")


def check_noise(spec: str, *, device: torch.device | str = "cpu", seed: int = 0) -> Report:
    """Check the noise `spec` (`NAME` or `NAME:param=value,...`, one setting) on a batch of
    synthetic images on `device`: one row per check (see the module's docstring). A spec
    that does not parse, or a sweep (`a|b`), is a `SettingError`."""
    from aetool.noises import build_noise

    try:
        noise = build_noise(spec)
    except SettingError:
        raise
    except AetoolError as exc:
        raise SettingError("noise", str(exc)) from None
    device = _resolve(device)
    report = Report(f"noise {noise.spec!r} on {device.type}")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        report.checks += _noise_checks(noise, _probe(device), seed)
    return report


def _noise_checks(noise: Any, x: torch.Tensor, seed: int) -> list[Check]:
    applied: list[torch.Tensor] = []
    first = run_check("shape", lambda: _noise_shape(noise, x, seed, applied))
    if not first.passed:
        return [first, *not_run(NOISE_CHECKS[1:-1], "the noise fails on a batch"),
                run_check("parameters", lambda: _noise_params(noise, x, seed))]
    out = applied[0]
    return [
        first,
        run_check("values", lambda: _noise_values(out)),
        run_check("input untouched", lambda: _noise_keeps_input(noise, x, seed)),
        run_check("determinism", lambda: _noise_determinism(noise, x, seed)),
        run_check("parameters", lambda: _noise_params(noise, x, seed)),
    ]


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    from aetool.train.step import make_generator

    return make_generator(x.device, seed)


def _noise_output(noise: Any, x: torch.Tensor, seed: int) -> torch.Tensor:
    out = noise(x.clone(), _generator(x, seed))
    want = tuple(x.shape)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    assert isinstance(out, torch.Tensor) and got == want, (
        f"{noise.label} returned {got} for a batch of shape {want}; a noise returns a batch of "
        "the shape it gets.")
    assert out.device == x.device and out.is_floating_point(), (
        f"{noise.label} returned {out.dtype} on {out.device} for float32 images on {x.device}.")
    return out


def _noise_shape(noise: Any, x: torch.Tensor, seed: int, applied: list[torch.Tensor]) -> str:
    applied.append(_noise_output(noise, x, seed))
    _noise_output(noise, x[:1], seed)
    return f"Batches of {x.shape[0]} and 1 image keep their shape, dtype and device."


def _noise_values(out: torch.Tensor) -> str:
    assert bool(torch.isfinite(out).all()), "The noise returned NaN or infinite values."
    low, high = float(out.min()), float(out.max())
    if 0 <= low and high <= 1:
        return f"Finite, in [0, 1] (from {low:.3g} to {high:.3g})."
    return (f"Finite, from {low:.3g} to {high:.3g}: outside [0, 1], which models get as they "
            "are (allowed: the report's Gaussian noise is not clipped either).")


def _noise_keeps_input(noise: Any, x: torch.Tensor, seed: int) -> str:
    clean = x.clone()
    noise(clean, _generator(x, seed))
    assert torch.equal(clean, x), (
        "The noise changed the clean batch it was given (in place); corrupt it into a new "
        "tensor, since aetool compares reconstructions with the clean images.")
    return "The clean batch is left as it was."


def _noise_determinism(noise: Any, x: torch.Tensor, seed: int) -> str:
    torch.manual_seed(1)  # two global states: the noise must not draw from them
    out = noise(x.clone(), _generator(x, seed))
    torch.manual_seed(2)
    again = noise(x.clone(), _generator(x, seed))
    assert torch.equal(again, out), (
        "The same generator seed gave different outputs: draw every random number from the "
        "generator the noise is given (aetool.noises.rand_like, randn_like, randint_for), "
        "not from torch's global one.")
    other = noise(x.clone(), _generator(x, seed + 1))
    varies = "another seed gives others" if not torch.equal(other, out) else \
        "it draws nothing random"
    return f"The same generator seed gives the same output; {varies}."


def _noise_params(noise: Any, x: torch.Tensor, seed: int) -> str:
    """Values outside a parameter's bounds are refused in one sentence; settings at the
    bounds are either refused by `validate` in one sentence or work."""
    base = noise.noise
    refused = worked = 0
    for param in base.params:
        for text in _bad_texts(param):
            try:
                param.parse(text)
            except AetoolError as exc:
                assert "\n" not in str(exc).strip(), f"{param.name}={text} is refused in lines."
                refused += 1
                continue
            raise AssertionError(f"{param.name}={text} is accepted.")
        for value in _edge_values(param):
            if _works_at(base, {**noise.params, param.name: value}, x, seed):
                worked += 1
    if not base.params:
        return "The noise has no parameters."
    return (f"{refused} values outside the parameters' bounds refused in one sentence; "
            f"{worked} settings at the bounds work.")


def _bad_texts(param: Any) -> list[str]:
    if param.type is bool:
        return ["maybe"]
    if param.type is str:
        return [next(t for t in ("other", "other-value", "x-y-z") if t not in param.choices)
                ] if param.choices else []
    texts = ["nan", "inf"] if param.type is float else ["1.5"]
    one = 1 if param.type is int else max(1.0, abs(param.minimum or param.maximum or 1.0))
    if param.minimum is not None:
        texts.append(str(param.minimum - one))
    if param.maximum is not None:
        texts.append(str(param.maximum + one))
    return texts


def _edge_values(param: Any) -> list[Any]:
    if param.type is bool:
        return [False, True]
    if param.type is str:
        return list(param.choices or [])
    return [param.type(v) for v in (param.minimum, param.maximum) if v is not None]


def _works_at(base: Any, values: dict[str, Any], x: torch.Tensor, seed: int) -> bool:
    """Whether the noise accepts `values` (False when `validate` refuses them in one sentence)
    and then gives a batch of the right shape with finite values."""
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    try:
        configured = base.checked(values)
    except AetoolError:
        return False
    except Exception as exc:  # noqa: BLE001 - validate must raise ValueError, nothing else
        raise AssertionError(f"validate raised {type(exc).__name__} for {shown} "
                             f"({first_line(exc)}); raise ValueError with one sentence.") from None
    try:
        out = _noise_output(configured, x, seed)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's apply may raise anything
        raise AssertionError(f"The noise fails at {shown}: {type(exc).__name__}: "
                             f"{first_line(exc)}.") from None
    assert bool(torch.isfinite(out).all()), f"The noise gives NaN or infinite values at {shown}."
    return True


def assert_noise_ok(spec: str, **options: Any) -> Report:
    """`check_noise(spec, **options)`, raising AssertionError that lists every row when a
    check failed; the report otherwise."""
    return check_noise(spec, **options).assert_ok()


# --------------------------------------------------------------------------- data sets

DATASET_CHECKS = ("dtype", "shape", "split", "labels", "aetool reads it")


def check_dataset(dataset: str, *, root: Path | str | None = None, resize: bool = False,
                  progress: ProgressFn | None = None) -> Report:
    """Check the data set `dataset` (a registered name, fetched into the data cache `root` if
    needed, or the path of an image folder, an .npz file or a folder of IDX files): what its
    loader returns, row by row. A name or path that is no data set is a `SettingError`."""
    from aetool.data import check_dataset as resolve

    source = resolve(dataset, resize)
    report = Report(f"data set {source}")
    loaded: list[Any] = []
    load = run_check("load", lambda: _load_arrays(source, root, resize, progress, loaded))
    report.checks.append(load)
    if not load.passed:
        report.checks += not_run(DATASET_CHECKS, "the data set does not load")
        return report
    arrays, classes, where = loaded
    report.checks += [
        run_check("dtype", lambda: _dtypes(arrays)),
        run_check("shape", lambda: _shapes(arrays)),
        run_check("split", lambda: _split(arrays)),
        run_check("labels", lambda: _labels(arrays, classes)),
        run_check("aetool reads it", lambda: _image_data(source, arrays, classes, where)),
    ]
    return report


def _load_arrays(source: str, root: Path | str | None, resize: bool,
                 progress: ProgressFn | None, loaded: list[Any]) -> str:
    from aetool.data import default_data_root
    from aetool.data.files import load_path
    from aetool.data.registry import DatasetArrays, loader_progress, registered_datasets

    registry = registered_datasets()
    if source in registry:
        dataset = registry[source]
        folder = Path(root) if root is not None else default_data_root()
        arrays, classes = dataset.load(folder, loader_progress(progress)), dataset.classes
        where = f"data set {source!r} (plugin {dataset.plugin})"
        assert isinstance(arrays, DatasetArrays), (
            f"The loader returned {type(arrays).__name__}, not aetool.data.registry.DatasetArrays.")
    else:
        (arrays, classes), where = load_path(source, resize), source
    loaded += [arrays, classes, where]
    return (f"Loaded {_count(arrays.train_images)} training and {_count(arrays.test_images)} "
            f"test images.")


def _count(images: Any) -> str:
    shape = getattr(images, "shape", None)
    return f"{shape[0]:,}" if shape else "?"


def _array(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _splits(arrays: Any, kind: str) -> list[tuple[str, np.ndarray | None]]:
    return [(split, None if getattr(arrays, f"{split}_{kind}") is None
             else _array(getattr(arrays, f"{split}_{kind}"))) for split in ("train", "test")]


def _dtypes(arrays: Any) -> str:
    for split, images in _splits(arrays, "images"):
        assert images is not None and images.dtype == np.uint8, (
            f"The {split} images are {getattr(images, 'dtype', None)}, not uint8.")
    return "The images are uint8."


def _shapes(arrays: Any) -> str:
    shapes = []
    for split, images in _splits(arrays, "images"):
        shape = tuple(images.shape) if images is not None else None
        fits = shape is not None and (shape[1:] == (SIDE, SIDE) or shape[1:] == (1, SIDE, SIDE))
        assert fits, f"The {split} images have shape {shape}, not (N, 28, 28) or (N, 1, 28, 28)."
        shapes.append(str(shape))
    return f"Images of 28x28 pixels: train {shapes[0]}, test {shapes[1]}."


def _split(arrays: Any) -> str:
    counts = {}
    for split, images in _splits(arrays, "images"):
        counts[split] = 0 if images is None or images.ndim == 0 else int(images.shape[0])
        assert counts[split] > 0, f"The {split} split holds no images."
    return f"{counts['train']:,} training and {counts['test']:,} test images."


def _labels(arrays: Any, classes: tuple[str, ...] | None) -> str:
    labels = dict(_splits(arrays, "labels"))
    if labels["train"] is None and labels["test"] is None:
        return "No labels (allowed: the latent-space plots are then not coloured)."
    for split, y in labels.items():
        assert y is not None, f"There are labels for one split only (none for {split})."
        images = _array(getattr(arrays, f"{split}_images"))
        assert y.ndim == 1 and y.shape[0] == images.shape[0], (
            f"The {split} labels have shape {tuple(y.shape)} for {images.shape[0]} images; "
            "give one label per image.")
        assert y.dtype.kind in "iu", f"The {split} labels are {y.dtype}, not whole numbers."
        low, high = int(y.min()), int(y.max())
        limit = f"0-{len(classes) - 1} ({len(classes)} classes)" if classes else "0 or more"
        assert low >= 0 and (classes is None or high < len(classes)), (
            f"The {split} labels run from {low} to {high}, outside {limit}.")
    named = f"{len(classes)} named classes" if classes else "no class names"
    return f"One whole-number label per image, within range ({named})."


def _image_data(source: str, arrays: Any, classes: Any, where: str) -> str:
    from aetool.data import image_data

    data = image_data(source, arrays, classes, where)
    return f"aetool's own checks pass; sha256 {data.checksum[:12]}..."


def assert_dataset_ok(dataset: str, **options: Any) -> Report:
    """`check_dataset(dataset, **options)`, raising AssertionError that lists every row when
    a check failed; the report otherwise."""
    return check_dataset(dataset, **options).assert_ok()


__all__ = [
    "Check", "Report", "Skip", "assert_dataset_ok", "assert_model_ok", "assert_noise_ok",
    "check_dataset", "check_model", "check_noise", "model_gap", "run_check",
    "synthetic_images", "train_briefly",
]
