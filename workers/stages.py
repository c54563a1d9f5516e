"""The worker side of each pipeline stage, one function each, in pipeline order.

export -> (variant) -> build -> benchmark, fidelity. The driver calls these inside Ray tasks;
tests and the GPU machine call them directly.
"""

from __future__ import annotations

import hashlib

import numpy as np

from workers import fidelity as fidelity_
from workers.backends import get_backend, random_feeds
from workers.backends.base import NO_CONTEXT, BuildContext
from workers.bench import BenchSettings, Timings, measure
from workers.models import Exported, export
from workers.records import BuildRequest, Engine, Manifest, ModelRef

__all__ = ["export_model", "build_engine", "benchmark_engine", "reference_outputs", "engine_fidelity"]


def export_model(model: ModelRef, onnx_file: bytes | None = None) -> Exported:
    return export(model, onnx_file)


def build_engine(request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine:
    engine = get_backend(request.backend).build(request, variant, checkpoint, context)
    engine.manifest.variant_sha256 = hashlib.sha256(variant).hexdigest()
    engine.manifest.engine_sha256 = hashlib.sha256(engine.plan).hexdigest()
    return engine


def benchmark_engine(plan: bytes, manifest: Manifest, batch_size: int, settings: BenchSettings) -> Timings:
    with get_backend(manifest.backend).open(plan, manifest) as runner:
        step = runner.prepare(random_feeds(runner.inputs, batch_size))
        return measure(step, batch_size, settings, synchronize=runner.synchronize, gpu_timer=runner.gpu_timer())


def reference_outputs(variant: bytes, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """The fp32 model's first output on `inputs`, from ONNX Runtime's CPU provider (the reference)."""
    import onnxruntime as ort

    session = ort.InferenceSession(variant, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return fidelity_.run_batched(lambda x: session.run(None, {name: x})[0], inputs, batch_size)


def engine_fidelity(plan: bytes, manifest: Manifest, inputs: np.ndarray, reference: np.ndarray, batch_size: int) -> fidelity_.Fidelity:
    with get_backend(manifest.backend).open(plan, manifest) as runner:
        name = runner.inputs[0].name
        dtype = runner.inputs[0].dtype
        outputs = fidelity_.run_batched(lambda x: runner.infer({name: x.astype(dtype)})[0], inputs, batch_size)
    return fidelity_.compare(reference, outputs)
