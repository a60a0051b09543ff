"""The hooks an aetool plugin can implement (pluggy project name "aetool").

A plugin is any module or object with functions decorated by `hookimpl`, registered through
the `aetool` entry point group (third-party packages) or `aetool.plugins.DEFAULT_PLUGINS`
(the built-ins). docs/plugins.md documents every hook here with its exact signature.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("aetool")
hookimpl = HookimplMarker("aetool")


@hookspec
def register_noises(register):
    """Register noises by calling `register(Noise(...))` once for each noise."""


@hookspec
def register_models(register):
    """Register architectures by calling `register(Model(...))` once for each model."""


@hookspec
def register_datasets(register):
    """Register data sets by calling `register(Dataset(...))` once for each data set."""
