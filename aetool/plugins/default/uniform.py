"""Built-in noise `uniform`: add U[low, high) to every pixel (no clipping unless asked)."""

from __future__ import annotations

import torch

from aetool.noises import Noise, NoiseParam, rand_like
from aetool.plugins.hookspecs import hookimpl


def add_uniform(
    x: torch.Tensor, generator: torch.Generator, low: float = 0.0, high: float = 1.0,
    clip: bool = False,
) -> torch.Tensor:
    """x + U[low, high), optionally clipped back to [0, 1]."""
    corrupted = x + (low + (high - low) * rand_like(x, generator))
    return corrupted.clamp_(0.0, 1.0) if clip else corrupted


def check_range(low: float, high: float, clip: bool = False) -> None:
    """`low` may not be above `high`."""
    if low > high:
        raise ValueError(f"low must not be above high, got low={low:g}, high={high:g}")


@hookimpl
def register_noises(register):
    register(Noise(
        name="uniform",
        description="Add U[low, high) to every pixel, as in the report (no clipping by default).",
        apply=add_uniform,
        params=(
            NoiseParam("low", float, 0.0, "lower end of the added noise"),
            NoiseParam("high", float, 1.0, "upper end of the added noise (excluded)"),
            NoiseParam("clip", bool, False, "clip the result to [0, 1]"),
        ),
        validate=check_range,
    ))
