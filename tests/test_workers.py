"""The worker stages called directly, without Ray or a database: export, build, benchmark, fidelity."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from workers import stage_work
from workers.bench import BenchSettings, Stats, measure, nearest_rank, windows_agree
from workers.calibration import CalibrationDataError, load_images
from workers.device import describe, first_gpu
from workers.fidelity import compare
from workers.models import Exported, ModelSourceError, export
from workers.structs import BuildRequest, ModelRef, Preprocess
from tests.conftest import CALIBRATION_DATA

RESNET = ModelRef("resnet18", "torchvision:resnet18", None, (3, 224, 224))
FAST = BenchSettings(warmup_s=0.0, duration_s=0.05, min_iterations=3, window_s=0.02, max_duration_s=0.3)


@pytest.fixture(scope="module")
def exported() -> Exported:
    return export(RESNET)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_images(CALIBRATION_DATA, Preprocess(), limit=6).array


def test_torchvision_export_has_a_dynamic_batch_axis(exported: Exported) -> None:
    proto = onnx.load_from_string(exported.onnx_bytes)
    onnx.checker.check_model(proto)
    assert exported.info.opset == 17
    assert [t.name for t in exported.info.inputs] == ["input"]
    assert exported.info.inputs[0].shape == ("batch", 3, 224, 224)
    assert exported.info.outputs[0].shape == ("batch", 1000)
    assert exported.info.inputs[0].dtype == "float32"
    assert exported.info.node_count > 40
    state = __import__("torch").load(io.BytesIO(exported.checkpoint), weights_only=True)
    assert "fc.weight" in state


def test_random_weights_are_reproducible() -> None:
    tiny = ModelRef("t", "tests.models:tiny_cnn", None, (3, 32, 32))
    assert export(tiny).checkpoint == export(tiny).checkpoint


def test_unavailable_weights_are_an_error_not_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache; the network is unreachable
    with pytest.raises(ModelSourceError, match="model r: weights IMAGENET1K_V1 for resnet18 are not in the torch hub cache"):
        export(ModelRef("r", "torchvision:resnet18", "IMAGENET1K_V1", (3, 224, 224)))
    with pytest.raises(ModelSourceError, match="weights 'NOPE' unknown for resnet18"):
        export(ModelRef("r", "torchvision:resnet18", "NOPE", (3, 224, 224)))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("torchvision:resnet_nope", "torchvision has no model named 'resnet_nope'"),
        ("tests.models:missing", "cannot import factory tests.models:missing"),
        ("tests.models:not_a_module", "returned str, not a torch.nn.Module"),
        ("/nonexistent/m.onnx", "ONNX file /nonexistent/m.onnx does not exist"),
    ],
)
def test_bad_sources_name_the_model(source: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=f"model x: .*{message}"):
        export(ModelRef("x", source, None, (3, 32, 32)))


def test_onnx_file_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelSourceError, match="model x: not a valid ONNX model"):
        export(ModelRef("x", str(path), None, (3, 32, 32)))


@pytest.mark.parametrize(
    ("backend", "options"),
    [("onnxruntime", {"intra_op_threads": 1, "graph_optimization_level": "all"}), ("torch", {"mode": "eager"})],
)
def test_build_benchmark_fidelity(exported: Exported, images: np.ndarray, backend: str, options: dict[str, object]) -> None:
    target = describe().targets()[0]
    engine = stage_work.build_engine(BuildRequest(RESNET, "fp32", backend, options, target, (1, 4)), exported.onnx_bytes, exported.checkpoint)
    assert engine.manifest.backend == backend
    assert engine.manifest.target == target.id
    assert len(engine.manifest.engine_sha256) == 64
    assert engine.manifest.inputs[0].shape[1:] == (3, 224, 224)

    timings = stage_work.benchmark_engine(engine.data, engine.manifest, 4, FAST)
    assert timings.iterations >= 3 == FAST.min_iterations
    assert len(timings.raw_ms) == timings.iterations
    assert timings.latency.min <= timings.latency.median <= timings.latency.p99 <= timings.latency.max
    assert timings.throughput == pytest.approx(4 * timings.iterations / timings.wall_s)
    # peak memory of the build and of the benchmark; on the GPU only where this process has one to use
    assert (engine.peak_host_memory_bytes or 0) > 0 and timings.peak_host_memory_bytes is not None
    if first_gpu() is None:
        assert engine.peak_device_memory_bytes is None and timings.peak_device_memory_bytes is None

    reference = stage_work.reference_outputs(exported.onnx_bytes, images, 4)
    fidelity = stage_work.engine_fidelity(engine.data, engine.manifest, images, reference, 4)
    assert fidelity.samples == len(images)
    assert fidelity.top1_agreement == 1.0
    assert fidelity.cosine_min > 0.9999
    assert fidelity.max_abs_error < 1e-3


@pytest.mark.parametrize(("level", "threads"), [("all", 1), ("basic", 2)])
def test_onnxruntime_build_logs_its_session_options_and_providers(exported: Exported, level: str, threads: int) -> None:
    """The Build log tab shows what ORT was asked to do, as it shows a TensorRT builder's log; the build's peak memory is kept."""
    request = BuildRequest(RESNET, "fp32", "onnxruntime", {"intra_op_threads": threads, "graph_optimization_level": level},
                           describe().targets()[0], (1,))
    engine = stage_work.build_engine(request, exported.onnx_bytes, None)
    lines = engine.log.splitlines()
    assert f"providers: {', '.join(engine.manifest.extra['providers'])}" in lines
    assert f"graph_optimization_level: ORT_ENABLE_{level.upper()}" in lines
    assert any(line.startswith(f"intra_op_num_threads: {threads} ") for line in lines)
    assert lines[0] == f"onnxruntime {engine.manifest.backend_version}"
    assert engine.peak_host_memory_bytes is not None and engine.peak_host_memory_bytes > 0  # ORT holds the model while it optimises


def test_onnxruntime_rejects_unknown_level(exported: Exported) -> None:
    request = BuildRequest(RESNET, "fp32", "onnxruntime", {"graph_optimization_level": "max"}, describe().targets()[0], (1,))
    with pytest.raises(ValueError, match="graph_optimization_level 'max'"):
        stage_work.build_engine(request, exported.onnx_bytes, None)


def test_nearest_rank_percentiles() -> None:
    values = np.arange(1, 101, dtype=float)  # 1..100
    assert nearest_rank(values, 50) == 50
    assert nearest_rank(values, 99) == 99
    assert nearest_rank(np.array([5.0]), 99) == 5
    stats = Stats.of([10.0, 10.0, 10.0, 30.0])
    assert stats.median == 10 and stats.max == 30 and stats.mean == 15
    assert stats.cv == pytest.approx(np.std([10, 10, 10, 30], ddof=1) / 15)


def test_measure_respects_iteration_bounds() -> None:
    calls = []
    timings = measure(lambda: calls.append(1), 2, BenchSettings(warmup_s=0, duration_s=10, min_iterations=5, max_iterations=7))
    assert timings.iterations == 7 and len(timings.raw_ms) == 7
    assert len(calls) == 8  # one warm-up call, then the timed ones
    clock = FakeClock()
    quick = measure(clock.step(lambda _: 2.0), 1, BenchSettings(warmup_s=0, duration_s=0, min_iterations=4, window_s=0.001, stable_windows=1),
                    now=clock.now)
    assert quick.iterations == 4 and quick.converged  # stopped at the floor, the first moment every rule held
    assert quick.raw_ms == [2.0] * 4 and quick.wall_s == pytest.approx(0.008)


class FakeClock:
    """A seconds clock that moves only when a step says how long it took: measure()'s stopping rules
    are checked by what they count, never by how fast this machine is."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> float:
        return self.seconds

    def step(self, duration_ms: Callable[[float], float]) -> Callable[[], None]:
        """A step that takes duration_ms(now) milliseconds of this clock."""
        def run() -> None:
            self.seconds += duration_ms(self.seconds) / 1e3
        return run


def test_stability_windows_converge_on_a_steady_workload() -> None:
    # Binary fractions keep the sums exact: 64 steps of 1/512 s fill each 0.125 s window.
    settings = BenchSettings(warmup_s=0.0625, duration_s=0.375, min_iterations=10, window_s=0.125, stable_windows=3, stability=0.1,
                             max_duration_s=5)
    clock = FakeClock()
    timings = measure(clock.step(lambda _: 1000 / 512), 1, settings, now=clock.now)
    assert timings.converged and timings.window_medians == [1000 / 512] * 3
    assert windows_agree(timings.window_medians, 3, 0.1)  # the rule it stopped on
    assert timings.wall_s == settings.duration_s and timings.iterations == 192  # at the floor, long before the cap
    low, high = timings.p50_interval or (0, 0)
    assert low <= timings.latency.median <= high and low == 1000 / 512


def test_a_drifting_workload_never_converges_and_says_so() -> None:
    clock = FakeClock()
    # 1 ms, growing 1 ms per 0.1 s: every window's median differs from the last
    slower_and_slower = clock.step(lambda seconds: 1 + 10 * seconds)
    settings = BenchSettings(warmup_s=0, duration_s=0.2, min_iterations=5, window_s=0.1, stable_windows=3, stability=0.05, max_duration_s=1.0)
    timings = measure(slower_and_slower, 1, settings, now=clock.now)
    assert not timings.converged and timings.noisy
    # stopped by the cap: the last step crossed it, and the one before had not
    assert timings.wall_s >= 1.0 > timings.wall_s - timings.raw_ms[-1] / 1e3
    assert timings.window_medians == sorted(timings.window_medians) and len(timings.window_medians) >= 9


def test_median_interval_covers_the_median_and_narrows_with_more_samples() -> None:
    from workers.bench import median_interval

    rng = np.random.default_rng(1)
    few, many = list(rng.normal(10, 1, 30)), list(rng.normal(10, 1, 3000))
    (a, b), (c, d) = median_interval(few), median_interval(many)
    assert a < 10 < b and c < 10 < d and (d - c) < (b - a) / 3


def test_compare_detects_disagreement() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20, 10))
    assert compare(reference, reference).top1_agreement == 1.0
    flipped = reference.copy()
    flipped[:5] = -flipped[:5]
    result = compare(reference, flipped)
    assert result.top1_agreement <= 0.75
    assert result.cosine_min == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="differs from the reference"):
        compare(reference, reference[:3])


def test_images_from_calibration_data_are_real_and_normalised(images: np.ndarray) -> None:
    assert images.shape == (6, 3, 224, 224)
    assert images.dtype == np.float32
    assert -3 < images.mean() < 3 and images.std() > 0.3  # real photos, not constants


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="not a folder of images"):
        load_images(tmp_path / "none", Preprocess())
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationDataError, match=r"0 usable images, at least 1 needed.*1 skipped"):
        load_images(tmp_path, Preprocess())


def test_describe_this_machine() -> None:
    info = describe()
    assert info.cpu.logical_cores >= 1
    assert info.cpu.arch
    assert info.targets()[0].kind == "cpu"
