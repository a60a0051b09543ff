"""Built-in noise `occlusion`: set a size x size square of every image to 0.

By default the square sits at one of the four corners, drawn per image (for size 14 on
28x28 images: one of the four quadrants, as in the report); `position=random` places it
anywhere inside the image. The mask is built for the whole batch at once.
"""

from __future__ import annotations

import torch

from aetool.errors import AetoolError
from aetool.noises import Noise, NoiseParam, randint_for
from aetool.plugins.hookspecs import hookimpl


def occlude(
    x: torch.Tensor, generator: torch.Generator, size: int = 14, position: str = "quadrant"
) -> torch.Tensor:
    """x with a size x size square set to 0 in each image (batch shape (N, ..., H, W))."""
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if size > min(height, width):
        raise AetoolError(f"occlusion size {size} does not fit {height}x{width} images.")
    if position == "quadrant":
        corner = randint_for(x, 0, 4, (n,), generator)
        top = (corner // 2) * (height - size)
        left = (corner % 2) * (width - size)
    else:
        top = randint_for(x, 0, height - size + 1, (n,), generator)
        left = randint_for(x, 0, width - size + 1, (n,), generator)
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    mask = mask.view(n, *([1] * (x.dim() - 3)), height, width)
    return x.masked_fill(mask, 0.0)


@hookimpl
def register_noises(register):
    register(Noise(
        name="occlusion",
        description="Set a size x size square to 0: one of the four quadrants per image "
        "(the report), or anywhere with position=random.",
        apply=occlude,
        params=(
            NoiseParam("size", int, 14, "side of the occluded square in pixels",
                       minimum=1, maximum=28),
            NoiseParam("position", str, "quadrant", "quadrant: a corner drawn per image; "
                       "random: anywhere in the image", choices=("quadrant", "random")),
        ),
    ))
