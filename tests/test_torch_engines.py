"""PyTorch engine kinds on a CPU (workers.backends.torch): options, eager, compile, aoti, compile caches.

The slow parts run in fresh processes. The compile-cache round trip (benchmarks/torch_compile_cache.py:
a cold compile, then a warm one from the exported blob) starts in the background before the
first test, so that on a 2-core CI machine it overlaps the AOTInductor build; it is killed
when the module ends if no test waited for it. The GPU-only checks are in
tests/test_gpu_torch_engines.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray.cloudpickle

from farm.run import tasks
from farm.run.stages.benchmark import BenchmarkCall
from farm.run.stages.build import BuildCall
from farm.run.stages.export import ExportCall
from tests.conftest import REPO
from workers import stage_work
from workers.backends.torch.aoti import AotiPackage, AotiRunner, build_aoti_package, check_aoti_package, read_package_metadata
from workers.backends.torch.engines import INPUT, flatten_outputs, prepare_module
from workers.backends.torch.kinds import RUNNERS, open_engine
from workers.backends.torch.options import KINDS, TorchEngineOptions
from workers.bench import BenchSettings, measure
from workers.device import gpu_clocks
from workers.structs import BuildRequest, ModelRef, Target

SHAPE = (3, 32, 32)
X = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)


def feeds(x: np.ndarray) -> dict[str, np.ndarray]:
    """A torch engine runner's feeds: its one input, by name."""
    return {INPUT: x}


# The model for the AOTInductor package lives in a file outside the repository, under a name
# no other process can import: a loader that needed the model's Python code would fail.
MODEL_SOURCE = '''
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
'''


def small_convnet() -> Any:
    import torch

    from tests.models import small_convnet as factory

    torch.manual_seed(0)
    module = factory().eval()
    for layer in module.modules():  # non-trivial batch-norm statistics, so folding them is checked too
        if isinstance(layer, torch.nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    return module


def plain_forward(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module", autouse=True)
def compile_cache_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], dict[str, Any]]]:
    out = tmp_path_factory.mktemp("compile-cache") / "result.json"
    command = [sys.executable, "benchmarks/torch_compile_cache.py", "--model", "tests.models:small_convnet",
               "--input-shape", "3,32,32", "--batches", "4,1", "--device", "cpu", "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result() -> dict[str, Any]:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        return dict(json.loads(out.read_text()))

    yield result
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TorchEngineOptions(kind="tensorrt"), "kind 'tensorrt': expected one of eager, cuda_graph, compile, aoti"),
        (lambda: TorchEngineOptions(kind="compile", compile_mode="fast"), "compile_mode 'fast': expected one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
        (lambda: TorchEngineOptions(compile_mode="max-autotune"), "compile_mode is only for kind compile, not eager"),
        (lambda: TorchEngineOptions(precision="int8"), "precision 'int8': expected one of fp32, fp16, bf16"),
        (lambda: TorchEngineOptions(precision="fp16", tf32=True), "tf32 applies to fp32 only, not fp16"),
        (lambda: TorchEngineOptions(channels_last="yes"), "channels_last 'yes': expected true or false"),  # type: ignore[arg-type]
        (lambda: TorchEngineOptions.from_dict({"kind": "eager", "mode": "eager"}), "torch engine option 'mode': expected one of"),
        (lambda: TorchEngineOptions(kind="cuda_graph").check_device("cpu"), "kind cuda_graph needs a CUDA device, not cpu"),
        (lambda: TorchEngineOptions(tf32=True).check_device("cpu"), "tf32 needs a CUDA device, not cpu"),
        (lambda: TorchEngineOptions().check_device("mps"), "device 'mps': expected one of cpu, cuda"),
        (lambda: TorchEngineOptions(freezing=True), "freezing and coordinate_descent are Inductor options: kind compile only, not eager"),
        (lambda: TorchEngineOptions(kind="cuda_graph", coordinate_descent=True), "freezing and coordinate_descent are Inductor options"),
        (lambda: TorchEngineOptions(quantize="int4"), "quantize 'int4': expected one of int8_dynamic, int8_weight_only, fp8_rowwise, fp8_tensorwise"),
        (lambda: TorchEngineOptions(quantize="fp8_rowwise", precision="fp16"), "quantize fp8_rowwise computes in bf16 (torchao float8): give precision bf16, not fp16"),
        (lambda: TorchEngineOptions(kind="aoti", quantize="int8_dynamic"), "quantize applies to kinds eager, cuda_graph and compile, not aoti"),
    ],
)
def test_bad_options_are_one_line_errors(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        make()


def test_every_kind_the_spec_takes_has_its_runner() -> None:
    """options.KINDS (what the spec and the options accept) and kinds.RUNNERS (what opens an engine) agree."""
    assert tuple(RUNNERS) == KINDS
    assert {kind: runner.kind for kind, runner in RUNNERS.items()} == {kind: kind for kind in KINDS}


def test_cuda_graph_on_cpu_fails_before_touching_the_module() -> None:
    module = small_convnet()
    with pytest.raises(ValueError, match="kind cuda_graph needs a CUDA device, not cpu"):
        open_engine(module, TorchEngineOptions(kind="cuda_graph"), "cpu", SHAPE)
    with pytest.raises(TypeError, match="kind aoti runs a package"):
        open_engine(module, TorchEngineOptions(kind="aoti"), "cpu", SHAPE)
    with pytest.raises(TypeError, match="kind eager runs a torch.nn.Module, not package bytes"):
        open_engine(b"pt2", TorchEngineOptions(), "cpu", SHAPE)


def test_options_round_trip_and_label() -> None:
    options = TorchEngineOptions(kind="compile", compile_mode="max-autotune", precision="fp16", channels_last=True)
    assert TorchEngineOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert options.label == "compile:max-autotune fp16 channels_last"
    assert TorchEngineOptions(kind="compile").mode == "default"
    frozen = TorchEngineOptions(kind="compile", compile_mode="max-autotune-no-cudagraphs", precision="bf16", freezing=True,
                                coordinate_descent=False, quantize="fp8_rowwise")
    assert TorchEngineOptions.from_dict(json.loads(json.dumps(frozen.to_dict()))) == frozen
    assert frozen.label == "compile:max-autotune-no-cudagraphs bf16 fp8_rowwise freezing no_coordinate_descent"


def test_inductor_options_spell_out_the_mode_and_freezing_is_config() -> None:
    """torch.compile takes a mode or options, not both: an added option keeps the mode's own ones."""
    from torch._inductor import list_mode_options

    plain = TorchEngineOptions(kind="compile", compile_mode="max-autotune")
    assert plain.inductor_options() == list_mode_options("max-autotune", dynamic=False)
    frozen = TorchEngineOptions(kind="compile", compile_mode="max-autotune", freezing=True)
    assert frozen.inductor_options() == list_mode_options("max-autotune", dynamic=False)
    assert frozen.inductor_config == {"freezing": True} and plain.inductor_config == {}
    assert frozen.uses_cudagraphs and not TorchEngineOptions(kind="compile", compile_mode="max-autotune-no-cudagraphs").uses_cudagraphs
    tuned = TorchEngineOptions(kind="compile", coordinate_descent=True).inductor_options()
    assert tuned == {"coordinate_descent_tuning": True}


def test_applies_keeps_old_keys_and_drops_what_cannot_run() -> None:
    from workers.backends.torch import TorchBackend

    defaults = {"kind": "compile", "compile_mode": "default", "freezing": False, "coordinate_descent": None, "quantize": None}
    assert TorchBackend.applies(defaults, "fp16", "gpu") == {"kind": "compile", "compile_mode": "default"}  # keys as before
    assert TorchBackend.applies({"kind": "eager", "freezing": True}, "fp16", "gpu") is None
    assert TorchBackend.applies({"kind": "compile", "quantize": "fp8_rowwise"}, "fp16", "gpu") is None  # fp8 computes in bf16
    assert TorchBackend.applies({"kind": "compile", "quantize": "fp8_rowwise"}, "bf16", "cpu") is None  # and needs a GPU
    assert TorchBackend.applies({"kind": "compile", "quantize": "fp8_rowwise"}, "bf16", "gpu") == {"kind": "compile", "quantize": "fp8_rowwise"}
    assert TorchBackend.applies({"kind": "eager", "quantize": "int8_dynamic"}, "fp32", "cpu") == {"kind": "eager", "quantize": "int8_dynamic"}


def test_run_padded_runs_only_the_given_batch_sizes() -> None:
    from workers.fidelity import run_padded

    seen: list[int] = []

    def infer(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    inputs = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    expected = inputs.sum(axis=1, keepdims=True)
    assert np.array_equal(run_padded(infer, inputs, (256,)), expected) and seen == [256]
    seen.clear()
    assert np.array_equal(run_padded(infer, inputs, (4, 16)), expected) and seen == [16]
    seen.clear()
    assert np.array_equal(run_padded(infer, inputs, (1, 4)), expected) and seen == [4, 4, 4]


def test_fidelity_of_a_compiled_engine_compiles_no_new_batch_size(tmp_path: Path) -> None:
    """16 judge images on an engine compiled for 256 made every fidelity job autotune a new shape
    (194 s of max-autotune on an H100): the judge images now run at a batch size the build compiled."""
    import torch._dynamo

    model = ModelRef("small", "tests.models:small_convnet", None, SHAPE)
    exported = stage_work.export_model(model)
    request = BuildRequest(model, "fp32", "torch", {"kind": "compile"}, Target("cpu", "any"), (8,))
    engine = stage_work.build_engine(request, None, exported.checkpoint)
    assert engine.manifest.extra["batch_sizes"] == [8]
    inputs = np.random.default_rng(1).standard_normal((10, *SHAPE)).astype(np.float32)  # chunks of 8 and 2 before
    reference = stage_work.reference_outputs(exported.onnx_bytes, inputs, 8)
    torch._dynamo.reset()  # the build compiled batch 8 in this process; count what the fidelity job compiles
    torch._dynamo.utils.counters.clear()
    found = stage_work.engine_fidelity(engine.data, engine.manifest, inputs, reference, batch_size=8, caches=(engine.builder_cache or b"",)[:1])
    compiled_shapes = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled_shapes == 1, f"{compiled_shapes} graphs compiled for 10 judge images on an engine built for batch 8"
    assert found.samples == 10 and found.top1_agreement == 1.0 and found.cosine_min > 0.999


@pytest.mark.parametrize("freezing", [False, True])
def test_freezing_really_freezes_the_compiled_graph(freezing: bool) -> None:
    """Given in torch.compile's options, freezing was silently not applied (pytorch/pytorch#139272):
    the farm's 'freezing' engine ran 1.10x slower than a frozen one on an H100. Frozen, Inductor's code
    holds the weights as constants (_frozen_param) and batch norm is folded into the convolutions."""
    import torch
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    module = small_convnet()
    runner = open_engine(module, TorchEngineOptions(kind="compile", freezing=freezing), "cpu", SHAPE)
    with runner:
        outputs, code = run_and_get_code(lambda: runner.infer(feeds(X)))
    generated = "\n".join(code)
    assert ("_frozen_param" in generated) is freezing
    assert ("batch_norm" in generated) is not freezing
    np.testing.assert_allclose(outputs[0], plain_forward(small_convnet(), X), atol=1e-4)


def test_int8_quantized_module_on_cpu_stays_close_to_fp32() -> None:
    """torchao's int8 dynamic and weight-only quantization of the linear layers, eager, on a CPU."""
    module = small_convnet()
    expected = plain_forward(module, X)
    for quantize in ("int8_dynamic", "int8_weight_only"):
        options = TorchEngineOptions(quantize=quantize)
        with open_engine(copy.deepcopy(module), options, "cpu", SHAPE) as runner:
            got = runner.infer(feeds(X))[0]
            weight = runner.module[-1].weight  # the one nn.Linear; torchao leaves the convolutions alone
        cosine = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.min() > 0.99, (quantize, cosine)
        assert "Int8" in type(weight).__name__, (quantize, type(weight))


def test_fp8_is_refused_in_one_line_without_a_gpu() -> None:
    from workers.backends.torch.quant import QuantizeUnavailable, check_quantize

    with pytest.raises(QuantizeUnavailable, match=r"^quantize fp8_rowwise needs a GPU of compute capability >= 8.9 \(torchao float8\), not cpu$"):
        check_quantize("fp8_rowwise", "cpu")


def test_importing_the_modules_does_not_import_torch() -> None:
    code = ("import sys, workers.backends.torch, workers.backends.torch.aoti_child, workers.device; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_what_torch_stages_return_reads_without_torch(tmp_path: Path) -> None:
    """The driver unpickles every Outcome; one that named a torch class (torch.__version__ is one)
    made it import torch, which hung a `ray job submit` driver inside ray.get."""
    model = ModelRef("small", "tests.models:small_convnet", None, SHAPE)
    exported = tasks.run_call(ExportCall(model=model))
    request = BuildRequest(model, "fp32", "torch", {"kind": "eager"}, Target("cpu", "any"), (2,))
    built = tasks.run_call(BuildCall(request=request, variant=None, checkpoint=exported.blobs["checkpoint"], caches=()))
    settings = BenchSettings(warmup_s=0.0, duration_s=0.05, min_iterations=3, window_s=0.02, max_duration_s=0.3)
    timed = tasks.run_call(BenchmarkCall(engine=built.blobs["engine"], manifest=built.value.manifest, batch_size=2, settings=settings,
                                         caches=()))
    assert exported.ok and built.ok and timed.ok, (exported.error, built.error, timed.error)
    assert built.value.manifest.extra["torch_version"] == exported.value.torch_version
    pickled = tmp_path / "outcomes.pkl"
    pickled.write_bytes(ray.cloudpickle.dumps([exported, built, timed]))
    code = ("import pickle, sys; sys.modules['torch'] = None; "  # None in sys.modules: `import torch` raises
            f"outcomes = pickle.loads(open({str(pickled)!r}, 'rb').read()); "
            "assert [type(o.value).__name__ for o in outcomes][:2] == ['ExportInfo', 'Engine'], outcomes")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_eager_runner_on_cpu_matches_the_module_and_times_steps() -> None:
    module = small_convnet()
    expected = plain_forward(module, X)
    with open_engine(copy.deepcopy(module), TorchEngineOptions(), "cpu", SHAPE) as runner:
        (out,) = runner.infer(feeds(X))
        assert out.dtype == np.float32 and out.shape == (4, 10)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert runner.gpu_timer() is None
        step = runner.prepare(feeds(X[:2]), data_transfers=False)
        timings = measure(step, 2, BenchSettings(warmup_s=0, duration_s=0, min_iterations=3, max_iterations=3), synchronize=runner.synchronize)
        assert timings.iterations == 3 and timings.gpu_compute is None
        assert set(runner.setup_seconds) == {4, 2}  # each batch size bound once
        # the Runner base checks the feed: one float32 input of (batch, *input_shape), whatever the engine's precision
        with pytest.raises(ValueError, match=r"^EagerRunner: input 'input' has shape \(4, 3, 16, 16\): axis 2 must be 32"):
            runner.infer(feeds(np.zeros((4, 3, 16, 16), np.float32)))
        with pytest.raises(ValueError, match=r"^EagerRunner: input 'input' is float16; the engine takes float32$"):
            runner.infer(feeds(X.astype(np.float16)))
    with pytest.raises(RuntimeError, match=r"^EagerRunner\.infer\(\) called outside `with runner:`"):
        runner.infer(feeds(X))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_applied_and_close_to_fp32(precision: str) -> None:
    module = small_convnet()
    expected = plain_forward(module, X)
    with open_engine(copy.deepcopy(module), TorchEngineOptions(precision=precision), "cpu", SHAPE) as runner:
        (out,) = runner.infer(feeds(X))
    assert out.dtype == np.float32
    assert not np.array_equal(out, expected)  # the cast happened: 8 or 11 mantissa bits change the logits
    scale = np.abs(expected).max()
    assert np.abs(out - expected).max() < 0.05 * scale
    assert (out.argmax(1) == expected.argmax(1)).all()


def test_channels_last_gives_the_same_outputs() -> None:
    import torch

    module = small_convnet()
    expected = plain_forward(module, X)
    options = TorchEngineOptions(channels_last=True)
    prepared: Any = prepare_module(copy.deepcopy(module), options, "cpu")
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    with open_engine(prepared, options, "cpu", SHAPE) as runner:
        np.testing.assert_allclose(runner.infer(feeds(X))[0], expected, atol=1e-5)


def test_flatten_outputs_and_clocks_without_a_gpu() -> None:
    import torch

    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [t.numel() for t in flatten_outputs({"boxes": a, "rest": (b, [c])})] == [1, 2, 3]
    with pytest.raises(TypeError, match="a forward returned str, not tensors"):
        flatten_outputs("logits")
    clocks = gpu_clocks(0)
    assert set(clocks) >= {"sm_mhz", "memory_mhz", "sm_max_mhz"}
    if not torch.cuda.is_available():
        assert clocks["sm_mhz"] is None and clocks["error"]


@pytest.fixture(scope="module")
def aoti_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    import torch

    name = f"aoti_model_{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("model-source") / f"{name}.py"
    path.write_text(MODEL_SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    torch.manual_seed(0)
    return source.Net().eval(), name


@pytest.fixture(scope="module")
def aoti_package(aoti_model: tuple[Any, str]) -> AotiPackage:
    module, _ = aoti_model
    return build_aoti_package(copy.deepcopy(module), SHAPE, [1, 4], TorchEngineOptions(kind="aoti"), "cpu")


def test_aoti_package_records_what_it_is(aoti_package: AotiPackage) -> None:
    assert aoti_package.batch_min == 1 and aoti_package.batch_max == 4
    assert aoti_package.size_bytes > 10_000 and aoti_package.compile_seconds > 0 and aoti_package.export_seconds > 0
    assert aoti_package.peak_rss_bytes > 100 << 20  # torch itself is resident
    metadata = read_package_metadata(aoti_package.data)
    assert metadata["farm.batch"] == "1,4" and metadata["farm.input_shape"] == "3,32,32" and metadata["farm.device"] == "cpu"
    assert TorchEngineOptions.from_dict(json.loads(metadata["farm.options"])) == TorchEngineOptions(kind="aoti")


def test_aoti_package_runs_in_a_fresh_process_without_the_model_code(aoti_model: tuple[Any, str], aoti_package: AotiPackage) -> None:
    module, name = aoti_model
    assert importlib.util.find_spec(name) is None  # not importable by name, here or in the child
    check = check_aoti_package(aoti_package.data, "cpu", inputs=[X[:1], X])
    assert check.ok, check.detail
    assert check.outputs is not None and check.setup_seconds is not None
    assert set(check.setup_seconds) == {1, 4}
    for x, (out,) in zip([X[:1], X], check.outputs, strict=True):
        assert out.shape == (len(x), 10)
        np.testing.assert_allclose(out, plain_forward(module, x), atol=1e-5)


def test_aoti_runner_refuses_what_the_package_cannot_run(aoti_model: tuple[Any, str], aoti_package: AotiPackage) -> None:
    module, _ = aoti_model
    with open_engine(aoti_package.data, TorchEngineOptions(kind="aoti"), "cpu", SHAPE) as runner:
        np.testing.assert_allclose(runner.infer(feeds(X[:2]))[0], plain_forward(module, X[:2]), atol=1e-5)
        with pytest.raises(ValueError, match=r"batch 5: this aoti package runs batch 1\.\.4"):
            runner.infer(feeds(np.zeros((5, *SHAPE), np.float32)))  # AOTInductor itself would run it, unchecked
    with pytest.raises(ValueError, match="options aoti fp16 differ from the package's own: aoti fp32"):
        AotiRunner(aoti_package.data, "cpu", TorchEngineOptions(kind="aoti", precision="fp16"))
    with pytest.raises(ValueError, match=r"input_shape \(3, 64, 64\) differs from the package's own: \(3, 32, 32\)"):
        AotiRunner(aoti_package.data, "cpu", input_shape=(3, 64, 64))
    with pytest.raises(ValueError, match="was built for cpu and cannot run on cuda"):
        AotiRunner(aoti_package.data, "cuda")
    with pytest.raises(ValueError, match="not an AOTInductor package"):
        AotiRunner(b"not a zip", "cpu")


def test_aoti_check_reports_a_child_that_fails() -> None:
    check = check_aoti_package(b"not a zip", "cpu", timeout_s=120)
    assert not check.ok and check.returncode == 1
    assert "not an AOTInductor package" in check.detail


def test_compile_matches_eager_and_a_cache_blob_warms_a_fresh_process(compile_cache_run: Callable[[], dict[str, Any]]) -> None:
    result = compile_cache_run()
    cold, warm = result["cold"], result["warm"]
    for report in (cold, warm):
        assert set(report["compile_s"]) == {"4", "1"}  # one compile per batch size (dynamic=False)
        assert max(report["max_abs_error"].values()) < 1e-4  # Inductor's fused CPU kernels vs eager fp32
    assert cold["blob_bytes"] > 10_000
    assert cold["counters"]["inductor"].get("fxgraph_cache_miss") == 2 and not cold["counters"]["inductor"].get("fxgraph_cache_hit")
    assert warm["imported_artifacts"].get("inductor", 0) >= 2
    # the warm process found both graphs in the imported caches: Inductor's lowering and codegen were skipped
    assert warm["counters"]["inductor"].get("fxgraph_cache_hit") == 2 and not warm["counters"]["inductor"].get("fxgraph_cache_miss")
    assert warm["counters"]["aot_autograd"].get("autograd_cache_hit") == 2
