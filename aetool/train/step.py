"""One training step and one evaluation: what every loop in aetool (the fit, the search's
batched models, the fast modes, the noise table) shares.

`train_epoch` is the reference epoch: one pass over device-resident uint8 images in a seeded
random order, the mean squared error against the clean images, one Adam step per batch.
`aetool.train.fast` makes faster epochs with the same meaning (`train_epoch`'s signature).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from aetool.data import to_float

if TYPE_CHECKING:  # aetool.train.fast imports this module
    from aetool.train.fast.precision import Precision

# A noise turns a clean float batch into a corrupted one, drawing randomness from `generator`.
NoiseFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# Loss and backward of one step: (inputs, clean targets, is a full batch) -> the loss.
BackwardFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps sums over 10,000 images exact; MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 2000,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Mean squared error per pixel between reconstructions and the clean uint8 `images`.

    Always in float32 (whatever precision the model was trained in), summed in float64."""
    was_training = model.training
    model.eval()
    dtype = _exact_dtype(images.device)
    total = torch.zeros((), device=images.device, dtype=dtype)
    for start in range(0, images.shape[0], batch_size):
        clean = to_float(images[start : start + batch_size])
        inputs = noise(clean, generator) if noise is not None else clean
        total += F.mse_loss(model(inputs), clean, reduction="sum").to(dtype)
    model.train(was_training)
    return (total / images[:1].numel() / images.shape[0]).item()


@torch.no_grad()
def mean_image_mse(images: torch.Tensor) -> float:
    """The error of the best reconstruction that ignores its input: every image replaced by the
    mean image of uint8 `images` (the per-pixel variance, averaged). A model whose loss stays
    there has learned nothing about the images (it has collapsed)."""
    pixels = images.reshape(images.shape[0], -1).to(_exact_dtype(images.device)) / 255
    return pixels.var(dim=0, unbiased=False).mean().item()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    shuffle: torch.Generator,
    noise: NoiseFn | None = None,
    noise_generator: torch.Generator | None = None,
    backward: BackwardFn | None = None,
    precision: Precision | None = None,
) -> float:
    """One pass over `images` in a seeded random order; returns the mean training loss.

    `backward(inputs, clean, full_batch)` may replace the plain loss + backward of a step
    (`aetool.train.fast` passes compiled or tuned kernels); the optimiser step stays here.
    `precision` (`aetool.train.fast.precision.Precision`; None: float32) runs the forward pass under
    its autocast (the loss is float32: autocast runs `mse_loss` in float32) and scales the
    backward pass and step for `16-mixed`."""
    model.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=shuffle).to(images.device, non_blocking=True)
    total = torch.zeros((), device=images.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        clean = to_float(images[idx])
        inputs = noise(clean, noise_generator) if noise is not None else clean
        if backward is None:
            loss = _loss(model, inputs, clean, precision)
            optimizer.zero_grad(set_to_none=True)
            if precision is None:
                loss.backward()
            else:
                precision.backward(loss)
        else:
            loss = backward(inputs, clean, idx.numel() == batch_size)
        if precision is None:
            optimizer.step()
        else:
            precision.step(optimizer)
        total += loss.detach() * idx.numel()
    return (total / n).item()


def _loss(model: torch.nn.Module, inputs: torch.Tensor, clean: torch.Tensor,
          precision: Precision | None) -> torch.Tensor:
    if precision is None:
        return F.mse_loss(model(inputs), clean)
    with precision.autocast():
        return F.mse_loss(model(inputs), clean)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device if device.type != "mps" else "cpu")
    return generator.manual_seed(seed)

