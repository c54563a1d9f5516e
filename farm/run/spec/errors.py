"""The error every spec problem is raised as: one line, whatever the user's values hold."""

from __future__ import annotations


class SpecError(ValueError):
    """An invalid sweep spec; str() is the one line shown to the user."""


def one_line(message: str, limit: int = 2000) -> str:
    """Messages carry what the user wrote (keys, values, paths): newlines and tabs in them must not
    break the one-line promise, and a 5,000-character value is cut, not printed whole."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
