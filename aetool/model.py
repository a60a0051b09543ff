"""The course autoencoder: 3 conv + 2 linear layers, a mirrored decoder, any encoding dimension.

Layer names and order match the seed report's `Autoencoder`, so its `state_dict` checkpoints
load unchanged (`encoder_cnn.{0,2,4}`, `encoder_lin.{0,2}`, `decoder_lin.{0,2}`,
`decoder_conv.{0,2,4}`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aetool.errors import AetoolError
from aetool.files import load_torch


class Autoencoder(nn.Module):
    """28x28 image -> `encoding_dim` numbers -> 28x28 image in [0, 1]."""

    def __init__(self, encoding_dim: int = 4) -> None:
        super().__init__()
        if encoding_dim < 1:
            raise AetoolError(f"The encoding dimension must be at least 1, got {encoding_dim}.")
        self.encoding_dim = encoding_dim
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),  # 28 -> 14
            nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 14 -> 7
            nn.ReLU(True),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),  # 7 -> 3
            nn.ReLU(True),
        )
        self.encoder_lin = nn.Sequential(
            nn.Linear(3 * 3 * 32, 64),
            nn.ReLU(True),
            nn.Linear(64, encoding_dim),
        )
        self.decoder_lin = nn.Sequential(
            nn.Linear(encoding_dim, 64),
            nn.ReLU(True),
            nn.Linear(64, 3 * 3 * 32),
            nn.ReLU(True),
        )
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0),  # 3 -> 7
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),  # 7 -> 14
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),  # 14 -> 28
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, 28, 28) -> codes (N, encoding_dim)."""
        return self.encoder_lin(self.encoder_cnn(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, encoding_dim) -> images (N, 1, 28, 28) in [0, 1]."""
        return torch.sigmoid(self.decoder_conv(self.decoder_lin(z).view(-1, 32, 3, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encoding_dim_of(state_dict: dict[str, torch.Tensor]) -> int:
    """Read the encoding dimension off a state_dict (the last encoder layer's output size)."""
    try:
        return int(state_dict["encoder_lin.2.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        raise AetoolError("This state_dict is not an aetool/course autoencoder.") from None


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (`weights_only=True`), accepting a bare state_dict or a run's."""
    path = Path(path)
    obj = load_torch(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AetoolError(f"Checkpoint {path} does not hold a model state_dict.")
    return obj


def load_model(
    path: Path | str, encoding_dim: int | None = None, device: torch.device | str = "cpu"
) -> Autoencoder:
    """Build an `Autoencoder` from a checkpoint file; the ED is read from it when not given."""
    state = load_state_dict_file(path)
    found = encoding_dim_of(state)
    if encoding_dim is not None and encoding_dim != found:
        raise AetoolError(f"Checkpoint {path} has encoding dimension {found}, not {encoding_dim}.")
    model = Autoencoder(found)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise AetoolError(f"Checkpoint {path} does not match the course autoencoder's layers "
                          "and shapes.") from None
    return model.to(device).eval()
