"""A factory that returns something other than a torch.nn.Module is refused before any work (issue 21,
must-have 1): `farm sweep` calls it once in a child interpreter, exits 2 with one line naming the spec,
models[i].source and the type returned, and creates no store. A child that raises, hangs or gives no
answer says nothing: the export stage reports those with their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import CALIBRATION_DATA, REPO
from workers.factory_call import factory_return_problem

FACTORIES = '''\
import time

from torch import nn


def net(kind: str = "dict"):
    """What it returns depends on the spec's kwargs, so the check proves they reach the call."""
    if kind == "module":
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    return {"layers": 2}
'''

NO_TORCH = '''\
import time


def table():
    return {"layers": 2}


def nothing():
    pass


def raises():
    raise RuntimeError("the checkpoint is not there")


def sleeps():
    time.sleep(60)
'''


def _package(root: Path) -> None:
    (root / "mynets").mkdir()
    (root / "mynets" / "__init__.py").write_text("")
    (root / "mynets" / "layers.py").write_text(FACTORIES)
    (root / "mynets" / "plain.py").write_text(NO_TORCH)


def test_a_factory_returning_a_dict_is_refused_by_the_cli_before_any_work(tmp_path: Path) -> None:
    """models[0] returns a Module (kind: module reached the call), models[1] the same factory's dict:
    the one line names models[1].source and `dict`, exit 2, no store, no Ray."""
    _package(tmp_path)
    spec = {
        "name": "factories",
        "models": [
            {"name": "good", "source": "mynets.layers:net", "kwargs": {"kind": "module"}, "input_shape": [3, 32, 32]},
            {"name": "bad", "source": "mynets.layers:net", "input_shape": [3, 32, 32]},
        ],
        "backends": {"onnxruntime": {"intra_op_threads": 1}},
        "fidelity": {"data": str(CALIBRATION_DATA), "samples": 2},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(path), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=os.environ | {"PYTHONPATH": str(REPO), "RAY_ADDRESS": ""})
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        f"error: {path}: models[1].source: factory mynets.layers:net returned dict, not a torch.nn.Module"], done
    assert done.stdout == ""
    assert not (tmp_path / "data").exists(), "a refused spec must not create a store"


def test_what_the_factory_returned_is_named_by_its_type(tmp_path: Path) -> None:
    _package(tmp_path)
    search = [str(tmp_path)]
    assert factory_return_problem("mynets.plain:table", {}, search) == "factory mynets.plain:table returned dict, not a torch.nn.Module"
    assert factory_return_problem("mynets.plain:nothing", {}, search) == "factory mynets.plain:nothing returned None, not a torch.nn.Module"
    assert factory_return_problem("mynets.layers:net", {"kind": "module"}, search) is None


def test_a_factory_that_raises_or_hangs_is_left_to_the_export_stage(tmp_path: Path) -> None:
    """No answer is no verdict: a raise (a checkpoint missing on this machine), a hang past the limit, a
    factory the child cannot import (nothing on its path) or kwargs it refuses all give None."""
    _package(tmp_path)
    search = [str(tmp_path)]
    assert factory_return_problem("mynets.plain:raises", {}, search) is None
    assert factory_return_problem("mynets.plain:sleeps", {}, search, timeout_s=1) is None
    assert factory_return_problem("mynets.plain:table", {}, []) is None
    assert factory_return_problem("mynets.plain:table", {"unexpected": 1}, search) is None
