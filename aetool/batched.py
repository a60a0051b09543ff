"""Training many autoencoders of one shape at once: stacked weights, `vmap`, a vectorised Adam.

A grid search is many small, independent trainings of the same network. Instead of running
them one after another, `train_batched` stacks the weights of M models along a new first
dimension (`torch.func.stack_module_state`), runs all M forward passes as one batched call
(`torch.func.vmap` over `functional_call`) and updates every model with its own learning
rate and weight decay in one vectorised Adam step (`BatchedAdam`, the arithmetic of
`torch.optim.Adam` with its L2 weight decay, on tensors of per-model values).

Each model keeps exactly the semantics of `aetool.training`'s loop, which `train_sequential`
runs one model at a time as the reference: the same initial weights (`torch.manual_seed(seed)`
then the run's model, as `fit` does), its own shuffling generator drawing
`torch.randperm(n)` once per epoch, batches of `batch_size` images with a shorter last batch,
the epoch's training loss as the image-weighted mean of the batch losses, and the validation
loss of `evaluate`. Models whose training sets differ in size (cross-validation folds differ
by one image) are padded to a common length with zero-weight images; a model with nothing
left in a step skips it (its Adam state and step count stay as they are). So the batched path
reproduces the sequential one up to floating-point rounding; `tests/test_batched.py` checks it.

Any registered model can be batched whose forward pass `torch.func.functional_call` and
`vmap` can vectorise (no data-dependent Python control flow, no `.item()`). `train_models`
tries one batched step of the model first; a model that cannot be batched is trained one at
a time, with a warning that says why.

Everything runs on whichever device holds the images (CPU, CUDA or MPS).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from aetool.data import to_float
from aetool.errors import AetoolError, first_line
from aetool.models import build_model
from aetool.settings import FitConfig, learning_rate
from aetool.steps import evaluate, train_epoch

# Called after every epoch with the number of model-epochs just finished (M for a batch).
ProgressFn = Callable[[int], None]

EVAL_BATCH = 2000  # images per evaluation batch, as `training.evaluate` uses
EVAL_ELEMENTS = 1 << 15  # at most this many images (over all models) per batched evaluation


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
    progress: ProgressFn | None = None,
) -> list[Curves]:
    """Train the jobs one after another with `training.train_epoch`, `torch.optim.Adam` and
    `training.evaluate`: the loop `fit` runs, without early stopping."""
    results = []
    for job in jobs:
        config = job.config
        model = initial_model(config, images.device)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        shuffle = torch.Generator().manual_seed(config.seed)
        train_images = images[job.train_index.to(images.device)]
        val_images = images[job.val_index.to(images.device)]
        curves = Curves()
        tic = time.perf_counter()
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch)
            curves.train.append(
                train_epoch(model, optimizer, train_images, config.batch_size, shuffle)
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
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = torch.zeros(self.models, dtype=self.double, device=self.device)
        self.set_lr(lr)
        self.weight_decay = torch.tensor(weight_decay, dtype=torch.float32, device=self.device)

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
        step_size = (self.lr / (1 - torch.pow(beta1, steps))).float()
        correction2_sqrt = (1 - torch.pow(beta2, steps)).sqrt().float()
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
    shapes = {(job.config.ed, job.config.model, job.config.batch_size) for job in jobs}
    if len(shapes) > 1:
        raise AetoolError("Models trained together must share the encoding dimension, the "
                          "model and the batch size.")
    if any(job.train_index.numel() == 0 or job.val_index.numel() == 0 for job in jobs):
        raise AetoolError("Every model needs at least one training and one validation image.")


def train_batched(
    jobs: Sequence[TrainJob],
    images: torch.Tensor,
    epochs: int,
    progress: ProgressFn | None = None,
) -> list[Curves]:
    """Train all jobs together (same ED and batch size) on `images.device`; same results as
    `train_sequential` up to rounding."""
    _check_jobs(jobs)
    device = images.device
    models = [initial_model(job.config, device) for job in jobs]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    del models
    pixels = images[:1].numel()

    def batch_loss(p: dict, b: dict, clean: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        error = (functional_call(skeleton, (p, b), (clean,)) - clean).square().flatten(1).sum(1)
        return (error * weight).sum() / (weight.sum().clamp(min=1.0) * pixels)

    def reconstruct(p: dict, b: dict, clean: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (clean,))

    losses_of_models = vmap(batch_loss)
    reconstructions = vmap(reconstruct)
    configs = [job.config for job in jobs]
    optimizer = BatchedAdam(
        params, [c.lr for c in configs], [c.weight_decay for c in configs]
    )
    shuffles = [torch.Generator().manual_seed(c.seed) for c in configs]
    train_index = [job.train_index.cpu() for job in jobs]
    batch_size = configs[0].batch_size
    val_index, val_weight = _padded([job.val_index.cpu() for job in jobs],
                                    max(job.val_index.numel() for job in jobs))
    val_sizes = val_weight.sum(1).double()  # on the CPU
    val_index, val_weight = val_index.to(device), val_weight.to(device)
    results = [Curves() for _ in jobs]
    tic = time.perf_counter()
    for epoch in range(epochs):
        optimizer.set_lr([learning_rate(c, epoch) for c in configs])
        train_losses = _batched_epoch(losses_of_models, optimizer, params, buffers, images,
                                      train_index, shuffles, batch_size)
        val_losses = _evaluate_batched(
            reconstructions, params, buffers, images, val_index, val_weight, val_sizes
        )
        for curves, train_loss, val_loss in zip(results, train_losses, val_losses, strict=True):
            curves.train.append(train_loss)
            curves.val.append(val_loss)
        if progress is not None:
            progress(len(jobs))
    seconds = time.perf_counter() - tic
    for curves in results:
        curves.seconds = seconds / len(jobs)
    return results


def _batched_epoch(losses_of_models: Callable, optimizer: BatchedAdam,
                   params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   images: torch.Tensor, train_index: list[torch.Tensor],
                   shuffles: list[torch.Generator], batch_size: int) -> list[float]:
    """One epoch of every model at once, each in its own seeded order (shorter training sets
    padded with zero-weight images); returns each model's mean training loss."""
    device = images.device
    sizes = torch.tensor([idx.numel() for idx in train_index])
    steps = math.ceil(int(sizes.max()) / batch_size)
    orders = [idx[torch.randperm(idx.numel(), generator=g)]
              for idx, g in zip(train_index, shuffles, strict=True)]
    order, weight = _padded(orders, steps * batch_size)
    order, weight = order.to(device, non_blocking=True), weight.to(device, non_blocking=True)
    total = torch.zeros(len(train_index), device=device)
    for step in range(steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        clean = to_float(images[order[:, window]])
        batch_weight = weight[:, window]
        losses = losses_of_models(params, buffers, clean, batch_weight)
        optimizer.zero_grad()
        losses.sum().backward()
        remaining = sizes - step * batch_size
        optimizer.step(None if bool((remaining >= batch_size).all()) else remaining > 0)
        total += losses.detach() * batch_weight.sum(1)
    return (total / sizes.to(device)).tolist()


@torch.no_grad()
def _evaluate_batched(
    reconstructions: Callable,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    images: torch.Tensor,
    val_index: torch.Tensor,
    val_weight: torch.Tensor,
    val_sizes: torch.Tensor,
) -> list[float]:
    """Each model's mean squared error per pixel on its own validation images."""
    models, length = val_index.shape
    frozen = {k: v.detach() for k, v in params.items()}
    chunk = max(1, min(EVAL_BATCH, EVAL_ELEMENTS // models))
    # Sums in double like `training.evaluate`, except on MPS, which has no float64.
    dtype = torch.float32 if images.device.type == "mps" else torch.float64
    total = torch.zeros(models, dtype=dtype, device=images.device)
    for start in range(0, length, chunk):
        clean = to_float(images[val_index[:, start : start + chunk]])
        error = (reconstructions(frozen, buffers, clean) - clean).square().flatten(2).sum(2)
        total += (error * val_weight[:, start : start + chunk]).sum(1).to(dtype)
    pixels = images[:1].numel()
    return (total.cpu().double() / (val_sizes * pixels)).tolist()


def train_models(
    jobs: Sequence[TrainJob],
    images: torch.Tensor,
    epochs: int,
    progress: ProgressFn | None = None,
) -> list[Curves]:
    """The batched path for several models (when their model can be batched), the plain loop
    for one."""
    if len(jobs) == 1:
        return train_sequential(jobs, images, epochs, progress)
    reason = unbatchable(jobs[0].config, images.device)
    if reason is not None:
        warnings.warn(f"Model {jobs[0].config.model!r} cannot be trained batched ({reason}); "
                      "training one model at a time.", RuntimeWarning, stacklevel=2)
        return train_sequential(jobs, images, epochs, progress)
    return train_batched(jobs, images, epochs, progress)


def unbatchable(config: FitConfig, device: torch.device | str) -> str | None:
    """Why models of `config.model` cannot be trained with vmap, or None when they can: one
    vmapped forward and backward of two copies on two blank images is tried."""
    model = initial_model(config, device)
    params, buffers = stack_module_state([model, copy.deepcopy(model)])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    skeleton = copy.deepcopy(model).to("meta")
    clean = torch.zeros(2, 2, 1, 28, 28, device=device)

    def loss(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return (functional_call(skeleton, (p, b), (x,)) - x).square().mean()

    try:
        vmap(loss)(params, buffers, clean).sum().backward()
    except Exception as exc:  # noqa: BLE001 - whatever vmap refuses, the loop can still train
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None
