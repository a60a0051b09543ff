"""Choosing the torch device: the best available by default, or the one the user names."""

from __future__ import annotations

import torch

from aetool.errors import SettingError


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def best_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


_CHOICES = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | None = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:1" or "mps" into a usable device, or explain why not."""
    if name is None or name == "auto":
        return best_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SettingError("device", f"Unknown device {name!r}: {_CHOICES}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError("device", "CUDA was requested but torch sees no CUDA device here.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingError(
                "device", f"CUDA device {device.index} does not exist "
                f"(this machine has {torch.cuda.device_count()})."
            )
    elif device.type == "mps" and not mps_available():
        raise SettingError("device", "MPS was requested but it is not available on this machine.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SettingError("device", f"Unsupported device {name!r}: {_CHOICES}.")
    return device


def device_description(device: torch.device) -> str:
    """A human name for the device, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
