"""`aetool embed` (not built yet)."""

from aetool.cli.app import app
from aetool.cli.common import not_built


@app.command()
def embed() -> None:
    """Not built yet."""
    not_built("embed")
