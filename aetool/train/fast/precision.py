"""Training precision (`--precision`): Lightning's names, and the autocast context every
training loop runs its forward pass in.

- `32`: plain float32 (the default).
- `bf16-mixed`: forward (and so backward) under `torch.autocast` to bfloat16; weights, Adam's
  state and the loss stay float32 (autocast runs `mse_loss` in float32).
- `16-mixed` (CUDA only): autocast to float16 with a `torch.amp.GradScaler`.
- `auto`: `bf16-mixed` where the hardware runs bf16 natively and the accuracy check holds for
  every built-in model (`AUTO_BF16_CHECKED`), else `32`. Today that is `32` everywhere.

Evaluation (validation and test MSE, `steps.evaluate`) always runs in float32, so figures of
runs trained in different precisions compare directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from aetool.errors import SettingError

PRECISIONS = ("32", "bf16-mixed", "16-mixed", "auto")
DEFAULT_PRECISION = "32"
# `auto` stays `32` until the committed accuracy results (benchmarks/precision_check.py) show
# `bf16-mixed` within 1% of `32` in test MSE for every built-in model; not yet measured.
AUTO_BF16_CHECKED = False

_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: str) -> None:
    """Refuse a name that is not one of `PRECISIONS` (`SettingError` naming `precision`)."""
    if precision not in PRECISIONS:
        raise SettingError("precision", f"precision must be one of {', '.join(PRECISIONS)}, "
                           f"got {precision!r}.")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 arithmetic natively (CUDA with bf16 support; a CPU with
    AVX512_BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        flags = {word for line in text.splitlines() if line.startswith("flags")
                 for word in line.split(":", 1)[-1].split()}
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision `precision` means on `device`; refuses what it cannot run."""
    check_precision(precision)
    device = torch.device(device)
    if precision == "auto":
        return "bf16-mixed" if AUTO_BF16_CHECKED and native_bf16(device) else "32"
    if precision == "16-mixed" and device.type != "cuda":
        raise SettingError("precision", f"precision '16-mixed' needs a CUDA device, not "
                           f"{device.type}; use bf16-mixed or 32.")
    return precision


class Precision:
    """How a training loop runs its steps: `autocast()` around the forward pass and loss,
    `backward(loss, optimizer)` and `step(optimizer)` in place of `loss.backward()` and
    `optimizer.step()` (a `GradScaler` scales them for `16-mixed`)."""

    def __init__(self, name: str = DEFAULT_PRECISION, device: torch.device | str = "cpu",
                 cache_enabled: bool = True) -> None:
        self.name = resolve_precision(name, device)
        self.device = torch.device(device)
        self.dtype = _DTYPES.get(self.name)
        self.cache_enabled = cache_enabled
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.name == "16-mixed"
                       else None)

    @property
    def mixed(self) -> bool:
        return self.dtype is not None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass's context: autocast to the precision's dtype, or nothing."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype,
                            cache_enabled=self.cache_enabled):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def as_precision(precision: Precision | str | None, device: torch.device | str) -> Precision:
    """A `Precision` from a name (None: `32`) or as it is."""
    if isinstance(precision, Precision):
        return precision
    return Precision(precision or DEFAULT_PRECISION, device)
