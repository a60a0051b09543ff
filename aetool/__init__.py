"""aetool: train, search, stress-test and explain convolutional autoencoders on MNIST-like
images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aetool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from aetool.errors import AetoolError  # noqa: E402

__all__ = ["AetoolError", "__version__"]
