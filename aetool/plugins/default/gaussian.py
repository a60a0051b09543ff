"""Built-in noise `gaussian`: add N(0, sigma) to every pixel (no clipping unless asked)."""

from __future__ import annotations

import torch

from aetool.noises import Noise, NoiseParam, randn_like
from aetool.plugins.hookspecs import hookimpl


def add_gaussian(
    x: torch.Tensor, generator: torch.Generator, sigma: float = 0.5, clip: bool = False
) -> torch.Tensor:
    """x + sigma * N(0, 1), optionally clipped back to [0, 1]."""
    corrupted = x + sigma * randn_like(x, generator)
    return corrupted.clamp_(0.0, 1.0) if clip else corrupted


def gaussian_label(sigma: float, clip: bool) -> str:
    return f"N(0,{sigma:g})" + (" clipped" if clip else "")


@hookimpl
def register_noises(register):
    register(Noise(
        name="gaussian",
        description="Add N(0, sigma) to every pixel, as in the report (no clipping by default).",
        apply=add_gaussian,
        params=(
            NoiseParam("sigma", float, 0.5, "standard deviation of the added noise", minimum=0),
            NoiseParam("clip", bool, False, "clip the result to [0, 1]"),
        ),
        label=gaussian_label,
    ))
