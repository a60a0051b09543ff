"""Training many autoencoders of one shape at once: stacked weights, `vmap`, a vectorised Adam.

A grid search is many small, independent trainings of the same network. Instead of running
them one after another, `train_batched` stacks the weights and buffers of M models along a new
first dimension (`torch.func.stack_module_state`), runs all M forward passes as one batched
call (`torch.func.vmap` over `functional_call`) and updates every model with its own learning
rate and weight decay in one vectorised Adam step (`BatchedAdam`, the arithmetic of
`torch.optim.Adam` with its L2 weight decay, on tensors of per-model values).

Each model keeps exactly the semantics of `aetool.train.loop`'s loop, which `train_sequential`
runs one model at a time as the reference: the same initial weights (`torch.manual_seed(seed)`
then the run's model, as `fit` does), its own shuffling generator drawing
`torch.randperm(n)` once per epoch, batches of `batch_size` images with a shorter last batch,
training in training mode and validation in evaluation mode, the epoch's training loss as the
image-weighted mean of the batch losses, and the validation loss of `evaluate`. A step feeds
every model exactly its own batch: where the models' batches differ in size (a last, shorter
batch; cross-validation folds differ by one image) the models are run in groups of equal batch
size, and a model with nothing left skips the step (its Adam state and step count stay as they
are). So layers that normalise over the batch see the images one-at-a-time training gives
them: BatchNorm updates each model's own running statistics (its slice of the stacked
buffers) and evaluates with them. The batched path reproduces the sequential one up to
floating-point rounding; `tests/train/test_batched.py` checks it, BatchNorm included.

Any registered model can be batched whose forward pass `torch.func.functional_call` and
`vmap` can vectorise (no data-dependent Python control flow, no `.item()`, no random numbers
such as Dropout's, which vmap cannot draw as one-at-a-time training does) and whose output in
evaluation mode depends on each image alone. `unbatchable` tries that on a few random images,
two epochs of two models batched against one at a time; `train_models` trains a model that
fails one at a time, with a one-line warning that says why.

Everything runs on whichever device holds the images (CPU, CUDA or MPS).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from aetool.config import FitConfig, learning_rate
from aetool.data import to_float
from aetool.errors import AetoolError, first_line
from aetool.models import SIDE, build_model
from aetool.train.fast import make_train_epoch
from aetool.train.fast.precision import Precision
from aetool.train.step import evaluate

# Called after every epoch with the number of model-epochs just finished (M for a batch): a
# counter the search turns into its `ProgressEvent`s (not a `ProgressFn`).
EpochsDoneFn = Callable[[int], None]

EVAL_BATCH = 2000  # images per evaluation batch, as `training.evaluate` uses
EVAL_ELEMENTS = 1 << 15  # at most this many images (over all models) per batched evaluation

# `unbatchable`'s trial: two models on (7, 6) training and (6, 5) validation images in batches
# of 4 (a full and a shorter step each, of unequal sizes), for two epochs at a moderate
# learning rate; batched losses further than TRIAL_RTOL from one-at-a-time ones mean the model
# cannot be batched.
TRIAL_BATCH = 4
TRIAL_LR = 1e-3
TRIAL_RTOL = 1e-3


@dataclass
class TrainJob:
    """One model to train: its settings, and which images it trains and validates on.

    The indices point into one image tensor shared by every job (uint8, (N, 1, 28, 28)).
    `config.max_epochs` is ignored: all jobs of a call train for the same number of epochs.
    """

    config: FitConfig
    train_index: torch.Tensor
    val_index: torch.Tensor


@dataclass
class Curves:
    """Per-epoch losses of one trained model."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    seconds: float = 0.0


def initial_model(config: FitConfig, device: torch.device | str) -> torch.nn.Module:
    """The weights `training.fit` starts from for these settings (any registered model)."""
    torch.manual_seed(config.seed)
    return build_model(config.model, config.ed, device)


# --------------------------------------------------------------------------- the reference


def train_sequential(
    jobs: Sequence[TrainJob],
    images: torch.Tensor,
    epochs: int,
    progress: EpochsDoneFn | None = None,
    mode: str = "eager",
) -> list[Curves]:
    """Train the jobs one after another with `steps.train_epoch` (or the epoch of the training
    mode `mode`, `aetool.train.fast`), `torch.optim.Adam` and `steps.evaluate`: the loop `fit` runs,
    without early stopping."""
    results = []
    for job in jobs:
        config = job.config
        model = initial_model(config, images.device)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        run_epoch = make_train_epoch(model, optimizer, images.device, mode, config.precision)
        shuffle = torch.Generator().manual_seed(config.seed)
        train_images = images[job.train_index.to(images.device)]
        val_images = images[job.val_index.to(images.device)]
        curves = Curves()
        tic = time.perf_counter()
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch)
            curves.train.append(
                run_epoch(model, optimizer, train_images, config.batch_size, shuffle)
            )
            curves.val.append(evaluate(model, val_images))
            if progress is not None:
                progress(1)
        curves.seconds = time.perf_counter() - tic
        results.append(curves)
    return results


# --------------------------------------------------------------------------- the fast path


class BatchedAdam:
    """`torch.optim.Adam` (L2 weight decay, no amsgrad) over stacked weights, where model m
    has its own learning rate `lr[m]` and weight decay `weight_decay[m]`.

    `step(active)` updates only the models marked active (all when `active` is None); the
    others keep their weights, moments and step count, as if the step never happened. Step
    counts and bias corrections stay on the device (in double, except on MPS), so a step
    never waits for a copy from the host.
    """

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        lr: Sequence[float],
        weight_decay: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.models = len(lr)
        self.betas = betas
        self.eps = eps
        self.device = next(iter(params.values())).device
        self.double = torch.float32 if self.device.type == "mps" else torch.float64
        self.dtype = next(iter(params.values())).dtype  # the weights' (float32 in training)
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = torch.zeros(self.models, dtype=self.double, device=self.device)
        self.set_lr(lr)
        self.weight_decay = torch.tensor(weight_decay, dtype=self.dtype, device=self.device)

    def set_lr(self, lr: Sequence[float]) -> None:
        self.lr = torch.tensor(lr, dtype=self.double, device=self.device)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        beta1, beta2 = self.betas
        mask = active.to(self.device) if active is not None else None
        self.steps += 1 if mask is None else mask.to(self.double)
        steps = self.steps.clamp(min=1)  # a model never active yet: its values are unused
        # Bias corrections in double, as torch.optim.Adam computes them (in Python floats).
        step_size = (self.lr / (1 - torch.pow(beta1, steps))).to(self.dtype)
        correction2_sqrt = (1 - torch.pow(beta2, steps)).sqrt().to(self.dtype)
        for name, param in self.params.items():
            grad = param.grad
            if grad is None:
                continue
            shape = (self.models,) + (1,) * (param.dim() - 1)
            grad = grad.add(param * self.weight_decay.view(shape))
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            new_avg = exp_avg.lerp(grad, 1 - beta1)
            new_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (new_avg_sq.sqrt() / correction2_sqrt.view(shape)).add_(self.eps)
            update = (new_avg / denom).mul_(step_size.view(shape))
            if mask is None:
                exp_avg.copy_(new_avg)
                exp_avg_sq.copy_(new_avg_sq)
                param.sub_(update)
            else:
                keep = mask.view(shape)
                exp_avg.copy_(torch.where(keep, new_avg, exp_avg))
                exp_avg_sq.copy_(torch.where(keep, new_avg_sq, exp_avg_sq))
                param.sub_(torch.where(keep, update, torch.zeros_like(update)))


class StackedModels:
    """M models of one architecture as stacked weights and buffers, run together with vmap.

    Training calls run the module in training mode: each model's batch is normalised over its
    own images, and its running statistics (its slice of the stacked buffers) are updated.
    Evaluation runs it in evaluation mode, with those statistics. Training's vmapped forward
    pass runs under `precision`'s autocast (None: float32); evaluation is always float32."""

    def __init__(self, models: Sequence[nn.Module], precision: Precision | None = None) -> None:
        params, self.buffers = stack_module_state(list(models))
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.models = len(models)
        training = copy.deepcopy(models[0]).to("meta").train()
        evaluating = copy.deepcopy(models[0]).to("meta").eval()

        def loss(p: dict, b: dict, clean: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(functional_call(training, (p, b), (clean,)), clean)

        self.precision = precision or Precision()

        def reconstruct(p: dict, b: dict, clean: torch.Tensor) -> torch.Tensor:
            return functional_call(evaluating, (p, b), (clean,))

        self._losses = vmap(loss)
        self._reconstructions = vmap(reconstruct)

    def losses(self, clean: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of every model (or of the models `which`) on its own batch, one
        batch per model in `clean` ((M, n, 1, 28, 28)); updates their running statistics."""
        if which is None:
            with self.precision.autocast():
                return self._losses(self.params, self.buffers, clean)
        params = {k: v[which] for k, v in self.params.items()}
        buffers = {k: v[which] for k, v in self.buffers.items()}
        with self.precision.autocast():
            losses = self._losses(params, buffers, clean)
        with torch.no_grad():  # the copies' updated statistics back into the stack
            for name, value in buffers.items():
                self.buffers[name][which] = value
        return losses

    @torch.no_grad()
    def reconstructions(self, clean: torch.Tensor) -> torch.Tensor:
        """Every model's reconstruction of its own images in evaluation mode."""
        frozen = {k: v.detach() for k, v in self.params.items()}
        return self._reconstructions(frozen, self.buffers, clean)


def _padded(indices: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack index lists of unequal length into (M, length), padded with index 0 and weight 0."""
    stacked = torch.zeros(len(indices), length, dtype=torch.long)
    weights = torch.zeros(len(indices), length, dtype=torch.float32)
    for m, idx in enumerate(indices):
        stacked[m, : idx.numel()] = idx
        weights[m, : idx.numel()] = 1.0
    return stacked, weights


def _check_jobs(jobs: Sequence[TrainJob]) -> None:
    if not jobs:
        raise AetoolError("There are no models to train.")
    shapes = {(job.config.ed, job.config.model, job.config.batch_size, job.config.precision)
              for job in jobs}
    if len(shapes) > 1:
        raise AetoolError("Models trained together must share the encoding dimension, the "
                          "model, the batch size and the precision.")
    if any(job.train_index.numel() == 0 or job.val_index.numel() == 0 for job in jobs):
        raise AetoolError("Every model needs at least one training and one validation image.")


def train_batched(
    jobs: Sequence[TrainJob],
    images: torch.Tensor,
    epochs: int,
    progress: EpochsDoneFn | None = None,
) -> list[Curves]:
    """Train all jobs together (same ED and batch size) on `images.device`; same results as
    `train_sequential` up to rounding."""
    _check_jobs(jobs)
    device = images.device
    configs = [job.config for job in jobs]
    precision = Precision(configs[0].precision, device)
    if precision.scaler is not None:
        raise AetoolError("Models trained together cannot train in precision '16-mixed'; "
                          "use bf16-mixed or 32.")
    stack = StackedModels([initial_model(job.config, device) for job in jobs], precision)
    optimizer = BatchedAdam(
        stack.params, [c.lr for c in configs], [c.weight_decay for c in configs]
    )
    shuffles = [torch.Generator().manual_seed(c.seed) for c in configs]
    train_index = [job.train_index.cpu() for job in jobs]
    val_index, val_weight = _padded([job.val_index.cpu() for job in jobs],
                                    max(job.val_index.numel() for job in jobs))
    val_sizes = val_weight.sum(1).double()  # on the CPU
    val_index, val_weight = val_index.to(device), val_weight.to(device)
    results = [Curves() for _ in jobs]
    tic = time.perf_counter()
    for epoch in range(epochs):
        optimizer.set_lr([learning_rate(c, epoch) for c in configs])
        train_losses = _batched_epoch(stack, optimizer, images, train_index, shuffles,
                                      configs[0].batch_size)
        val_losses = _evaluate_batched(stack, images, val_index, val_weight, val_sizes)
        for curves, train_loss, val_loss in zip(results, train_losses, val_losses, strict=True):
            curves.train.append(train_loss)
            curves.val.append(val_loss)
        if progress is not None:
            progress(len(jobs))
    seconds = time.perf_counter() - tic
    for curves in results:
        curves.seconds = seconds / len(jobs)
    return results


def _step_groups(sizes: list[int], start: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """The models with images left at position `start` of their order, grouped by how many
    images their batch of this step has (largest first)."""
    groups: dict[int, list[int]] = {}
    for m, size in enumerate(sizes):
        count = min(batch_size, size - start)
        if count > 0:
            groups.setdefault(count, []).append(m)
    return sorted(groups.items(), reverse=True)


def _batched_epoch(stack: StackedModels, optimizer: BatchedAdam, images: torch.Tensor,
                   train_index: list[torch.Tensor], shuffles: list[torch.Generator],
                   batch_size: int) -> list[float]:
    """One epoch of every model at once, each in its own seeded order and on batches of its
    own images only; returns each model's mean training loss."""
    device = images.device
    sizes = [idx.numel() for idx in train_index]
    steps = math.ceil(max(sizes) / batch_size)
    orders = [idx[torch.randperm(idx.numel(), generator=g)]
              for idx, g in zip(train_index, shuffles, strict=True)]
    order = _padded(orders, steps * batch_size)[0].to(device, non_blocking=True)
    total = torch.zeros(stack.models, device=device)
    shortest = min(sizes)
    for start in range(0, steps * batch_size, batch_size):
        optimizer.zero_grad()
        if start + batch_size <= shortest:  # every model has a full batch
            losses = stack.losses(to_float(images[order[:, start : start + batch_size]]))
            losses.sum().backward()
            optimizer.step()
            total += losses.detach() * batch_size
            continue
        groups = _step_groups(sizes, start, batch_size)
        active = torch.zeros(stack.models, dtype=torch.bool)
        loss_sum = torch.zeros((), device=device)
        for count, members in groups:
            active[members] = True
            which = None if len(members) == stack.models else torch.tensor(members, device=device)
            rows = order if which is None else order[which]
            losses = stack.losses(to_float(images[rows[:, start : start + count]]), which)
            loss_sum = loss_sum + losses.sum()
            if which is None:
                total += losses.detach() * count
            else:
                total[which] += losses.detach() * count
        loss_sum.backward()
        optimizer.step(None if bool(active.all()) else active)
    return (total / torch.tensor(sizes, device=device)).tolist()


@torch.no_grad()
def _evaluate_batched(
    stack: StackedModels,
    images: torch.Tensor,
    val_index: torch.Tensor,
    val_weight: torch.Tensor,
    val_sizes: torch.Tensor,
) -> list[float]:
    """Each model's mean squared error per pixel on its own validation images, in evaluation
    mode (padding images carry weight 0; `unbatchable` made sure that each image's output
    depends on that image alone)."""
    models, length = val_index.shape
    chunk = max(1, min(EVAL_BATCH, EVAL_ELEMENTS // models))
    # Sums in double like `training.evaluate`, except on MPS, which has no float64.
    dtype = torch.float32 if images.device.type == "mps" else torch.float64
    total = torch.zeros(models, dtype=dtype, device=images.device)
    for start in range(0, length, chunk):
        clean = to_float(images[val_index[:, start : start + chunk]])
        error = (stack.reconstructions(clean) - clean).square().flatten(2).sum(2)
        total += (error * val_weight[:, start : start + chunk]).sum(1).to(dtype)
    pixels = images[:1].numel()
    return (total.cpu().double() / (val_sizes * pixels)).tolist()


# --------------------------------------------------------------------------- which path


def train_models(
    jobs: Sequence[TrainJob],
    images: torch.Tensor,
    epochs: int,
    progress: EpochsDoneFn | None = None,
) -> list[Curves]:
    """The batched path for several models (when their model can be batched), the plain loop
    for one, and for models that cannot be batched (with a one-line warning saying why)."""
    if len(jobs) == 1 or jobs[0].config.precision == "16-mixed":  # GradScaler: one at a time
        return train_sequential(jobs, images, epochs, progress)
    reason = unbatchable(jobs[0].config, images.device)
    if reason is not None:
        warnings.warn(f"Model {jobs[0].config.model!r} cannot be trained batched ({reason}); "
                      "training one model at a time.", RuntimeWarning, stacklevel=2)
        return train_sequential(jobs, images, epochs, progress)
    return train_batched(jobs, images, epochs, progress)


def unbatchable(config: FitConfig, device: torch.device | str) -> str | None:
    """Why models of `config.model` cannot be trained with vmap to the losses of one-at-a-time
    training, or None when they can.

    On a few random images: in evaluation mode each image's output must depend on that image
    alone (the batched evaluation pads and chunks the validation images differently), and two
    models trained batched for two epochs must give the losses of one at a time, which needs
    vmap to vectorise the model (no data-dependent control flow, no `.item()`, no random
    numbers such as Dropout's)."""
    device = torch.device(device)
    if _mixes_images(initial_model(config, device), device):
        return ("in evaluation mode its output for an image depends on the other images of the "
                "batch, as BatchNorm's without running statistics does")
    images = torch.randint(0, 256, (13, 1, SIDE, SIDE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    index = torch.arange(13)
    # In float32: whether vmap can batch the model is the question, not bf16's rounding.
    trial = replace(config, lr=TRIAL_LR, weight_decay=0.0, batch_size=TRIAL_BATCH,
                    precision="32")
    jobs = [TrainJob(replace(trial, seed=config.seed + m), train, val)
            for m, (train, val) in enumerate([(index[:7], index[7:]), (index[:6], index[6:11])])]
    tf32 = torch.backends.cudnn.allow_tf32  # full float32 here: rounding is not the question
    torch.backends.cudnn.allow_tf32 = False
    try:
        batched = train_batched(jobs, images, epochs=2)
        sequential = train_sequential(jobs, images, epochs=2)
    except Exception as exc:  # noqa: BLE001 - whatever vmap refuses, the loop can still train
        if "random operation" in str(exc):  # vmap refuses them in its default mode
            return ("it draws random numbers in training, as Dropout does, which models trained "
                    "together cannot draw as one at a time")
        return f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ours = torch.tensor([c.train + c.val for c in batched], dtype=torch.float64)
    reference = torch.tensor([c.train + c.val for c in sequential], dtype=torch.float64)
    if not torch.isclose(ours, reference, rtol=TRIAL_RTOL, atol=0.0, equal_nan=True).all():
        difference = float(((ours - reference).abs() / reference.abs()).nan_to_num(1.0).max())
        return (f"trained together on a trial batch its losses differ from one-at-a-time "
                f"training by {difference:.1e} (relative)")
    return None


@torch.no_grad()
def _mixes_images(model: nn.Module, device: torch.device) -> bool:
    """Whether, in evaluation mode, the model's output for an image depends on the other
    images of its batch (or is random)."""
    model.eval()
    x = torch.rand(4, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0)).to(device)
    together, alone = model(x)[:2], model(x[:2])
    return not torch.allclose(together, alone, rtol=1e-4, atol=1e-6)
