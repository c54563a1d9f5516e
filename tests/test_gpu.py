"""GPU code paths, run on the device machine (`pytest -m gpu tests/test_gpu.py`), never in CI.

They need only `workers` (no Ray, no database): device discovery through NVML, the PyTorch
baseline on CUDA with compute time from CUDA events apart from the end-to-end time, and the
cuda-python buffer / stream / event helpers that the TensorRT runner uses.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

RESULTS = os.environ.get("FARM_GPU_RESULTS")  # a folder to write measured numbers to, when set


def _save(name: str, data: object) -> None:
    if RESULTS:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, name), "w") as handle:
            json.dump(data, handle, indent=2, default=str)


def test_nvml_finds_the_gpu_and_its_compute_capability() -> None:
    from workers.device import describe

    info = describe()
    assert info.gpus, info.gpu_error
    gpu = info.gpus[0]
    assert gpu.memory_bytes > 1 << 30
    major, minor = gpu.compute_capability.split(".")
    assert int(major) >= 7
    gpu_targets = [t for t in info.targets() if t.kind == "gpu"]
    assert gpu_targets[0].id == f"{gpu.name} / sm_{major}{minor}"
    _save("device.json", {"gpus": [g.__dict__ for g in info.gpus], "targets": [t.id for t in info.targets()]})


def test_torch_baseline_on_cuda_times_compute_apart_from_copies() -> None:
    from workers import stage_work
    from workers.bench import BenchSettings
    from workers.device import describe
    from workers.models import export
    from workers.structs import BuildRequest, ModelRef

    model = ModelRef("resnet50", "torchvision:resnet50", None, (3, 224, 224))
    exported = export(model)
    target = next(t for t in describe().targets() if t.kind == "gpu")
    engine = stage_work.build_engine(BuildRequest(model, "fp32", "torch", {"mode": "eager"}, target, (1, 32)), exported.onnx_bytes, exported.checkpoint)
    rows = []
    for batch in (1, 32):
        timings = stage_work.benchmark_engine(engine.data, engine.manifest, batch, BenchSettings(warmup_s=1.0, duration_s=3.0, min_iterations=50))
        assert timings.gpu_compute is not None and timings.raw_gpu_ms is not None
        assert len(timings.raw_gpu_ms) == timings.iterations
        # compute alone never exceeds the host's end-to-end time of the same iterations
        assert timings.gpu_compute.median <= timings.latency.median
        rows.append({"batch": batch, "iterations": timings.iterations, "latency_p50_ms": timings.latency.median,
                     "latency_cv": timings.latency.cv, "gpu_compute_p50_ms": timings.gpu_compute.median,
                     "gpu_compute_cv": timings.gpu_compute.cv, "throughput": timings.throughput})
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    reference = stage_work.reference_outputs(exported.onnx_bytes, inputs, 8)
    fidelity = stage_work.engine_fidelity(engine.data, engine.manifest, inputs, reference, 8)
    assert fidelity.cosine_min > 0.99  # cuDNN and TF32 differ from ONNX Runtime's CPU kernels, slightly
    rows.append({"fidelity_vs_onnxruntime_cpu": fidelity.__dict__})
    _save("torch_cuda.json", rows)


def test_cuda_python_buffers_streams_and_events() -> None:
    from workers.cuda import time_copy_workload

    summary = time_copy_workload(256 << 20, 20)
    assert summary["bandwidth_gb_s"]["h2d"] > 1 and summary["bandwidth_gb_s"]["d2h"] > 1
    # host wall time covers the event-timed work plus launches: not below it, not far above it
    assert 0.95 < summary["host_over_events"] < 2.0
    _save("cuda_copy.json", summary)
