"""A realistic farm store for dashboard and delivery tests: real SQLite (or any database URL) through
farm.store, real artifact files.

The rows look like what the driver writes (labels, manifests from workers.structs.Manifest,
raw timings, fidelity against fp32, sweeps with their jobs), and the numbers are designed so
tests can predict the winners. In every (model, target, batch size) group:

- TensorRT fp16 at optimization level 3 has the lowest p50 but a heavy tail (one timing in
  eight is 2.8x slower), so level 5, slightly slower at p50 but steady, wins p99 and throughput;
- TensorRT int8 is the fastest of all, but its top-1 agreement (resnet50: 0.985) is below the
  default floor of 0.99: lowering the floor to 0.98 makes it the p50 winner.

One build fails (mobilenet_v3_large int8 on rtx:sm_89) with an error and a log; sweep 1
("fleet") is finished, sweep 2 ("nightly", efficientnet_b0) is still running.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from tests.onnx_models import classifier_onnx
from workers.bench import median_interval
from farm.store import Store, StoreLocation, open_store, schema
from workers.structs import Manifest, TensorSpec

H200 = "NVIDIA H200 / sm_90"
L4 = "NVIDIA L4 / sm_89"
RTX = "rtx:sm_89"
CPU = "cpu:AMD EPYC 9654 [x86_64, avx512]"

TRT_O3 = {"optimization_level": 3, "workspace_bytes": 8589934592}
TRT_O5 = {"optimization_level": 5, "workspace_bytes": 8589934592}
TORCH = {"mode": "eager"}
ORT_GPU = {"execution_provider": "cuda", "graph_optimization_level": "all"}
ORT_CPU = {"intra_op_threads": 8, "graph_optimization_level": "all"}

BATCH_SIZES = (1, 8)
STARTED = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
IMAGENET = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # what sweeps store as preprocess_used


@dataclass(frozen=True)
class TargetSpec:
    id: str
    kind: str
    name: str
    compute_capability: str | None
    slowdown: float  # latency relative to the H200


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    base_ms: float  # TensorRT fp32, batch 1, on the H200
    int8_top1: float
    sweep: int


@dataclass(frozen=True)
class Config:
    backend: str
    precision: str
    options: dict[str, Any]
    factor: float  # latency relative to TensorRT fp32
    top1: float | None = None  # None: the model's int8 agreement
    tail: bool = False


TARGETS = (
    TargetSpec(H200, "gpu", "NVIDIA H200", "9.0", 1.0),
    TargetSpec(L4, "gpu", "NVIDIA L4", "8.9", 2.8),
    TargetSpec(RTX, "rtx", "sm_89", "8.9", 2.2),
    TargetSpec(CPU, "cpu", "AMD EPYC 9654 [x86_64, avx512]", None, 30.0),
)
MODELS = (
    ModelSpec("resnet50", "torchvision:resnet50", 0.90, 0.985, 1),
    ModelSpec("mobilenet_v3_large", "torchvision:mobilenet_v3_large", 0.32, 0.962, 1),
    ModelSpec("efficientnet_b0", "torchvision:efficientnet_b0", 0.50, 0.975, 2),
)
CONFIGS = {
    "gpu": (
        Config("torch", "fp32", TORCH, 2.6, 1.0),
        Config("onnxruntime", "fp32", ORT_GPU, 1.6, 1.0),
        Config("tensorrt", "fp32", TRT_O3, 1.0, 0.999),
        Config("tensorrt", "fp16", TRT_O3, 0.50, 0.996, tail=True),
        Config("tensorrt", "fp16", TRT_O5, 0.53, 0.997),
        Config("tensorrt", "int8", TRT_O3, 0.32),
    ),
    "rtx": (
        Config("tensorrt", "fp16", TRT_O3, 0.50, 0.996, tail=True),
        Config("tensorrt", "int8", TRT_O3, 0.32),
    ),
    "cpu": (
        Config("torch", "fp32", TORCH, 1.4, 1.0),
        Config("onnxruntime", "fp32", ORT_CPU, 1.0, 1.0),
        Config("onnxruntime", "int8", ORT_CPU, 0.55),
    ),
}
VERSIONS = {"tensorrt": "10.13.3.9", "onnxruntime": "1.22.1", "torch": "2.8.0"}
FAILED = ("mobilenet_v3_large", RTX, "int8")
PENDING_TARGET = RTX  # the running sweep has not built efficientnet_b0 for this target yet
FAILURE_ERROR = "TensorRT-RTX build failed: no implementation for /features/features.4/block/block.2/fc1/Conv with int8 inputs on sm_89"
FAILURE_LOG = """[I] [TRT-RTX] Loaded engine-build plugin library
[I] [TRT-RTX] Parsing variant.onnx: 312 nodes, 118 QuantizeLinear/DequantizeLinear pairs
[I] [TRT-RTX] Strongly typed network; compute capabilities: sm_89
[W] [TRT-RTX] /features/features.4/block/block.2/fc1/Conv: per-tensor int8 weights, falling back to tactic search
[E] [TRT-RTX] [convolutionRunner.cpp::executeConv::454] Error Code 2: Internal Error (no implementation for /features/features.4/block/block.2/fc1/Conv with int8 inputs on sm_89)
[E] [TRT-RTX] [builder.cpp::buildSerializedNetwork::1043] Error Code 2: Internal Error (engine build failed)
"""


def label(model: str, precision: str, backend: str, options: dict[str, Any], target: str) -> str:
    """The driver's build label: `resnet50 fp16 tensorrt[optimization_level=3,...] @ NVIDIA H200 / sm_90`."""
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{model} {precision} {backend}[{opts}] @ {target}"


def _key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@dataclass
class Seeded:
    location: StoreLocation
    builds: dict[str, str] = field(default_factory=dict)  # label -> build key
    failed_build: str = ""
    sweeps: dict[str, int] = field(default_factory=dict)

    def key(self, model: str, precision: str, backend: str, options: dict[str, Any], target: str) -> str:
        return self.builds[label(model, precision, backend, options, target)]

    def ambiguous_prefix(self) -> str:
        """The longest start that two build keys share: a short key that names no single build."""
        keys = sorted(self.builds.values())
        return max((os.path.commonprefix([a, b]) for a, b in zip(keys, keys[1:], strict=False)), key=len)


@dataclass
class _Writer:
    store: Store
    session: Session
    seeded: Seeded
    jobs: dict[int, list[schema.SweepJob]] = field(default_factory=dict)
    clock: datetime = STARTED

    def tick(self, seconds: float) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def job(self, sweep: int, stage: str, key: str, text: str, state: str, error: str | None = None) -> None:
        self.jobs.setdefault(sweep, []).append(
            schema.SweepJob(stage=stage, key=key, label=text[:256], state=state, error=error, updated_at=self.clock)
        )

    def artifact(self, data: bytes, kind: str) -> str:
        sha = self.store.artifacts.put(data)
        if self.session.get(schema.Artifact, sha) is None:
            self.session.add(schema.Artifact(sha256=sha, kind=kind, size_bytes=len(data), path=self.store.artifacts.relative_path(sha)))
            self.session.flush()
        return sha


def seed(data_dir: Path, url: str | None = None) -> Seeded:
    """Create a fresh store in data_dir (its database at url, default SQLite there) and fill it; returns where
    it is and the build keys."""
    location = StoreLocation.resolve(data_dir, url)
    store = open_store(location)
    seeded = Seeded(location)
    try:
        with store.session() as s, s.begin():
            w = _Writer(store, s, seeded)
            for t in TARGETS:
                s.add(schema.Target(id=t.id, kind=t.kind, name=t.name, compute_capability=t.compute_capability,
                                    description={"hostname": f"worker-{t.kind}-0"}, last_seen=STARTED))
            s.flush()
            for model in MODELS:
                _seed_model(w, model)
            _seed_sweeps(w)
    finally:
        store.close()
    return seeded


def _seed_model(w: _Writer, m: ModelSpec) -> None:
    s = w.session
    model_key = _key("export", m.name)
    onnx = w.artifact(f"seed onnx of {m.name}".encode() * 64, "onnx")
    s.add(schema.Model(key=model_key, status="ok", seconds=9.5, node="worker-cpu-0", created_at=w.tick(10),
                       name=m.name, source=m.source, weights="DEFAULT", input_shape=[3, 224, 224], opset=17,
                       inputs=[{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}],
                       outputs=[{"name": "output", "shape": ["batch", 1000], "dtype": "float32"}],
                       node_count=122, onnx_sha256=onnx))
    w.job(m.sweep, "export", model_key, f"{m.name} from {m.source}", "done")
    reference_key = _key("reference", m.name)
    s.add(schema.Reference(key=reference_key, status="ok", created_at=w.tick(4), model_key=model_key,
                           data_digest=_key("calibration_data"), samples=64, noise_floor=NOISE_FLOOR))
    w.job(m.sweep, "reference", reference_key, f"{m.name} fp32 reference on 64 images", "done")
    variants = {}
    for precision in ("fp32", "fp16", "int8"):
        variant_key = _key("variant", m.name, precision)
        sha = onnx if precision == "fp32" else w.artifact(f"seed {precision} onnx of {m.name}".encode() * 64, "onnx")
        s.add(schema.Variant(key=variant_key, status="ok", created_at=w.tick(6), model_key=model_key, precision=precision,
                             method="entropy" if precision == "int8" else None, onnx_sha256=sha,
                             details={"calibration_samples": 256} if precision == "int8" else None))
        w.job(m.sweep, "variant", variant_key, f"{m.name} {precision}", "done")
        variants[precision] = (variant_key, sha)
    s.flush()
    for t in TARGETS:
        for c in CONFIGS[t.kind]:
            _seed_build(w, m, t, c, variants[c.precision], reference_key)


def _seed_build(w: _Writer, m: ModelSpec, t: TargetSpec, c: Config, variant: tuple[str, str], reference_key: str) -> None:
    s = w.session
    text = label(m.name, c.precision, c.backend, c.options, t.id)
    build_key = _key("build", text)
    bench_keys = {b: _key("benchmark", build_key, b) for b in BATCH_SIZES}
    fidelity_key = _key("fidelity", build_key)
    if m.sweep == 2 and t.id == PENDING_TARGET:
        w.job(2, "build", build_key, text, "pending")
        for b, k in bench_keys.items():
            w.job(2, "benchmark", k, f"{text} batch {b}", "pending")
        w.job(2, "fidelity", fidelity_key, text, "pending")
        return
    version = "rtx 1.2.0.54" if t.kind == "rtx" else VERSIONS[c.backend]  # workers.backends.tensorrt.version_label
    if (m.name, t.id, c.precision) == FAILED:
        s.add(schema.Build(key=build_key, status="failed", error=FAILURE_ERROR, log=FAILURE_LOG, seconds=41.2,
                           node=f"worker-{t.kind}-0", created_at=w.tick(41), variant_key=variant[0], target_id=t.id,
                           backend=c.backend, backend_version=version, options=c.options, label=text))
        w.job(m.sweep, "build", build_key, text, "failed", FAILURE_ERROR)
        for b, k in bench_keys.items():
            w.job(m.sweep, "benchmark", k, f"{text} batch {b}", "blocked")
        w.job(m.sweep, "fidelity", fidelity_key, text, "blocked")
        w.seeded.failed_build = build_key
        return
    rng = random.Random(build_key)
    size = int(m.base_ms * 200_000) if c.backend == "tensorrt" else int(m.base_ms * 120_000)
    # ONNX Runtime's engines are real models of the input and output the manifest states, so a delivered one can be
    # loaded and run; TensorRT plans and torch recipes stay bytes (no TensorRT runtime on a CPU machine).
    payload = rng.randbytes(size)  # drawn for every backend, so the numbers drawn after it stay as designed
    engine = (classifier_onnx((3, 224, 224), 1000, seed=int.from_bytes(payload[:4])) if c.backend == "onnxruntime"
              else f"farm-seed {c.backend} engine {text}\n".encode() + payload)
    sha = w.artifact(engine, "engine")
    manifest = Manifest(
        backend=c.backend,
        backend_version=version,
        target=t.id,
        precision=c.precision,
        options=dict(c.options),
        inputs=[TensorSpec("input", ("batch", 3, 224, 224), "float32")],
        outputs=[] if c.backend == "torch" else [TensorSpec("output", ("batch", 1000), "float32")],
        model=m.name,
        variant_sha256=variant[1],
        engine_sha256=sha,
        extra=_extra(c, t, m),
    )
    build_s = 95.0 if c.backend == "tensorrt" else 6.0
    s.add(schema.Build(key=build_key, status="ok", seconds=build_s, node=f"worker-{t.kind}-0", created_at=w.tick(build_s),
                       variant_key=variant[0], target_id=t.id, backend=c.backend, backend_version=version,
                       options=c.options, label=text, manifest=manifest.to_json(), engine_sha256=sha,
                       engine_bytes=len(engine), peak_host_memory_bytes=int(2.5e9) if c.backend == "tensorrt" else int(8e8),
                       peak_device_memory_bytes=int(4.2e9) if t.kind == "gpu" else None,
                       log=_build_log(c, t, m)))
    w.job(m.sweep, "build", build_key, text, "done")
    w.seeded.builds[text] = build_key
    for b, k in bench_keys.items():
        s.add(_benchmark(k, build_key, b, m, t, c, rng, w.tick(8)))
        w.job(m.sweep, "benchmark", k, f"{text} batch {b}", "done")
    top1 = c.top1 if c.top1 is not None else m.int8_top1 - (0.003 if t.kind == "cpu" else 0.0)
    s.add(schema.Fidelity(key=fidelity_key, status="ok", created_at=w.tick(3), build_key=build_key, reference_key=reference_key,
                          samples=64, top1_agreement=top1, top5_agreement=min(1.0, top1 + 0.01),
                          cosine_mean=1.0 - (1.0 - top1) / 4, cosine_min=1.0 - (1.0 - top1) * 2,
                          max_abs_error=0.0 if top1 == 1.0 else round((1.0 - top1) * 40, 4), evidence=_evidence(top1, rng)))
    w.job(m.sweep, "fidelity", fidelity_key, text, "done")


# fp32 against itself under a 2-pixel shift (workers.fidelity): these judge images change class.
NOISE_FLIPPED = (0, 16, 32, 48)
NOISE_FLOOR = {"perturbation": "2-pixel shift", "samples": 64, "agreed": 64 - len(NOISE_FLIPPED), "flipped": list(NOISE_FLIPPED)}


def _evidence(top1: float, rng: random.Random) -> dict[str, Any]:
    """The per-image detail workers.fidelity stores: which of the 64 judge images flipped, fp32's margin on each image.
    (Its counts, `agreed`, stay unset: the seeded builds are judged by their top-1 share, as rows from before evidence.)"""
    margins = [round(rng.uniform(0.0, 0.9), 4) for _ in range(64)]
    flipped = sorted(rng.sample(range(64), round((1.0 - top1) * 64)))
    return {"flipped": flipped, "margins": margins}


def _extra(c: Config, t: TargetSpec, m: ModelSpec) -> dict[str, Any]:
    """Backend extras shaped like the real backends' (workers/backends/*.py) manifests."""
    if c.backend == "torch":
        return {"device": "cpu" if t.kind == "cpu" else "cuda",
                "model_ref": {"name": m.name, "source": m.source, "weights": "DEFAULT", "input_shape": [3, 224, 224]}}
    if c.backend == "onnxruntime":
        return {"providers": ["CPUExecutionProvider"] if t.kind == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    extra: dict[str, Any] = {
        "flavour": "rtx" if t.kind == "rtx" else "datacenter",
        "tensorrt_version": "1.2.0.54" if t.kind == "rtx" else VERSIONS["tensorrt"],
        "compute_capabilities": [t.compute_capability],
        "workspace_bytes": c.options["workspace_bytes"],
        "optimization_level": c.options["optimization_level"],
        "profile": {"input": [1, 8, 32]},
        "network_layers": 126,
    }
    if t.kind == "gpu":  # the engine inspector needs the GPU the plan is for; RTX plans are built elsewhere
        extra["layers"] = {"Layers": _inspector_layers(c.precision), "Bindings": ["input", "output"]}
    return extra


def _inspector_layers(precision: str) -> list[dict[str, Any]]:
    """A resnet-like engine in the TensorRT engine inspector's JSON (ProfilingVerbosity.DETAILED)."""
    kind = {"fp32": "FP32", "fp16": "FP16", "int8": "Int8"}[precision]

    def layer(name: str, layer_type: str, shape: list[int], tactic: str) -> dict[str, Any]:
        return {"Name": name, "LayerType": layer_type,
                "Outputs": [{"Name": f"{name}_output", "Location": "Device", "Dimensions": [-1, *shape],
                             "Format/Datatype": f"Channel major {kind} format where channel % 32 == 0"}],
                "TacticName": tactic, "StreamId": 0}

    layers = [layer("/conv1/Conv + /relu/Relu", "CaskConvolution", [64, 112, 112], "sm90_xmma_fprop_implicit_gemm_indexed_wo_smem"),
              layer("/maxpool/MaxPool", "CaskPooling", [64, 56, 56], "sm50_xmma_pooling_coalescedC")]
    for stage, channels, side in ((1, 256, 56), (2, 512, 28), (3, 1024, 14), (4, 2048, 7)):
        for conv, out in (("conv1", channels // 4), ("conv2", channels // 4), ("conv3", channels)):
            layers.append(layer(f"/layer{stage}/layer{stage}.0/{conv}/Conv + Relu", "CaskConvolution", [out, side, side],
                                "sm90_xmma_fprop_implicit_gemm_tilesize128x128x64_stage3"))
    layers += [layer("/avgpool/GlobalAveragePool", "CaskPooling", [2048, 1, 1], "sm50_xmma_pooling_fw_4d"),
               layer("/fc/Gemm", "CaskGemmConvolution", [1000], "sm90_xmma_gemm_f32f32_tf32f32")]
    return layers


def _build_log(c: Config, t: TargetSpec, m: ModelSpec) -> str:
    if c.backend != "tensorrt":
        return f"[I] {c.backend} {VERSIONS[c.backend]}: {m.name} {c.precision} ready for {t.id}\n"
    return (
        f"[I] [TRT] Parsing variant.onnx ({m.name} {c.precision})\n"
        f"[I] [TRT] Builder optimization level {c.options['optimization_level']}, workspace {c.options['workspace_bytes'] >> 30} GiB\n"
        f"[I] [TRT] Optimization profile input: min [1,3,224,224] opt [8,3,224,224] max [32,3,224,224]\n"
        f"[I] [TRT] Timing cache: 412 hits, 37 misses\n"
        f"[I] [TRT] Engine built in 95.0 s for {t.id}\n"
    )


def _benchmark(key: str, build_key: str, batch: int, m: ModelSpec, t: TargetSpec, c: Config, rng: random.Random, when: datetime) -> schema.Benchmark:
    center = m.base_ms * t.slowdown * c.factor * (1 + 0.45 * (batch - 1))
    samples = 240
    raw = [round(center * (2.8 if c.tail and i % 8 == 7 else 1.0) * (1 + rng.gauss(0, 0.01)), 5) for i in range(samples)]
    ordered = sorted(raw)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    mean = statistics.fmean(raw)
    cv = statistics.pstdev(raw) / mean
    gpu = t.kind != "cpu"
    low, high = median_interval(raw)
    return schema.Benchmark(
        key=key, status="ok", seconds=4.5, node=f"worker-{t.kind}-0", created_at=when, build_key=build_key, batch_size=batch,
        settings={"warmup_s": 1.0, "duration_s": 3.0, "min_iterations": 100, "max_iterations": None},
        iterations=samples, wall_s=sum(raw) / 1000, throughput=batch * 1000 / mean, latency_mean=mean,
        latency_p50=statistics.median(raw), latency_p90=rank(0.90), latency_p95=rank(0.95), latency_p99=rank(0.99),
        latency_min=ordered[0], latency_max=ordered[-1], latency_cv=cv,
        gpu_compute_p50=statistics.median(raw) * 0.9 if gpu else None, gpu_compute_mean=mean * 0.9 if gpu else None,
        gpu_compute_cv=cv if gpu else None, noisy=cv > 0.1, raw_ms=raw, raw_gpu_ms=[round(x * 0.9, 5) for x in raw] if gpu else None,
        converged=True, latency_p50_low=low, latency_p50_high=high, data_transfers=True,
        peak_host_memory_bytes=int(3e8 + batch * 2e7), peak_device_memory_bytes=int(6e8 + batch * 5e7) if gpu else None,
    )


def _seed_sweeps(w: _Writer) -> None:
    s = w.session
    specs = {
        1: ("fleet", "sweeps/fleet.yaml", "finished", w.tick(60)),
        2: ("nightly", "sweeps/nightly.yaml", "running", None),
    }
    for sweep_id, (name, path, status, finished) in specs.items():
        models = [m.name for m in MODELS if m.sweep == sweep_id]
        spec = {"name": name, "models": [{"name": n, "preprocess_used": IMAGENET} for n in models], "precisions": ["fp32", "fp16", "int8"],
                "batch_sizes": list(BATCH_SIZES), "targets": [t.id for t in TARGETS], "fidelity": {"min_top1_agreement": 0.99}}
        started = STARTED if sweep_id == 1 else STARTED + timedelta(hours=20)
        # The database numbers the sweeps (1 and 2 in a new store): an explicit id would leave
        # PostgreSQL's sequence behind, and the next sweep recorded there would collide.
        sweep = schema.Sweep(name=name, spec_path=path, spec=spec, status=status, started_at=started, finished_at=finished,
                             heartbeat_at=datetime.now(UTC) if status == "running" else finished)
        sweep.jobs = w.jobs.get(sweep_id, [])
        s.add(sweep)
        s.flush()
        w.seeded.sweeps[name] = sweep.id


def beat(location: StoreLocation) -> None:
    """A fresh heartbeat for the seeded running sweep, as its (pretend) driver would write: it reads
    "running" for farm.results.progress.STALE_S seconds from now, then "interrupted"."""
    store = open_store(location)
    try:
        with store.session() as s, s.begin():
            for sweep in s.scalars(select(schema.Sweep).where(schema.Sweep.status == "running")):
                sweep.heartbeat_at = datetime.now(UTC)
    finally:
        store.close()


def seed_bulk(location: StoreLocation, builds: int) -> None:
    """Add `builds` more successful builds (one benchmark each) to a seeded store: the 10,000-row case."""
    store = open_store(location)
    try:
        with store.session() as s, s.begin():
            variants = [v for v in s.query(schema.Variant).all()]
            targets = [t.id for t in TARGETS]
            build_rows, bench_rows = [], []
            for i in range(builds):
                variant = variants[i % len(variants)]
                key = _key("bulk-build", i)
                target = targets[i % len(targets)]
                options = {"optimization_level": i % 6, "workspace_bytes": (i % 16 + 1) << 28}
                build_rows.append({"key": key, "status": "ok", "variant_key": variant.key, "target_id": target, "backend": "tensorrt",
                                   "backend_version": VERSIONS["tensorrt"], "options": options,
                                   "label": label(variant.model.name, variant.precision, "tensorrt", options, target), "created_at": STARTED})
                p50 = 0.5 + (i % 97) / 50
                bench_rows.append({"key": _key("bulk-bench", i), "status": "ok", "build_key": key, "batch_size": 1, "settings": {},
                                   "throughput": 1000 / p50, "latency_p50": p50, "latency_p99": p50 * 1.2, "latency_mean": p50,
                                   "latency_cv": 0.02, "created_at": STARTED})
            s.execute(insert(schema.Build), build_rows)
            s.execute(insert(schema.Benchmark), bench_rows)
    finally:
        store.close()
