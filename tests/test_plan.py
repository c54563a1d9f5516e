"""expand(): job counts, dependencies, target selection and the stability of content keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from farm.run.jobs import KeyInputs, Plan, TargetGroup, content_key
from farm.run.plan import expand, same_targets
from farm.run.spec import SpecError, load_spec
from farm.run.stages import BenchmarkJob, BuildJob, ExportJob, FidelityJob
from tests.conftest import CALIBRATION_DATA, write_spec
from workers.structs import Target

CPU = TargetGroup(Target("cpu", "Test CPU (x86_64, avx2)"), ("node-a",), {"onnxruntime": "1.0", "torch": "2.0"})
GPU = TargetGroup(Target("gpu", "NVIDIA H200", "9.0"), ("node-b",), {"torch": "2.0"})

SPEC = """
name: t
models:
  - {name: a, source: "torchvision:resnet18", weights: null}
  - {name: b, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}
batch_sizes: [1, 8]
backends:
  onnxruntime: {intra_op_threads: [1, 2]}
  torch: {}
"""


def _plan(tmp_path: Path, body: str = SPEC, groups: list[TargetGroup] | None = None) -> Plan:
    spec, base = load_spec(write_spec(tmp_path, body))
    return expand(spec, base, groups if groups is not None else [CPU, GPU])


def test_counts_follow_the_axes(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    # per model: onnxruntime x 2 options on cpu, torch on cpu and gpu
    assert len(plan.by_stage("export")) == 2
    assert len(plan.by_stage("variant")) == 2
    assert len(plan.by_stage("reference")) == 2
    assert len(plan.by_stage("build")) == 2 * (2 + 2)
    assert len(plan.by_stage("benchmark")) == 2 * 4 * 2
    assert len(plan.by_stage("fidelity")) == 2 * 4
    keys = [job.key for job in plan.jobs]
    assert len(keys) == len(set(keys))


def test_dependencies_point_backwards(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    seen: set[str] = set()
    for job in plan.jobs:
        assert set(job.needs) <= seen, job.label
        seen.add(job.key)
    fidelity = plan.by_stage("fidelity")[0]
    assert isinstance(fidelity, FidelityJob)
    assert {type(j).__name__ for j in plan.jobs if j.key in fidelity.needs} == {"BuildJob", "ReferenceJob"}


def test_keys_are_stable_and_change_only_where_inputs_change(tmp_path: Path) -> None:
    first = _plan(tmp_path)
    again = _plan(tmp_path)
    assert [j.key for j in first.jobs] == [j.key for j in again.jobs]

    longer = _plan(tmp_path, SPEC + "benchmark: {duration_s: 9}\n")
    assert {j.key for j in first.by_stage("build")} == {j.key for j in longer.by_stage("build")}
    assert not {j.key for j in first.by_stage("benchmark")} & {j.key for j in longer.by_stage("benchmark")}

    threads = _plan(tmp_path, SPEC.replace("[1, 2]", "[1, 3]"))
    unchanged = {j.key for j in first.by_stage("build")} & {j.key for j in threads.by_stage("build")}
    assert len(unchanged) == len(first.by_stage("build")) - 2  # only the two intra_op_threads=2 builds changed


def test_backend_version_is_part_of_the_build_key(tmp_path: Path) -> None:
    newer = TargetGroup(CPU.target, CPU.nodes, {"onnxruntime": "1.1", "torch": "2.0"})
    old = {j.key for j in _plan(tmp_path, groups=[CPU]).by_stage("build")}
    new = {j.key for j in _plan(tmp_path, groups=[newer]).by_stage("build")}
    assert len(old - new) == 4  # the onnxruntime builds of both models


def test_targets_filter_by_kind_and_name(tmp_path: Path) -> None:
    only_gpu = _plan(tmp_path, SPEC + "targets: gpu\n")
    builds = [j for j in only_gpu.by_stage("build") if isinstance(j, BuildJob)]
    assert {b.request.target.id for b in builds} == {"NVIDIA H200 / sm_90"}
    # ONNX Runtime is installed; it builds for CPUs only, and no CPU target was selected: the note says so
    assert any(n.startswith("backend onnxruntime: runs on cpu targets; none is selected") for n in only_gpu.notes)
    by_name = _plan(tmp_path, SPEC + "targets: ['h200']\n")
    assert {j.request.target.kind for j in by_name.by_stage("build") if isinstance(j, BuildJob)} == {"gpu"}
    # a target nothing matches (issue 13: `targets: [tpu]` exited 0) is an error before any job
    with pytest.raises(SpecError, match=r"^targets: a100: no target in the cluster matches \(targets found: "):
        _plan(tmp_path, SPEC + "targets: ['a100']\n")
    # one of several that is not there (a node kind offline, a typo): a note, and the others run
    partly = _plan(tmp_path, SPEC + "targets: ['h200', 'a100']\n")
    assert partly.by_stage("build") and any(n.startswith("targets: 'a100' matches no target in the cluster now") for n in partly.notes)


def test_onnx_file_models_skip_the_torch_baseline(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not really onnx")
    plan = _plan(tmp_path, "name: t\nmodels: [{name: f, source: m.onnx, weights: null}]\nbackends: {torch: {}, onnxruntime: {}}\n")
    assert {j.request.backend for j in plan.by_stage("build") if isinstance(j, BuildJob)} == {"onnxruntime"}
    assert any("torch backend skipped" in n for n in plan.notes)


def test_benchmark_jobs_carry_batch_and_target(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    benches = [j for j in plan.by_stage("benchmark") if isinstance(j, BenchmarkJob)]
    assert {b.batch_size for b in benches} == {1, 8}
    assert {b.target.kind for b in benches} == {"cpu", "gpu"}


def test_int8_layout_follows_each_target_and_shares_one_calibration(tmp_path: Path) -> None:
    from farm.run.stages import CalibrateJob, VariantJob

    avx2 = TargetGroup(Target("cpu", "AMD EPYC (x86_64, avx2)"), ("n1",), {"onnxruntime": "1.0", "tensorrt-rtx": "1.7"},
                       cpu_arch="x86_64", int8_dot_32bit=False)
    amx = TargetGroup(Target("cpu", "Intel Xeon (x86_64, amx)"), ("n2",), {"onnxruntime": "1.0"}, cpu_arch="x86_64", int8_dot_32bit=True)
    rtx = TargetGroup(Target("rtx", "sm_89", "8.9"), ("n1",), {"tensorrt-rtx": "1.7"}, cpu_arch="x86_64", int8_dot_32bit=False)
    body = """
name: t
models: [{name: a, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}]
precisions: [fp32, int8]
backends: {onnxruntime: {}, tensorrt: {}}
targets: [cpu, "rtx:sm_89"]
calibration: {methods: [minmax]}
"""
    plan = _plan(tmp_path, body, groups=[avx2, amx, rtx])
    variants = {j.key: j for j in plan.by_stage("variant") if isinstance(j, VariantJob)}
    layout_of = {b.request.target.id: variants[b.variant_key] for b in plan.by_stage("build")
                 if isinstance(b, BuildJob) and b.request.precision == "int8"}
    # ORT on a CPU without VNNI gets 7-bit weights, ORT with AMX full-range u8s8, TensorRT its own layout.
    assert layout_of[avx2.target.id].layout == "u8s8_7bit" and layout_of[avx2.target.id].label == "a int8 minmax u8s8 7-bit"
    assert layout_of[amx.target.id].layout == "u8s8"
    assert layout_of[rtx.target.id].layout == "tensorrt" and layout_of[rtx.target.id].label == "a int8 minmax"
    # three int8 variants from one calibration: no layout calibrates again
    calibrations = [j for j in plan.by_stage("calibrate") if isinstance(j, CalibrateJob)]
    int8 = [v for v in variants.values() if v.precision == "int8"]
    assert len(calibrations) == 1 and len(int8) == 3 and {v.calibration_key for v in int8} == {calibrations[0].key}
    assert len({v.key for v in int8}) == 3


def test_gpu_engine_kinds_fp16_bf16_and_blocks(tmp_path: Path) -> None:
    from farm.run.stages import VariantJob

    body = """
name: t
models: [{name: a, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}]
precisions: [fp32, fp16, bf16]
batch_sizes: [1, 8, 32]
backends:
  torch:
    - {kind: [eager, cuda_graph, compile], tf32: [false, true]}
    - {kind: compile, compile_mode: max-autotune, batch_sizes: [32]}
  onnxruntime: {}
"""
    plan = _plan(tmp_path, body)
    builds = [b for b in plan.by_stage("build") if isinstance(b, BuildJob)]
    variants = {v.key: v for v in plan.by_stage("variant") if isinstance(v, VariantJob)}
    gpu = [b for b in builds if b.request.target.kind == "gpu"]
    cpu_torch = [b for b in builds if b.request.target.kind == "cpu" and b.request.backend == "torch"]
    # CUDA graphs and TF32 only where a GPU is; tf32 only in fp32; compile_mode only for compile
    assert {b.request.options["kind"] for b in cpu_torch} == {"eager", "compile"} and not any("tf32" in b.request.options for b in cpu_torch)
    fp32_gpu = {(b.request.options["kind"], b.request.options.get("tf32"), b.request.options.get("compile_mode")) for b in gpu if b.request.precision == "fp32"}
    assert fp32_gpu == {(k, t, "default" if k == "compile" else None) for k in ("eager", "cuda_graph", "compile") for t in (False, True)} | {("compile", False, "max-autotune")}
    fp16_gpu = [b for b in gpu if b.request.precision == "fp16"]
    assert len(fp16_gpu) == 4 and not any("tf32" in b.request.options for b in fp16_gpu)
    # the max-autotune block is built and timed at its own batch size only
    autotuned = next(b for b in gpu if b.request.options.get("compile_mode") == "max-autotune" and b.request.precision == "fp16")
    assert autotuned.request.batch_sizes == (32,)
    assert [j.batch_size for j in plan.by_stage("benchmark") if isinstance(j, BenchmarkJob) and j.build_key == autotuned.key] == [32]
    # torch casts the module: its fp16 and bf16 variants are module variants, ONNX Runtime's fp16 is a converted graph
    torch_fp16 = {variants[b.variant_key].form for b in fp16_gpu}
    ort_fp16 = {variants[b.variant_key].form for b in builds if b.request.backend == "onnxruntime" and b.request.precision == "fp16"}
    assert torch_fp16 == {"module"} and ort_fp16 == {"onnx"}
    assert {b.request.backend for b in builds if b.request.precision == "bf16"} == {"torch"}
    assert any("bf16: onnxruntime builds no bf16 engine" in n for n in plan.notes)
    keys = [j.key for j in plan.jobs]
    assert len(keys) == len(set(keys))


def _downstream(plan: Plan) -> dict[str, set[str]]:
    """Every stage's keys: what an export key change must reach."""
    return {stage: {j.key for j in plan.by_stage(stage)} for stage in ("export", "reference", "variant", "build", "benchmark", "fidelity")}


def _all_changed(before: Plan, after: Plan) -> bool:
    old, new = _downstream(before), _downstream(after)
    return all(old[stage] and not old[stage] & new[stage] for stage in old)


FACTORY_SPEC = """
name: t
models: [{name: net, source: "mynets.models:net", weights: null, input_shape: [3, 32, 32]}]
backends: {onnxruntime: {}}
"""


def _factory_package(folder: Path) -> Path:
    """A package in `folder` whose factory module imports a sibling relatively and one package-wide,
    and a module nobody imports."""
    package = folder / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("from torch import nn\nfrom .layers import head\n\n\n"
                                       "def net() -> nn.Module:\n    import mynets.blocks\n    return head()\n")
    (package / "layers.py").write_text("def head():\n    return None\n")
    (package / "blocks.py").write_text("WIDTH = 4\n")
    (package / "unused.py").write_text("UNUSED = 1\n")
    return package


def test_a_factory_key_hashes_its_module_and_the_package_files_it_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the current folder: where a factory is found, as by Ray's workers
    package = _factory_package(tmp_path)
    first = _plan(tmp_path, FACTORY_SPEC, [CPU])
    (export,) = first.by_stage("export")
    assert isinstance(export, ExportJob)
    assert sorted(export.inputs.files["factory source"]) == ["mynets/__init__.py", "mynets/blocks.py", "mynets/layers.py", "mynets/models.py"]
    assert "torch" not in " ".join(export.inputs.files["factory source"])  # site-packages are versions, not the user's source
    assert [j.key for j in _plan(tmp_path, FACTORY_SPEC, [CPU]).jobs] == [j.key for j in first.jobs]

    (package / "unused.py").write_text("UNUSED = 2\n")  # not imported: not the model
    assert [j.key for j in _plan(tmp_path, FACTORY_SPEC, [CPU]).jobs] == [j.key for j in first.jobs]
    for edited in ("layers.py", "blocks.py", "models.py"):
        before = _plan(tmp_path, FACTORY_SPEC, [CPU])
        (package / edited).write_text((package / edited).read_text() + "\n# edited\n")
        assert _all_changed(before, _plan(tmp_path, FACTORY_SPEC, [CPU])), edited


def test_a_version_in_the_spec_is_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _factory_package(tmp_path)
    plain = _plan(tmp_path, FACTORY_SPEC, [CPU])
    one = _plan(tmp_path, FACTORY_SPEC.replace("[3, 32, 32]}", "[3, 32, 32], version: 1}"), [CPU])
    two = _plan(tmp_path, FACTORY_SPEC.replace("[3, 32, 32]}", "[3, 32, 32], version: '2'}"), [CPU])
    assert _all_changed(plain, one) and _all_changed(one, two)
    assert [e.inputs.versions for e in two.by_stage("export") if isinstance(e, ExportJob)] == [{"version": "2"}]


def test_a_torchvision_key_holds_its_version_and_weights(tmp_path: Path) -> None:
    from importlib.metadata import version

    body = "name: t\nmodels: [{name: r, source: 'torchvision:resnet18', weights: null}]\nbackends: {onnxruntime: {}}\n"
    (export,) = _plan(tmp_path, body, [CPU]).by_stage("export")
    assert isinstance(export, ExportJob) and export.inputs.versions == {"torchvision": version("torchvision")}
    assert export.key == content_key("export", model=export.model, inputs=export.inputs)  # what the key is made of
    other = KeyInputs({}, {"torchvision": version("torchvision") + ".post1"})
    assert content_key("export", model=export.model, inputs=other) != export.key
    weighted = _plan(tmp_path, body.replace("weights: null", "weights: IMAGENET1K_V1"), [CPU])
    assert _all_changed(_plan(tmp_path, body, [CPU]), weighted)


def _onnx_with_external_data(folder: Path, weights: list[float]) -> Path:
    """m.onnx with its weights in m.weights beside it."""
    from onnx import TensorProto, helper, numpy_helper, save_model

    weight = numpy_helper.from_array(np.array(weights, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [weight])
    path = folder / "m.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
               save_as_external_data=True, location="m.weights", size_threshold=0)
    return path


def test_an_onnx_key_covers_its_bytes_and_its_external_data(tmp_path: Path) -> None:
    body = "name: t\nmodels: [{name: m, source: m.onnx, weights: null, input_shape: [4]}]\nbackends: {onnxruntime: {}}\n"
    path = _onnx_with_external_data(tmp_path, [1, 2, 3, 4])
    first = _plan(tmp_path, body, [CPU])
    (export,) = first.by_stage("export")
    assert isinstance(export, ExportJob) and set(export.inputs.files) == {"ONNX file", "ONNX external data"}
    assert list(export.inputs.files["ONNX external data"]) == ["m.weights"]
    onnx_bytes = path.read_bytes()
    (tmp_path / "m.weights").write_bytes(np.array([1, 2, 3, 5], np.float32).tobytes())  # the same graph, other weights beside it
    second = _plan(tmp_path, body, [CPU])
    assert _all_changed(first, second)
    path.write_bytes(onnx_bytes + b"\x00")  # the .onnx bytes themselves
    assert _all_changed(second, _plan(tmp_path, body, [CPU]))


def test_keys_follow_the_photos_and_the_labels(tmp_path: Path) -> None:
    """A changed photo or label file means new references and fidelity, not the old ones (issue 22)."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(CALIBRATION_DATA, photos)
    (tmp_path / "labels.csv").write_text("01_astronaut.jpg,1\n")
    body = SPEC + "fidelity: {data: photos, labels: labels.csv}\n"
    first = _plan(tmp_path, body, [CPU])
    (tmp_path / "labels.csv").write_text("01_astronaut.jpg,2\n")
    relabelled = _plan(tmp_path, body, [CPU])
    shutil.copyfile(photos / "02_goldfish.jpg", photos / "01_astronaut.jpg")
    rephotographed = _plan(tmp_path, body, [CPU])
    for before, after in ((first, relabelled), (relabelled, rephotographed)):
        old, new = _downstream(before), _downstream(after)
        assert old["export"] == new["export"] and old["build"] == new["build"]  # the engines do not depend on the photos
        assert not old["reference"] & new["reference"] and not old["fidelity"] & new["fidelity"]


def test_which_nodes_hold_a_target_does_not_change_the_plan(tmp_path: Path) -> None:
    """The driver plans once per sweep: the plan made for this machine's own look (its node named "local") stands
    when Ray's probe finds the same targets under node ids; another backend version or target order is planned again."""
    elsewhere = [replace(CPU, nodes=("node-x", "node-y")), replace(GPU, nodes=("node-z",))]
    assert same_targets([CPU, GPU], elsewhere)
    here, there = _plan(tmp_path), _plan(tmp_path, groups=elsewhere)
    assert [(j.key, j.label) for j in here.jobs] == [(j.key, j.label) for j in there.jobs] and here.notes == there.notes
    assert not same_targets([CPU, GPU], [CPU, replace(GPU, backends={"torch": "2.1"})])
    assert not same_targets([CPU, GPU], [CPU, replace(GPU, int8_dot_32bit=False)])
    assert not same_targets([CPU, GPU], [GPU, CPU])
    assert not same_targets([CPU, GPU], [CPU])
