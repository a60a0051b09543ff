"""An aetool plugin: salt-and-pepper (impulse) noise, as in MNIST-C's `impulse_noise`.

A fraction `amount` of the pixels is replaced: by 1 (salt) with probability `salt_vs_pepper`,
otherwise by 0 (pepper), like `skimage.util.random_noise(mode="s&p")`. MNIST-C uses amounts
0.03 to 0.27 over its five severities.
"""

import torch

from aetool.noises import Noise, NoiseParam, rand_like
from aetool.plugins.hookspecs import hookimpl


def salt_and_pepper(
    x: torch.Tensor, generator: torch.Generator, amount: float = 0.1, salt_vs_pepper: float = 0.5
) -> torch.Tensor:
    """Set a fraction `amount` of pixels to 1 (salt) or 0 (pepper), drawn from `generator`."""
    draw = rand_like(x, generator)  # one draw per pixel decides: salt, pepper or untouched
    salt = draw < amount * salt_vs_pepper
    pepper = (draw >= amount * salt_vs_pepper) & (draw < amount)
    return x.masked_fill(salt, 1.0).masked_fill(pepper, 0.0)


@hookimpl
def register_noises(register):
    register(Noise(
        name="saltpepper",
        description="Impulse noise (MNIST-C): a fraction of pixels set to 1 (salt) or 0 (pepper).",
        apply=salt_and_pepper,
        params=(
            NoiseParam("amount", float, 0.1, "fraction of pixels replaced", minimum=0, maximum=1),
            NoiseParam("salt_vs_pepper", float, 0.5, "share of replaced pixels set to 1",
                       minimum=0, maximum=1),
        ),
    ))
