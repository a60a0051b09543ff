"""Optimizer and model set-up shared by the fast modes: fused or capturable Adam,
channels-last parameters, the reconstruction loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from aetool.train.fast.precision import Precision

# train_epoch(model, optimizer, images, batch_size, shuffle, noise=None, noise_generator=None)
TrainEpochFn = Callable[..., float]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

def fused_supported(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for this device type."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # an older or newer torch without the helper
        return device.type == "cuda"


def configure_optimizer(
    optimizer: torch.optim.Optimizer, *, fused: bool = False, capturable: bool = False
) -> None:
    """Switch an Adam-family optimizer between its implementations (values are kept).

    Step counters move to the parameter's device as float32 when the fused or capturable
    implementation needs them there, and back to the CPU otherwise, as Adam itself does.
    """
    for group in optimizer.param_groups:
        if fused:
            group["fused"], group["foreach"], group["capturable"] = True, False, False
        elif capturable:
            group["fused"], group["foreach"], group["capturable"] = None, True, True
        else:
            group["fused"], group["foreach"], group["capturable"] = None, None, False
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if not torch.is_tensor(step):
                continue
            if fused or capturable:
                moved = step.to(device=p.device, dtype=torch.float32)
            else:
                moved = step.to(device="cpu")
            if moved is not step:
                optimizer.state[p]["step"] = moved


def is_adam_family(optimizer: torch.optim.Optimizer) -> bool:
    return all(k in optimizer.defaults for k in ("capturable", "fused", "foreach"))


def to_channels_last(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Channels-last 4-d parameters (in place, same Parameter objects) and optimizer state."""
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        if p.dim() != 4:
            continue
        if p.grad is not None and not p.grad.is_contiguous(memory_format=torch.channels_last):
            p.grad = None
        state = optimizer.state.get(p, {})
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == p.shape:
                state[key] = value.contiguous(memory_format=torch.channels_last)


def reconstruction_loss(model: torch.nn.Module, precision: Precision | None = None) -> LossFn:
    """The training loss of `model`, its forward pass under `precision`'s autocast (the loss
    itself is float32: autocast runs `mse_loss` in float32)."""
    def loss(inputs: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if precision is None:
            return F.mse_loss(model(inputs), clean)
        with precision.autocast():
            return F.mse_loss(model(inputs), clean)

    return loss
