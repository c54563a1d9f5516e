"""What a factory source (`package.module:function`) returns, found before any work: the factory is
imported and called once with the model's kwargs in a child interpreter, so the driver itself never
imports torch (docs/architecture.md) and a factory that hangs or crashes costs it nothing.

Only a clear answer is reported: the call returned something that is not a `torch.nn.Module`. A child
that raises, crashes or runs past its time limit says nothing here: the export stage runs the factory
again and records its own error and traceback (a driver may lack what the workers have, torch included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

FACTORY_CALL_TIMEOUT_S = 30.0

# The child: the factory's prints go to stderr, so stdout carries one JSON line. torch is read from
# sys.modules rather than imported: what a factory built without importing torch is no Module.
CHILD = r"""
import contextlib, importlib, json, os, sys
search, module, function, kwargs = json.loads(sys.argv[1])
sys.path[:0] = search
with contextlib.redirect_stdout(sys.stderr):
    made = getattr(importlib.import_module(module), function)(**kwargs)
torch = sys.modules.get("torch")
kind = type(made)
name = "None" if made is None else kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
print(json.dumps({"module": torch is not None and isinstance(made, torch.nn.Module), "type": name}), flush=True)
os._exit(0)  # torch's interpreter teardown takes longer than the answer
"""


def factory_return_problem(source: str, kwargs: Mapping[str, Any], search: Sequence[str],
                           timeout_s: float = FACTORY_CALL_TIMEOUT_S) -> str | None:
    """`factory S returned T, not a torch.nn.Module` when calling the factory with `kwargs` returns a T;
    None when it returns a Module, or when the child gives no clear answer (see the module's docstring)."""
    module, _, function = source.partition(":")
    try:
        argument = json.dumps([list(search), module, function, dict(kwargs)])
    except (TypeError, ValueError):
        return None  # kwargs YAML made into something JSON cannot carry (a date): the export stage calls it
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, argument], capture_output=True, text=True,
                              timeout=timeout_s, cwd=os.getcwd(), stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except ValueError:
        return None
    if answer.get("module", True):
        return None
    return f"factory {source} returned {answer.get('type')}, not a torch.nn.Module"
