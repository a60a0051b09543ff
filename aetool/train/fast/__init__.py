"""Fast training epochs: the step of `steps.train_epoch`, run the quickest way a device allows.

`make_train_epoch(model, optimizer, device, mode)` returns a function with the signature and
meaning of `steps.train_epoch` (one pass over the images in the seeded random order, the
mean training loss back), so the training loop can swap one for the other. Every mode computes
the same losses as eager mode within float tolerance; only the kernels and their scheduling
differ.

Modes:
- `eager`: `steps.train_epoch` itself, unchanged: the reference, and the one to debug with.
- `tuned`: eager kernels with the device's cheap wins. On the CPU: channels-last parameters
  (oneDNN's fast path for the transposed convolutions), a GEMM-based forward for transposed
  convolutions with few output channels (`SmallOutputConvTranspose`; oneDNN is slowest
  there), and the fused Adam kernel. On CUDA and MPS: the fused Adam kernel.
- `compile`: `torch.compile` of forward + loss on top of `tuned` (full batches only). If
  compilation fails it warns once and carries on in `tuned` mode.
- `graph` (CUDA only): the whole step (forward, backward, Adam with `capturable=True` and the
  learning rate in a device tensor) captured once in a CUDA graph and replayed for every full
  batch; batches are gathered from the device-resident images into a static buffer, and a last
  partial batch runs eagerly.
- Every mode runs in the precision it is given (`aetool.train.fast.precision`: `32`, `bf16-mixed`,
  `16-mixed` on CUDA but not in `graph` mode): the forward pass and loss under its autocast.
- `auto`: `tuned` on CUDA and the CPU, `eager` on MPS. (`graph` becomes the CUDA default once
  `tests/train/test_fast.py -k graph` and `benchmarks/speed.py` have been run on a GPU.) On a
  2-core CPU `tuned` trained about 1.45x faster than `eager` and `compile` was slower than
  `tuned` (and compiles for 10-30 s), see benchmarks/README.md.

The modes other than `eager` adjust the optimizer they are given (its `fused`, `foreach` and
`capturable` flags, and the device of its step counters), and `tuned` on the CPU converts the
model's 4-d parameters to channels-last and swaps the forward of its small-output transposed
convolutions, in place (`use_plain_layers` undoes the latter). Values, parameter objects and
`state_dict` keys are untouched, so checkpoints and optimizer states load in any mode.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from aetool.errors import AetoolError, SettingError
from aetool.train.fast.cpu import (
    SMALL_OUTPUT_CHANNELS,
    SmallOutputConvTranspose,
    conv_transpose_gemm,
    use_fast_cpu_layers,
    use_plain_layers,
)
from aetool.train.fast.graph import GraphEpoch
from aetool.train.fast.optim import (
    LossFn,
    TrainEpochFn,
    configure_optimizer,
    fused_supported,
)
from aetool.train.fast.precision import PRECISIONS, Precision, as_precision, resolve_precision
from aetool.train.fast.tuned import EagerEpoch
from aetool.train.step import train_epoch

__all__ = [
    "MODES", "PRECISIONS", "SMALL_OUTPUT_CHANNELS", "EagerEpoch", "GraphEpoch", "LossFn",
    "Precision", "SmallOutputConvTranspose", "TrainEpochFn", "configure_optimizer",
    "conv_transpose_gemm", "fused_supported", "make_train_epoch", "resolve_mode",
    "resolve_precision", "use_fast_cpu_layers", "use_plain_layers",
]
MODES = ("auto", "graph", "compile", "tuned", "eager")


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """The concrete mode `mode` means on `device`; explains modes the device cannot run."""
    device = torch.device(device)
    if mode not in MODES:
        raise AetoolError(f"Unknown training mode {mode!r}; choose one of: {', '.join(MODES)}.")
    if mode == "auto":
        # `graph` is opt-in until it has been checked on a GPU (tests/train/test_fast.py -k graph).
        return {"cuda": "tuned", "cpu": "tuned"}.get(device.type, "eager")
    if mode == "graph" and device.type != "cuda":
        raise AetoolError(f"Training mode 'graph' needs a CUDA device, not {device.type}.")
    return mode


def make_train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    mode: str = "auto",
    precision: Precision | str | None = None,
) -> TrainEpochFn:
    """A drop-in for `steps.train_epoch`, prepared for `model` and `optimizer` on `device`,
    training in `precision` (a name of `PRECISIONS` or a `Precision`; None: `32`).

    The returned function has a `mode` attribute naming the mode it runs. It may be called with
    other model or optimizer objects; it then prepares again for those.
    """
    device = torch.device(device)
    mode = resolve_mode(mode, device)
    precision = as_precision(precision, device)
    if mode == "eager":
        if not precision.mixed:  # the reference itself
            return _Named(train_epoch, "eager")
        return _Named(functools.partial(train_epoch, precision=precision), "eager")
    if mode == "graph":
        if precision.scaler is not None:
            raise SettingError("precision", "precision '16-mixed' cannot run in training mode "
                               "'graph' (its gradient scaler cannot be captured); use "
                               "bf16-mixed or mode tuned.")
        return GraphEpoch(model, optimizer, device, precision=precision.name)
    return EagerEpoch(model, optimizer, device, compile_model=(mode == "compile"),
                      precision=precision)


class _Named:
    """A function with a `mode` attribute."""

    def __init__(self, fn: TrainEpochFn, mode: str) -> None:
        self.fn, self.mode = fn, mode

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return self.fn(*args, **kwargs)

