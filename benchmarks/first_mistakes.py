"""The first hour's mistakes, timed: each must be exit 2, one line per problem, before any job starts.

A new user's natural mistakes, each run as `python -m farm.cli sweep SPEC` in a fresh process (what the
user pays, interpreter start included) from a fresh folder:

- the spec's own mistakes, several at once; a target nothing here matches;
- an unknown torchvision model; a factory module that is not there, a factory function that is not
  there, a factory that returns something other than an nn.Module (tests/corpus/cases.yaml's cases,
  built the way tests/test_corpus.py builds them);
- an ONNX file whose batch dimension is fixed at 1 while batch sizes 1 and 8 are asked for, and one
  whose input shape contradicts `input_shape` (made here with onnx.helper: one Relu).

Prints a table (exit code, seconds, error lines, whether a store was left behind) and writes JSON
(default benchmarks/results/first_mistakes.json). The goal (issue 21): every row exit 2, under 10 s
on a 2-core machine, no store.

    .venv/bin/python benchmarks/first_mistakes.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.test_corpus import CASES, _prepare  # noqa: E402  (the corpus's own cases and file makers)

CORPUS_CASES = ("source-torchvision-unknown-name", "source-factory-module-missing", "source-factory-function-missing",
                "source-factory-returns-no-module", "run-target-nothing-matches")


def relu_onnx(path: Path, shape: list[int | str]) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "net",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def onnx_case(shape: list[int | str], input_shape: list[int]) -> Callable[[Path, dict[str, Any]], None]:
    def make(tmp: Path, base: dict[str, Any]) -> None:
        relu_onnx(tmp / "net.onnx", shape)
        spec = dict(base, batch_sizes=[1, 8],
                    models=[{"name": "net", "source": "net.onnx", "input_shape": input_shape}])
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return make


def spec_mistakes(tmp: Path, base: dict[str, Any]) -> None:
    (tmp / "spec.yaml").write_text(yaml.safe_dump(dict(base, batch_sizes=[0], precisions=["int4"], colour="blue"), sort_keys=False))


def run(name: str, prepare: Callable[[Path], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="farm-mistake-") as folder:
        tmp = Path(folder)
        prepare(tmp)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", "spec.yaml", "--data-dir", str(tmp / "data")],
                              cwd=tmp, capture_output=True, text=True, timeout=300,
                              env=os.environ | {"PYTHONPATH": str(REPO), "RAY_ADDRESS": ""})
        seconds = time.perf_counter() - started
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        return {"mistake": name, "exit": done.returncode, "seconds": round(seconds, 2), "error_lines": len(errors),
                "first_line": errors[0] if errors else "", "store_left": (tmp / "data" / "farm.db").exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "first_mistakes.json")
    args = parser.parse_args()
    from tests.test_corpus import BASE_SPEC

    cases = {c["id"]: c for c in CASES}
    preparers: dict[str, Callable[[Path], None]] = {
        "three spec mistakes at once": lambda tmp: spec_mistakes(tmp, BASE_SPEC),
        "ONNX with a fixed batch of 1, batches 1 and 8": lambda tmp: onnx_case([1, 3, 32, 32], [3, 32, 32])(tmp, BASE_SPEC),
        "ONNX input [?, 3, 64, 64], input_shape [3, 32, 32]": lambda tmp: onnx_case(["batch", 3, 64, 64], [3, 32, 32])(tmp, BASE_SPEC),
    }
    for name in CORPUS_CASES:
        case = cases[name]
        preparers[name] = lambda tmp, case=case: _prepare(case, tmp, lambda text, tmp=tmp: text.replace("{tmp}", str(tmp)))
    rows = [run(name, prepare) for name, prepare in preparers.items()]
    print(f"{'mistake':52} {'exit':>4} {'s':>6} {'lines':>5} {'store':>5}  first line")
    for r in rows:
        print(f"{r['mistake']:52} {r['exit']:4d} {r['seconds']:6.2f} {r['error_lines']:5d} {'yes' if r['store_left'] else 'no':>5}  "
              f"{r['first_line'][:110]}")
    met = all(r["exit"] == 2 and r["seconds"] < 10 and not r["store_left"] for r in rows)
    print(f"goal (every mistake exit 2 in under 10 s, no store): {'met' if met else 'NOT met'}")
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": model,
              "cpus": os.cpu_count(), "rows": rows, "goal_met": met}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
