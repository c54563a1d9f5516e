"""check_aoti_package's child: `python -m workers.backends.torch.aoti_child PACKAGE --device DEVICE`.

Loads an AOTInductor package in this fresh interpreter and runs it, so a loader that crashes
(torch 2.11 segfaults on CUDA) takes down this process, not the build. Nothing imports this
module: `python -m` must find it unimported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from workers.backends.torch.aoti import AotiRunner
from workers.backends.torch.engines import INPUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load an AOTInductor package and run it (check_aoti_package's child).")
    parser.add_argument("package")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--inputs", help=".npz of arrays to run, in order (default: zeros at the smallest and largest batch)")
    parser.add_argument("--outputs", help=".npz to write the outputs to, named INPUT_OUTPUT")
    args = parser.parse_args(argv)
    with AotiRunner(Path(args.package).read_bytes(), args.device) as runner:
        if args.inputs:
            with np.load(args.inputs) as archive:
                arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
        else:
            if runner.batch_range is None:
                raise SystemExit("this package has no batch range metadata: pass --inputs")
            arrays = [np.zeros((b, *runner.input_shape), np.float32) for b in sorted(set(runner.batch_range))]
        results = [runner.infer({INPUT: x}) for x in arrays]
    if args.outputs:
        named: dict[str, Any] = {f"{i}_{j}": o for i, outs in enumerate(results) for j, o in enumerate(outs)}
        np.savez(args.outputs, **named)
    print(json.dumps({"outputs_per_input": [len(r) for r in results], "setup_seconds": runner.setup_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
