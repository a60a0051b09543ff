"""Built-in model `course`: the report's 3-conv + 2-linear autoencoder with a mirrored decoder.

The default model. Its layer names match the seed report's, so the report's checkpoints load
unchanged (`aetool.model.Autoencoder`).
"""

from __future__ import annotations

from aetool.hookspecs import hookimpl
from aetool.model import Autoencoder
from aetool.models import Model


@hookimpl
def register_models(register):
    register(Model(
        name="course",
        description="The report's autoencoder: 3 strided convolutions (8, 16, 32 channels) and "
        "2 linear layers (64 units), mirrored in the decoder.",
        build=Autoencoder,
    ))
