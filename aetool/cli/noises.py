"""`aetool noises` (not built yet)."""

from aetool.cli.app import app
from aetool.cli.common import not_built


@app.command()
def noises() -> None:
    """Not built yet."""
    not_built("noises")
