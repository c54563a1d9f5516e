"""The TensorRT backend through real TensorRT-RTX builds on this CPU-only machine: no mocks.

RTX builds ahead of time for named compute capabilities without a GPU, so these tests build
real engines; the datacenter flavour is not installed here and must say how to install it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from workers import cuda, stage_work
from workers.backends import BackendUnavailable, get_backend
from workers.backends.base import BuildContext
from workers.backends.tensorrt import (
    RTX_PLAN_MAGIC,
    BuildError,
    OnnxParseError,
    TensorRTBackend,
    TensorRTEngine,
    parse_bytes,
    plan_flavour,
)
from workers.models import Exported, export
from workers.structs import BuildRequest, ModelRef, Target, TensorSpec

# CI installs farm[rtx] and runs these (README): there a missing package fails the module instead of
# skipping 22 tests unseen. Elsewhere the skip says what to install.
if os.environ.get("CI"):
    import tensorrt_rtx as trt
else:
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'farm[rtx]')")

RESNET = ModelRef("resnet18", "torchvision:resnet18", None, (3, 224, 224))
TINY = ModelRef("tiny", "tests.models:tiny_cnn", None, (3, 32, 32))
BATCHES = (1, 2, 8)
SM86 = Target("rtx", "sm_86", "8.6")
SM89 = Target("rtx", "sm_89", "8.9")


def request(model: ModelRef, target: Target, options: dict[str, Any] | None = None, precision: str = "fp32") -> BuildRequest:
    return BuildRequest(model, precision, "tensorrt", options or {}, target, BATCHES)


@pytest.fixture(scope="module")
def resnet() -> Exported:
    return export(RESNET)


@pytest.fixture(scope="module")
def tiny() -> Exported:
    return export(TINY)


@pytest.fixture(scope="module")
def resnet_engines(resnet: Exported) -> dict[str, TensorRTEngine]:
    """fp32 engines for sm_86 and for sm_89, through the stage the driver calls (which fills the hashes)."""
    built = {}
    for target in (SM86, SM89):
        engine = stage_work.build_engine(request(RESNET, target), resnet.onnx_bytes, resnet.checkpoint)
        assert isinstance(engine, TensorRTEngine)
        built[target.name] = engine
    return built


def test_registry_and_availability() -> None:
    backend = get_backend("tensorrt")
    assert isinstance(backend, TensorRTBackend)
    assert TensorRTBackend.batch_profile is True
    assert TensorRTBackend.target_kinds == ("gpu", "rtx")
    found = backend.availability()
    # tensorrt-stubs leaves an importable `tensorrt` namespace here: it must not count as datacenter TensorRT.
    assert found.version == f"rtx {trt.__version__}"
    assert "datacenter: missing (pip install 'farm[tensorrt]')" in found.detail


def test_rtx_fp32_engines_for_two_targets(resnet: Exported, resnet_engines: dict[str, TensorRTEngine]) -> None:
    for name, engine in resnet_engines.items():
        assert engine.data[:4] == RTX_PLAN_MAGIC == b"vtrt"
        assert plan_flavour(engine.data) == "rtx"
        m = engine.manifest
        assert (m.backend, m.backend_version, m.target, m.precision, m.model) == (
            "tensorrt", f"rtx {trt.__version__}", f"rtx:{name}", "fp32", "resnet18"
        )
        assert m.options == {}
        assert m.inputs == [TensorSpec("input", ("batch", 3, 224, 224), "float32")]
        assert m.outputs == [TensorSpec("output", ("batch", 1000), "float32")]
        assert m.variant_sha256 == hashlib.sha256(resnet.onnx_bytes).hexdigest()
        assert m.engine_sha256 == hashlib.sha256(engine.data).hexdigest()
        extra = m.extra
        assert extra["flavour"] == "rtx" and extra["tensorrt_version"] == trt.__version__
        assert extra["compute_capabilities"] == [name]
        assert extra["profile"] == {"input": [1, 8, 8]}
        assert extra["optimization_level"] == 3 and extra["workspace_bytes"] is None
        assert extra["plan_bytes"] == len(engine.data) > 10_000_000  # resnet18's fp32 weights alone are 46 MB
        assert extra["network_layers"] > 40
        assert "Building engine" in [p["phase"] for p in extra["progress"]]
        assert engine.builder_cache is None
        assert engine.seconds > 0
        assert (engine.peak_host_memory_bytes or 0) > len(engine.data)  # the builder holds the plan, then farm copies it
        assert "[INFO] Engine generation completed" in engine.log and "[VERBOSE]" in engine.log
        assert "Number of target compute capabilities: 1" in engine.log


def test_one_engine_for_several_compute_capabilities(tiny: Exported) -> None:
    options = {"compute_capabilities": ["sm_86", "sm_89", "sm_120"]}
    engine = TensorRTBackend().build(request(TINY, SM89, options), tiny.onnx_bytes, None)
    assert engine.manifest.extra["compute_capabilities"] == ["sm_86", "sm_89", "sm_120"]
    assert "Number of target compute capabilities: 3" in engine.log
    single = TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None)
    assert len(engine.data) > len(single.data)  # each capability adds its own code for a small net


def test_unsupported_compute_capability_names_the_supported_ones(tiny: Exported) -> None:
    with pytest.raises(ValueError, match=r"cannot build for sm_90; it supports sm_75, sm_80, sm_86, sm_89"):
        TensorRTBackend().build(request(TINY, Target("rtx", "sm_90", "9.0")), tiny.onnx_bytes, None)


def test_workspace_and_optimization_level_on_rtx(tiny: Exported) -> None:
    backend = TensorRTBackend()
    level0 = backend.build(request(TINY, SM89, {"optimization_level": 0}), tiny.onnx_bytes, None)
    level3 = backend.build(request(TINY, SM89), tiny.onnx_bytes, None)
    assert level0.manifest.extra["optimization_level"] == 0 and level0.manifest.options == {"optimization_level": 0}
    # RTX acts on level 0 (one tactic, no gemm fusions) and says so, yet the plan keeps its size.
    assert "Set number of tactics to 1 at optimization level 0" in level0.log
    assert "at optimization level" not in level3.log
    assert len(level0.data) == len(level3.data)

    roomy = backend.build(request(TINY, SM89, {"workspace": "64MiB"}), tiny.onnx_bytes, None)
    assert roomy.manifest.extra["workspace_bytes"] == 64 << 20
    # The workspace limit is real on RTX: this net needs about 8.2 MiB of scratch.
    with pytest.raises(BuildError, match="within workspace limit") as failed:
        backend.build(request(TINY, SM89, {"workspace": "1MiB"}), tiny.onnx_bytes, None)
    assert "[ERROR]" in failed.value.log


def test_progress_callback_sees_steps_and_can_cancel(tiny: Exported) -> None:
    seen: list[tuple[str, int, int]] = []
    context = BuildContext(progress=lambda phase, done, total: seen.append((phase, done, total)))
    TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None, context)
    assert ("Cloning network graph", 1, seen[0][2]) == seen[0] and seen[0][2] > 1
    assert all(0 < done <= total for _, done, total in seen)

    def cancel(phase: str, done: int, total: int) -> bool:
        return phase != "Optimizing graph"

    with pytest.raises(BuildError, match="built no engine"):
        TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None, BuildContext(progress=cancel))

    def broken(phase: str, done: int, total: int) -> None:
        raise KeyError("boom")

    with pytest.raises(BuildError, match="progress callback raised KeyError"):
        TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None, BuildContext(progress=broken))


def test_nonzero_is_a_parser_error_naming_the_node() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="find_boxes")], "nz", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(OnnxParseError) as caught:
        TensorRTBackend().build(request(TINY, SM89), model.SerializeToString(), None)
    (issue,) = caught.value.issues
    assert (issue.node, issue.node_name, issue.operator, issue.code) == (0, "find_boxes", "NonZero", "UNSUPPORTED_NODE")
    assert "node 0 'find_boxes' (NonZero): UNSUPPORTED_NODE" in str(caught.value)
    assert "TensorRT (rtx) ONNX parser rejected the model, 1 error(s)" in str(caught.value)


def test_absent_flavour_says_how_to_install(tiny: Exported) -> None:
    h200 = Target("gpu", "NVIDIA H200", "9.0")
    for options in ({}, {"flavour": "datacenter"}):  # auto picks datacenter for a gpu target
        with pytest.raises(BackendUnavailable, match=re.escape("module tensorrt is not installed (pip install 'farm[tensorrt]')")):
            TensorRTBackend().build(request(TINY, h200, options), tiny.onnx_bytes, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flavour": "cuda"}, "flavour 'cuda': expected one of auto, datacenter, rtx"),
        ({"flavour": "datacenter"}, "is a TensorRT-RTX target: use flavour rtx"),
        ({"optimization_level": 6}, "optimization_level 6: expected an integer 0..5"),
        ({"workspce": "1GiB"}, r"options \['workspce'\]: unknown"),
        ({"hardware_compatibility_level": "ampere_plus"}, "is a datacenter option"),
        ({"compute_capabilities": "sm_89"}, "expected a non-empty list"),
        ({"workspace": "1GB"}, r"binary units"),
    ],
)
def test_bad_options_fail_before_building(tiny: Exported, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorRTBackend().build(request(TINY, SM89, options), tiny.onnx_bytes, None)


def test_parse_bytes() -> None:
    assert parse_bytes(1 << 20) == 1 << 20
    assert parse_bytes("64MiB") == 64 << 20
    assert parse_bytes("1GiB") == 1 << 30
    assert parse_bytes("512KiB") == 512 << 10
    assert parse_bytes("1.5 GiB") == 3 << 29
    assert parse_bytes("4096") == 4096
    assert parse_bytes("unlimited") is None
    for bad in ("64MB", "lots", "0", "-1MiB", "0.1B", True, 0):
        with pytest.raises(ValueError, match="workspace"):
            parse_bytes(bad)  # type: ignore[arg-type]


def test_plan_flavour_recognises_only_rtx_plans(resnet: Exported) -> None:
    assert plan_flavour(resnet.onnx_bytes) is None
    assert plan_flavour(b"") is None


def test_timing_cache_is_never_made_on_rtx(tiny: Exported) -> None:
    engine = TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None, BuildContext(caches=(b"cache from a GPU",)))
    assert engine.builder_cache is None
    assert "timing cache ignored" in engine.log


@pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # fp16 flushes tiny weights to 1e-7
def test_fp16_and_int8_variants_build_smaller(resnet: Exported, resnet_engines: dict[str, TensorRTEngine], tmp_path: Path) -> None:
    from onnxconverter_common import float16

    fp16 = float16.convert_float_to_float16(onnx.load_from_string(resnet.onnx_bytes), keep_io_types=True).SerializeToString()
    int8 = _int8_variant(resnet.onnx_bytes, tmp_path)
    sizes = {"fp32": len(resnet_engines["sm_89"].data)}
    for precision, variant in (("fp16", fp16), ("int8", int8)):
        engine = TensorRTBackend().build(request(RESNET, SM89, precision=precision), variant, None)
        assert plan_flavour(engine.data) == "rtx"
        assert engine.manifest.precision == precision
        assert engine.manifest.inputs == [TensorSpec("input", ("batch", 3, 224, 224), "float32")]  # keep_io_types / Q/DQ inside
        sizes[precision] = len(engine.data)
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.4 * sizes["fp32"]


def _int8_variant(onnx_bytes: bytes, folder: Path) -> bytes:
    """Q/DQ with HF Optimum's TensorRT settings (docs/precision.md), calibrated on a few random batches (enough to build, not to be accurate)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Noise(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._batches = iter([{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    source, target = folder / "fp32.onnx", folder / "int8.onnx"
    source.write_bytes(onnx_bytes)
    quantize_static(
        str(source),
        str(target),
        Noise(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "AddQDQPairToWeight": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
        },
    )
    return target.read_bytes()


def test_runner_needs_a_gpu_and_says_why(resnet_engines: dict[str, TensorRTEngine]) -> None:
    try:
        cuda.describe_device()
    except cuda.CudaError:
        pass
    else:
        pytest.skip("a CUDA device is visible here; this test covers CPU-only machines")
    engine = resnet_engines["sm_89"]
    with pytest.raises(BackendUnavailable, match=r"TensorRT \(rtx\) .* cannot load this engine here: .*CUDA"):
        with TensorRTBackend().open(engine.data, engine.manifest):
            pass


def test_cuda_helpers_fail_with_the_call_and_the_error() -> None:
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    try:
        cuda.describe_device()
    except cuda.CudaError as exc:
        assert re.match(r"cudaGetDeviceCount failed: cudaError\w+: .+", str(exc))
    else:
        pytest.skip("a CUDA device is visible here: run `python -m workers.cuda` instead")
    assert cuda.main(["--mib", "1", "--iterations", "1"]) == 1


GARBAGE_BUILDER = """
import gc
from onnx import TensorProto, helper
from tests.test_tensorrt_backend import SM89, TINY, request
from workers.backends import tensorrt
from workers.backends.tensorrt import build as tensorrt_build  # where build_engine looks BuildLog up
from workers.models import export

tiny = export(TINY)
graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], "nz",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])])
bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
gc.disable()  # nothing collects the cycle below before the next build starts
try:
    tensorrt.TensorRTBackend().build(request(TINY, SM89), bad, None)
except tensorrt.OnnxParseError as exc:
    kept = [exc]
    kept.append(kept)  # the failed build's builder, through its traceback, now lives in a reference cycle
del kept


class CollectingMessages(list):
    def append(self, item):  # a collection that happens to run inside TensorRT's first logger callback
        if not self:
            gc.collect()
        super().append(item)


record = tensorrt_build.BuildLog
tensorrt_build.BuildLog = lambda: (lambda r: (setattr(r, "messages", CollectingMessages()), r)[1])(record())
tensorrt.TensorRTBackend().build(request(TINY, SM89), tiny.onnx_bytes, None)
print("built")
"""


def test_garbage_from_a_failed_build_never_deadlocks_the_next_one() -> None:
    """A builder left in a reference cycle, freed by a collection inside TensorRT's logger callback,
    takes the lock TensorRT holds there: the process hung (seen in a test run) until builds collect
    garbage before TensorRT runs and never while it does."""
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-c", GARBAGE_BUILDER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "built" in done.stdout, done.stderr[-2000:]
