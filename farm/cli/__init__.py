"""`farm`, the command line: commands (farm.cli.commands), their options and errors (common), and what
they print in a terminal (terminal)."""

from farm.cli.commands import app

__all__ = ["app"]
