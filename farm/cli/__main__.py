"""`python -m farm.cli`."""

from farm.cli.commands import app

app()
