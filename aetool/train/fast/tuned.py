"""The `tuned` and `compile` epochs: the reference step with the device's cheap wins, and
optionally `torch.compile` of forward + loss."""

from __future__ import annotations

import warnings

import torch

from aetool.errors import first_line
from aetool.train.fast.cpu import use_fast_cpu_layers
from aetool.train.fast.optim import (
    configure_optimizer,
    fused_supported,
    is_adam_family,
    reconstruction_loss,
    to_channels_last,
)
from aetool.train.fast.precision import Precision, as_precision
from aetool.train.step import NoiseFn, train_epoch


class EagerEpoch:
    """`tuned` and `compile` modes: the reference loop with tuned kernels, maybe compiled."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        compile_model: bool = False,
        fast_layers: bool = True,
        fused_adam: bool = True,
        precision: Precision | str | None = None,
    ) -> None:
        self.device = device
        self.precision = as_precision(precision, device)
        self.fast_layers = fast_layers
        self.fused_adam = fused_adam
        self.compile_model = compile_model
        self.mode = "compile" if compile_model else "tuned"
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._prepare(model, optimizer)

    def _prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.eager_loss = reconstruction_loss(model, self.precision)
        self.loss = self.eager_loss
        if self.compile_model:
            try:
                self.loss = torch.compile(self.eager_loss)
            except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
                self._give_up_compiling(exc)

    def _give_up_compiling(self, exc: BaseException) -> None:
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {first_line(exc)}); training continues "
            "without compilation (mode 'tuned').",
            RuntimeWarning,
            stacklevel=3,
        )
        self.loss = self.eager_loss
        self.compile_model = False
        self.mode = "tuned"

    def _loss_and_backward(
        self, inputs: torch.Tensor, clean: torch.Tensor, full: bool
    ) -> torch.Tensor:
        optimizer = self.optimizer
        if full and self.loss is not self.eager_loss:
            try:
                loss = self.loss(inputs, clean)
                optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss)
                return loss
            except Exception as exc:  # noqa: BLE001 - compilation errors surface on first use
                self._give_up_compiling(exc)
        loss = self.eager_loss(inputs, clean)
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        return loss

    def __call__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        batch_size: int,
        shuffle: torch.Generator,
        noise: NoiseFn | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> float:
        if model is not self.model or optimizer is not self.optimizer:
            self._prepare(model, optimizer)
        # Every call, so that states loaded in between (a resumed run) are adapted as well.
        if images.device.type == "cpu":
            to_channels_last(model, optimizer)
            if self.fast_layers:
                use_fast_cpu_layers(model)
        if is_adam_family(optimizer):
            configure_optimizer(optimizer, fused=self.fused_adam and fused_supported(images.device))

        return train_epoch(model, optimizer, images, batch_size, shuffle, noise,
                           noise_generator, backward=self._loss_and_backward,
                           precision=self.precision)
