"""An aetool model plugin: a fully connected autoencoder (784 -> hidden... -> ED -> ... -> 784).

Install it with `pip install -e plugins/aetool-mlp`; `aetool models` then lists `mlp`, and
`aetool fit --model mlp:hidden=256` trains it like any built-in model.
"""

from __future__ import annotations

import torch
from torch import nn

from aetool.models import Model
from aetool.plugins.hookspecs import hookimpl
from aetool.plugins.params import Param


class MLPAutoencoder(nn.Module):
    """Flattened 28x28 image -> `layers` ReLU layers of `hidden` units -> `ed` numbers, and the
    mirror image back to a 28x28 image in [0, 1]."""

    def __init__(self, ed: int, hidden: int = 512, layers: int = 2) -> None:
        super().__init__()
        widths = [784] + [max(hidden // 2**i, ed) for i in range(layers)]
        encoder: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths, widths[1:], strict=False):
            encoder += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*encoder, nn.Linear(widths[-1], ed))
        decoder: list[nn.Module] = [nn.Linear(ed, widths[-1]), nn.ReLU()]
        for a, b in zip(widths[:0:-1], widths[-2:0:-1], strict=False):
            decoder += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*decoder, nn.Linear(widths[1], 784))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@hookimpl
def register_models(register):
    register(Model(
        name="mlp",
        description="A fully connected autoencoder: ReLU layers halving from `hidden` units.",
        build=MLPAutoencoder,
        params=(
            Param("hidden", int, 512, "units of the first hidden layer", minimum=1),
            Param("layers", int, 2, "hidden layers on each side", minimum=1, maximum=8),
        ),
    ))
