"""mypy checks the TensorRT backend against the datacenter API names (tensorrt-stubs, TensorRT 10.13)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _shadowed_stubs(folder: Path) -> list[str]:
    """mypy arguments that read a repaired copy of tensorrt-stubs in place of the original.

    The generated stubs have two syntax errors (a parameter named `in`; a required parameter
    after optional ones), so mypy rejects them as shipped.
    """
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("tensorrt-stubs is not installed: scripts/bootstrap.sh dev installs it")
    stubs = Path(next(iter(spec.submodule_search_locations))) / "tensorrt.pyi"
    text = re.sub(r"([(,] )in: list", r"\1in_: list", stubs.read_text())
    text = re.sub(r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", text)
    shadow = folder / "tensorrt.pyi"
    shadow.write_text(text)
    return ["--follow-untyped-imports", "--follow-imports=silent", "--no-incremental", "--shadow-file", str(stubs), str(shadow)]


def test_tensorrt_backend_type_checks_against_the_stubs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "workers/backends/tensorrt/", "workers/cuda.py", "--strict",
         "--ignore-missing-imports", *_shadowed_stubs(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_a_wrong_tensorrt_name_is_caught(tmp_path: Path) -> None:
    """The check above could pass by checking nothing; a misspelt API name must fail it."""
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\n\ndef f(b: trt.IBuilderConfig) -> None:\n    b.set_memory_pool_limitt(trt.MemoryPoolType.WORKSPACE, 1)\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", str(probe), *_shadowed_stubs(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    assert "set_memory_pool_limitt" in result.stdout
