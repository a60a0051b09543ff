"""Built-in model `course`: the report's 3-conv + 2-linear autoencoder with a mirrored decoder.

The default model. Its layer names match the seed report's, so the report's checkpoints load
unchanged (`aetool.models.Autoencoder`).
"""

from __future__ import annotations

from aetool.models import Autoencoder, Model
from aetool.plugins.hookspecs import hookimpl


@hookimpl
def register_models(register):
    register(Model(
        name="course",
        description="The report's autoencoder: 3 strided convolutions (8, 16, 32 channels) and "
        "2 linear layers (64 units), mirrored in the decoder.",
        build=Autoencoder,
    ))
