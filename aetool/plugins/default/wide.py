"""Built-in model `wide`: a wider autoencoder with group normalisation, SiLU and a wide linear
bottleneck, for encoding dimensions where the course model runs out of capacity.

Encoder: three 3x3 convolutions (28 -> 14 -> 7 -> 7, `width`, 2x and 4x `width` channels), each
followed by GroupNorm and SiLU, then Linear(4 `width` x 7 x 7 -> `hidden`), SiLU, `depth` - 1
residual layers h + SiLU(Linear(h)), Linear(-> ED). Decoder: the mirror image, with
transposed 4x4 convolutions for the two upsamplings and a sigmoid at the end. GroupNorm keeps
no running statistics, so training, evaluation, the vmap-batched search and CUDA graphs all see
the same function; SiLU leaves no dead units (the course model loses a third of its ReLUs in
its first epoch).
"""

from __future__ import annotations

import torch
from torch import nn

from aetool.models import Model
from aetool.plugins.hookspecs import hookimpl
from aetool.plugins.params import Param


def _norm(channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if groups else nn.Identity()


class _Residual(nn.Module):
    """x + SiLU(Linear(x)): a hidden layer that passes its input on unchanged beside what it
    adds, so a stack of them trains (plain Linear + SiLU stacks of 4 and more collapsed to the
    mean image at ED 4, see benchmarks/README.md)."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.linear = nn.Linear(units, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


def _hidden(units: int, depth: int) -> list[nn.Module]:
    """The residual layers that make `depth` hidden layers next to the code."""
    return [_Residual(units) for _ in range(depth - 1)]


class WideAutoencoder(nn.Module):
    """28x28 image -> `ed` numbers -> 28x28 image in [0, 1]."""

    def __init__(self, ed: int, width: int = 16, hidden: int = 512, groups: int = 8,
                 depth: int = 1) -> None:
        super().__init__()
        a, b, c = width, 2 * width, 4 * width
        self.channels = c
        self.encoder = nn.Sequential(
            nn.Conv2d(1, a, 3, stride=2, padding=1), _norm(a, groups), nn.SiLU(),  # 28 -> 14
            nn.Conv2d(a, b, 3, stride=2, padding=1), _norm(b, groups), nn.SiLU(),  # 14 -> 7
            nn.Conv2d(b, c, 3, padding=1), _norm(c, groups), nn.SiLU(),  # 7 -> 7
            nn.Flatten(), nn.Linear(c * 49, hidden), nn.SiLU(), *_hidden(hidden, depth),
            nn.Linear(hidden, ed),
        )
        self.decoder_lin = nn.Sequential(
            nn.Linear(ed, hidden), nn.SiLU(), *_hidden(hidden, depth),
            nn.Linear(hidden, c * 49), nn.SiLU(),
        )
        self.decoder_conv = nn.Sequential(
            nn.Conv2d(c, b, 3, padding=1), _norm(b, groups), nn.SiLU(),  # 7 -> 7
            nn.ConvTranspose2d(b, a, 4, stride=2, padding=1), _norm(a, groups), nn.SiLU(),  # 14
            nn.ConvTranspose2d(a, 8, 4, stride=2, padding=1), _norm(8, groups and 8), nn.SiLU(),
            nn.Conv2d(8, 1, 3, padding=1),  # 28 -> 28
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder_conv(self.decoder_lin(z).view(-1, self.channels, 7, 7)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build(ed: int, width: int = 16, hidden: int = 512, groups: int = 8,
          depth: int = 1) -> WideAutoencoder:
    if groups and any(ch % groups for ch in (width, 2 * width, 4 * width)):
        raise ValueError(f"width {width} must be a multiple of groups {groups}")
    return WideAutoencoder(ed, width, hidden, groups, depth)


@hookimpl
def register_models(register):
    register(Model(
        name="wide",
        description="Wider convolutions with GroupNorm and SiLU, a wide linear bottleneck, "
        "mirrored decoder.",
        build=build,
        params=(
            Param("width", int, 16, "channels of the first convolution (then 2x, 4x)",
                  minimum=1, maximum=256),
            Param("hidden", int, 512, "units of the linear layer next to the code",
                  minimum=1, maximum=8192),
            Param("groups", int, 8, "GroupNorm groups (0: no normalisation)",
                  minimum=0, maximum=64),
            Param("depth", int, 1, "hidden layers each side of the code (the extra ones residual)",
                  minimum=1, maximum=8),
        ),
    ))
