"""How fast the disk under a folder takes what the driver writes per job: a small commit (an fsync of 4 KiB, as
SQLite's) and an artifact (45 MiB, a ResNet-18 fp32 ONNX, written and fsynced). Prints one line.

    python3 benchmarks/disk_probe.py [FOLDER]     # default /tmp, where benchmarks/fleet_scaling.py keeps its stores

A slow disk makes every job's bookkeeping slower, and the driver does it one job at a time: on a fleet of many
nodes, a host whose job ended waits while the driver writes another job's artifact.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    with tempfile.TemporaryDirectory(dir=folder, prefix="farm-disk-probe-") as work:
        commits = []
        with open(os.path.join(work, "small"), "wb") as handle:
            for _ in range(200):
                handle.write(b"x" * 4096)
                handle.flush()
                began = time.perf_counter()
                os.fsync(handle.fileno())
                commits.append(time.perf_counter() - began)
        artifact = os.urandom(45 << 20)
        began = time.perf_counter()
        with open(os.path.join(work, "big"), "wb") as handle:
            handle.write(artifact)
            handle.flush()
            os.fsync(handle.fileno())
        written = time.perf_counter() - began
    commits.sort()
    print(f"{folder}: fsync of 4 KiB median {statistics.median(commits) * 1e3:.2f} ms, p90 {commits[179] * 1e3:.2f} ms; "
          f"45 MiB written and fsynced in {written * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
