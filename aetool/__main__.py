"""`python -m aetool` runs the command line."""

from aetool.cli import main

main()
