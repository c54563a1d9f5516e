"""The worker side of each pipeline stage, one function each, in pipeline order.

export -> reference -> calibrate -> variant -> build -> benchmark, fidelity -> retime. Each stage's
call (farm.run.stages) names its function here and runs it inside the one Ray task; tests and the GPU
machine call them directly. Outputs that are many arrays (reference outputs, detections) travel as
.npz bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workers import cpu_sessions, precision_variants
from workers import fidelity as fidelity_
from workers import precision as precision_
from workers.backends import get_backend, random_feeds
from workers.backends.base import NO_CONTEXT, BuildContext
from workers.bench import BenchSettings, Timings, measure, nearest_rank, time_window
from workers.device import first_gpu, sm_clock_reader
from workers.calibration import SamplesReader, augment
from workers.detection import DetectionFidelity, Detections, compare_detections
from workers.fallback import Threshold, find_fallback
from workers.memory import PeakMemory
from workers.models import Exported, export
from workers.structs import BuildRequest, Engine, Manifest, ModelRef

__all__ = [
    "export_model",
    "reference_outputs",
    "reference_run",
    "calibrate_model",
    "make_variant",
    "build_engine",
    "benchmark_engine",
    "engine_fidelity",
]


def export_model(model: ModelRef, onnx_file: bytes | None = None) -> Exported:
    return export(model, onnx_file)


def reference_outputs(fp32: bytes, inputs: np.ndarray, batch_size: int, task: str = "classification") -> bytes:
    """The fp32 model's outputs on `inputs` from ONNX Runtime's CPU provider (the reference), as .npz bytes."""
    return reference_run(fp32, inputs, batch_size, task, noise_floor=False).outputs


@dataclass
class Reference:
    outputs: bytes  # .npz: "outputs", or a detector's per-image boxes
    noise_floor: dict[str, Any] | None  # fp32 against itself on the shifted images: what no candidate can beat
    note: str | None  # workers.fidelity.degenerate: why these outputs cannot judge anything


def reference_run(fp32: bytes, inputs: np.ndarray, batch_size: int, task: str = "classification",
                  noise_floor: bool = True, box_score_threshold: float = 0.5) -> Reference:
    """The reference outputs, and fp32's own agreement with them when every image is moved by
    fidelity.SHIFT_PIXELS: the disagreement a candidate cannot be blamed for (a detector's boxes
    compared above `box_score_threshold`, as its builds' are)."""
    import onnxruntime as ort

    session = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    moved = fidelity_.shifted(inputs) if noise_floor else None
    floor: dict[str, Any] | None = None
    if task == "detection":
        found = [_detections(session.run(None, {name: x[None]})) for x in inputs]
        if moved is not None:
            shifted = [_detections(session.run(None, {name: x[None]})) for x in moved]
            floor = asdict(compare_detections(found, shifted, score_threshold=box_score_threshold))
        return Reference(pack_detections(found), _perturbation(floor), None)
    outputs = fidelity_.run_batched(lambda x: session.run(None, {name: x})[0], inputs, batch_size)
    if moved is not None:
        floor = asdict(fidelity_.compare(outputs, fidelity_.run_batched(lambda x: session.run(None, {name: x})[0], moved, batch_size)))
    return Reference(_npz(outputs=outputs), _perturbation(floor), fidelity_.degenerate(outputs))


def _perturbation(floor: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if floor is None else floor | {"perturbation": f"{fidelity_.SHIFT_PIXELS}-pixel shift"}


def calibrate_model(fp32: bytes, inputs: np.ndarray, method: str, percentile: float) -> precision_.CalibrationRanges:
    """Activation ranges over the calibration rows: the only stage that runs a calibrator.

    Fewer than MIN_CALIBRATION_SAMPLES image rows are topped up with flips and crops of themselves
    (workers.calibration.augment); the ranges record how."""
    name, batch = _input(fp32)
    rows = augment(inputs, precision_.MIN_CALIBRATION_SAMPLES)
    return precision_variants.calibrate(fp32, SamplesReader(rows.array, name, batch_size=batch or 8), method, percentile,
                                augmentation=rows.description)


@dataclass
class Variant:
    onnx_bytes: bytes
    details: dict[str, Any]


class Rejected(precision_.QuantizationError):
    """The variant was judged and is not viable (the fallback refused it): a finding with its numbers, not a failure."""

    def __init__(self, reason: str, details: dict[str, Any]) -> None:
        super().__init__(reason)
        self.details = details


def make_variant(
    fp32: bytes,
    precision: str,
    *,
    fp16: dict[str, Any] | None = None,
    ranges: bytes | None = None,
    layout: str = precision_.DEFAULT_LAYOUT,
    heldout: np.ndarray | None = None,
    reference: bytes | None = None,
    labels: np.ndarray | None = None,
    min_top1_agreement: float = 0.99,
    min_cosine: float | None = None,
    fallback_tries: int = 0,
    max_float_fraction: float = 0.25,
    confident_margin: float | None = None,
    noise_flipped: tuple[int, ...] | list[int] = (),
) -> Variant:
    """fp16 by graph conversion; int8 / fp8 as explicit Q/DQ in `layout` from stored calibration ranges.

    With `fallback_tries`, a quantized variant whose fake-quant fidelity on the held-out rows misses
    `min_top1_agreement` keeps its most sensitive tensors in float until it passes (workers.fallback);
    `details` records the plain variant's fidelity, every try, what was kept in float and why, and
    the share of activations still quantized. A variant that passes only with more than
    `max_float_fraction` kept in float is refused: a QuantizationError with the reason.
    """
    if precision == "fp16":
        options = fp16 or {}
        try:
            return Variant(precision_variants.to_fp16(fp32, **options), {"fp16": options})
        except Exception as exc:  # the converter's own errors say nothing about where they come from
            raise precision_.QuantizationError(f"fp16 conversion (onnxconverter-common) failed: {type(exc).__name__}: {exc}") from exc
    if ranges is None:
        raise ValueError(f"{precision} needs calibration ranges")
    calibration = precision_.CalibrationRanges.from_bytes(ranges)
    form = precision_.INT8_LAYOUTS[layout]
    details: dict[str, Any] = {"method": calibration.method, "calibration_samples": calibration.samples,
                               "calibration_augmentation": calibration.augmentation, "layout": form.name,
                               "layout_label": form.label, "layout_description": form.description, "quantized_fraction": 1.0}
    if not fallback_tries or heldout is None or reference is None:
        return Variant(precision_variants.apply_quantization(fp32, calibration, precision, layout=layout), details)
    expected = unpack(reference)["outputs"]
    result = find_fallback(
        fp32, calibration, heldout, expected, precision=precision, layout=layout,
        threshold=Threshold(top1_agreement=min_top1_agreement, cosine_mean=min_cosine, confident_margin=confident_margin,
                            noise_flipped=tuple(noise_flipped)),
        max_tries=fallback_tries,
        max_float_fraction=max_float_fraction, labels=labels,
    )
    details["quantized_fraction"] = round(result.quantized_fraction, 4)
    details["fallback"] = {
        "passed": result.passed,
        "refused": result.refused,
        "reason": result.reason,
        "side": result.side,  # what was kept in float: per-layer "weights" or "activations"
        "diagnosis": result.diagnosis.as_dict() if result.diagnosis else None,  # each side quantized alone, measured
        "quantizable": result.quantizable,
        "plain": asdict(result.steps[0].fidelity),
        "kept_in_float": [asdict(node) for node in result.excluded],
        "tries": [{"kept_float": s.kept_float, "excluded": len(s.excluded), "quantized": s.quantized, "passed": s.passed,
                   "top1_agreement": s.fidelity.top1_agreement, "cosine_mean": s.fidelity.cosine_mean,
                   "seconds": s.seconds} for s in result.steps],
    }
    if result.refused:
        raise Rejected(result.reason, details)
    onnx_bytes = result.onnx_bytes or precision_variants.apply_quantization(fp32, calibration, precision, layout=layout)
    final = next((s for s in reversed(result.steps) if s.passed), result.steps[0])
    # kernel_gap: how far below this a build's own cosine must fall for its kernels to be at fault
    details["fake_quant"] = {"top1_agreement": final.fidelity.top1_agreement, "cosine_mean": final.fidelity.cosine_mean,
                             "kernel_gap": fidelity_.KERNEL_GAP}
    if precision == "int8":
        details["kernel_check"] = kernel_check(onnx_bytes, heldout, expected, final.fidelity)
    return Variant(onnx_bytes, details)


def kernel_check(variant: bytes, inputs: np.ndarray, reference: np.ndarray, fake_quant: fidelity_.Fidelity) -> dict[str, Any]:
    """The variant through this CPU's ONNX Runtime int8 kernels, against its fake-quant arithmetic."""
    from workers.device import describe

    session = cpu_sessions.cpu_session(variant, "int8")
    name = session.get_inputs()[0].name
    found = fidelity_.compare(reference, fidelity_.run_batched(lambda x: session.run(None, {name: x})[0], inputs, 16))
    cpu = describe().cpu
    check: dict[str, Any] = {"cpu": f"{cpu.model} ({cpu.arch}, {cpu.isa_level})", "int8_dot_32bit": cpu.int8_dot_32bit,
                             "top1_agreement": found.top1_agreement, "cosine_mean": found.cosine_mean, "note": None}
    if found.cosine_mean < fake_quant.cosine_mean - fidelity_.KERNEL_GAP:
        check["note"] = (f"ONNX Runtime's int8 kernels on {check['cpu']} give mean cosine {found.cosine_mean:.4f} where "
                         f"fake-quant of the same graph gives {fake_quant.cosine_mean:.4f}: the kernel, not the ranges, is at fault")
    return check


BENCH_MEMORY_INTERVAL_S = 0.1


def build_engine(request: BuildRequest, variant: bytes | None, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine:
    """`variant` is the ONNX a backend builds from; None for a module variant (the backend casts the checkpoint).
    Every build records its peak memory: host from the backend where it samples its own (subprocesses, a
    plan's copy), else grown here; device as this process's on its GPU, for whichever backend used one."""
    with PeakMemory(gpu=first_gpu()) as memory:
        engine = get_backend(request.backend).build(request, variant, checkpoint, context)  # type: ignore[arg-type]
    if engine.peak_host_memory_bytes is None:
        engine.peak_host_memory_bytes = memory.growth_bytes
    engine.peak_device_memory_bytes = memory.peak_device_bytes
    if request.variant:
        engine.manifest.extra["variant"] = dict(request.variant)
    engine.manifest.variant_sha256 = hashlib.sha256(variant if variant is not None else checkpoint or b"").hexdigest()
    engine.manifest.engine_sha256 = hashlib.sha256(engine.data).hexdigest()
    return engine


def benchmark_engine(
    engine: bytes, manifest: Manifest, batch_size: int, settings: BenchSettings, caches: tuple[bytes, ...] = ()
) -> Timings:
    # Sampled every BENCH_MEMORY_INTERVAL_S: often enough for an engine's buffers, seldom enough not to steal the timed loop's CPU.
    with PeakMemory(BENCH_MEMORY_INTERVAL_S, gpu=first_gpu()) as memory:
        with get_backend(manifest.backend).open(engine, manifest, caches) as runner:
            step = runner.prepare(random_feeds(runner.inputs, batch_size), data_transfers=settings.data_transfers)
            timer = runner.gpu_timer()
            clock = sm_clock_reader() if timer is not None else None  # a GPU runner: watch its clock too
            timings = measure(step, batch_size, settings, synchronize=runner.synchronize, gpu_timer=timer, clock=clock)
    timings.peak_host_memory_bytes = memory.growth_bytes
    timings.peak_device_memory_bytes = memory.peak_device_bytes
    return timings


def retime_engines(
    engines: list[tuple[bytes, Manifest, tuple[bytes, ...]]], batch_size: int, rounds: int, window_s: float,
    data_transfers: bool = True,
) -> list[dict[str, list[float]]]:
    """Time several engines interleaved in this one process: each round runs every engine for one
    window, in an order rotated by one each round, so drift and neighbours hit them alike.

    Returns per engine, per round: the median, p99 and mean milliseconds of its window.
    """
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(get_backend(m.backend).open(data, m, caches)) for data, m, caches in engines]
        steps = [r.prepare(random_feeds(r.inputs, batch_size), data_transfers=data_transfers) for r in runners]
        for step, runner in zip(steps, runners, strict=True):
            time_window(step, runner.synchronize, min(window_s, 0.2))  # warm each before any counts
        found: list[dict[str, list[float]]] = [{"median": [], "p99": [], "mean": []} for _ in engines]
        for round_ in range(rounds):
            for offset in range(len(engines)):
                i = (round_ + offset) % len(engines)
                times = np.sort(np.asarray(time_window(steps[i], runners[i].synchronize, window_s)))
                found[i]["median"].append(float(np.median(times)))
                found[i]["p99"].append(nearest_rank(times, 99))
                found[i]["mean"].append(float(times.mean()))
    return found


def engine_fidelity(
    engine: bytes, manifest: Manifest, inputs: np.ndarray, reference: bytes, batch_size: int,
    labels: np.ndarray | None = None, task: str = "classification", box_score_threshold: float = 0.5,
    caches: tuple[bytes, ...] = (),
) -> fidelity_.Fidelity | DetectionFidelity:
    with get_backend(manifest.backend).open(engine, manifest, caches) as runner:
        name = runner.inputs[0].name
        dtype = runner.inputs[0].dtype
        if task == "detection":
            found = [_detections(runner.infer({name: x[None].astype(dtype)})) for x in inputs]
            return compare_detections(unpack_detections(reference), found, score_threshold=box_score_threshold)

        def infer(x: np.ndarray) -> np.ndarray:
            return runner.infer({name: x.astype(dtype)})[0]

        if runner.preferred_batches:
            outputs = fidelity_.run_padded(infer, inputs, runner.preferred_batches)
        else:
            outputs = fidelity_.run_batched(infer, inputs, batch_size)
    return fidelity_.compare(unpack(reference)["outputs"], outputs, labels)


def _detections(outputs: list[np.ndarray]) -> Detections:
    return Detections.of(*outputs[:3])  # a torchvision detector's ONNX outputs: boxes, labels, scores


def pack_detections(images: list[Detections]) -> bytes:
    arrays = {}
    for i, d in enumerate(images):
        arrays |= {f"boxes_{i}": d.boxes, f"labels_{i}": d.labels, f"scores_{i}": d.scores}
    return _npz(images=np.array(len(images)), **arrays)


def unpack_detections(data: bytes) -> list[Detections]:
    arrays = unpack(data)
    return [Detections(arrays[f"boxes_{i}"], arrays[f"labels_{i}"], arrays[f"scores_{i}"]) for i in range(int(arrays["images"]))]


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as archive:
        return {name: archive[name] for name in archive.files}


def _input(onnx_bytes: bytes) -> tuple[str, int | None]:
    """The model's input name, and its batch size where the graph fixes one (a detector's 1)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    initializers = {i.name for i in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in initializers)
    dims = value.type.tensor_type.shape.dim
    return value.name, (dims[0].dim_value or None) if dims else None
