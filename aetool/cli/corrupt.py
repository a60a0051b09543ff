"""`aetool corrupt` (not built yet)."""

from aetool.cli.app import app
from aetool.cli.common import not_built


@app.command()
def corrupt() -> None:
    """Not built yet."""
    not_built("corrupt")
