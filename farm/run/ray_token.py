"""Where Ray's authentication token comes from, as Ray 2.5x looks for it (ray._private.authentication and its
C++ AuthenticationTokenLoader): `farm doctor` says it, without importing Ray.

RAY_AUTH_MODE=token requires a token, =disabled turns tokens off; unset, a local cluster that farm starts turns
token authentication on and writes a token file if none exists. The token is the first of: RAY_AUTH_TOKEN (the
token itself), the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"  # under the home directory


def token_source(environ: Mapping[str, str], home: Path) -> str:
    """One line: whether Ray uses a token here and which of its sources gives it."""
    mode = environ.get(MODE_ENV)
    if mode is not None and mode.lower() == "disabled":
        return f"none: {MODE_ENV}=disabled turns Ray's token authentication off"
    how = f"{MODE_ENV}={mode}" if mode is not None else f"{MODE_ENV} unset: a local Ray turns tokens on"
    if environ.get(TOKEN_ENV):
        return f"the {TOKEN_ENV} environment variable ({how})"
    if path := environ.get(TOKEN_PATH_ENV):
        state = "" if Path(path).is_file() else ", which does not exist: Ray will refuse to start"
        return f"the file {path}, named by {TOKEN_PATH_ENV}{state} ({how})"
    default = home / DEFAULT_TOKEN_FILE
    if default.is_file():
        return f"the file {default} ({how})"
    if mode is not None and mode.lower() == "token":
        return f"missing: {how} but neither {TOKEN_ENV}, {TOKEN_PATH_ENV} nor {default} gives a token"
    return f"the file {default}, which a local Ray writes on its first start ({how})"
