"""The CLI's contract: help everywhere, one-line errors with a non-zero exit, JSON where scripts read it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli import app
from tests.conftest import write_spec

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["sweep"], ["status"], ["best"], ["doctor"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_invalid_spec_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "name: t\nmodels: [{name: a, source: 'torchvision:resnet18'}]\nbackends: {torch: {}}\n")
    result = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {spec}: models[0].weights: required field is missing"]
    assert not (tmp_path / "farm.db").exists()  # nothing ran


def test_bad_objective_is_rejected(tmp_path: Path) -> None:
    result = runner.invoke(app, ["best", "--objective", "fastest", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--objective 'fastest': expected one of p50, p99, throughput" in result.output


def test_status_without_results_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no results yet" in result.output and "farm sweep" in result.output


def test_doctor_json_lists_backends_and_targets() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    names = {b["name"]: b for b in report["backends"]}
    assert names["onnxruntime"]["ok"] and names["torch"]["ok"]
    assert "datacenter: missing (pip install 'farm[tensorrt]')" in names["tensorrt"]["detail"]
    assert "runtime: none (no CUDA GPU: builds only)" in names["tensorrt"]["detail"]
    assert report["targets"][0].startswith("cpu:")
    assert report["device"]["cpu"]["logical_cores"] >= 1
