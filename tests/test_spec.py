"""Sweep spec validation: valid specs load; every invalid one fails with one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from farm.run.spec import SpecError, SweepSpec, load_spec
from tests.conftest import REPO, write_spec

VALID = """
name: t
models:
  - {name: a, source: "torchvision:resnet18", weights: null}
backends:
  onnxruntime: {intra_op_threads: [1, 2]}
  torch: {}
"""


def test_quickstart_spec_is_valid() -> None:
    spec, base = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert {m.name for m in spec.models} == {"resnet18", "mobilenet_v3_small"}
    assert spec.batch_sizes == [1, 8]
    assert set(spec.backends.enabled()) == {"onnxruntime", "torch", "tensorrt"}
    assert spec.precisions == ["fp32", "fp16", "int8"] and spec.rtx_targets() == ["sm_89"]
    assert base == REPO / "sweeps"


def test_scalars_become_axes_and_defaults_apply(tmp_path: Path) -> None:
    spec, _ = load_spec(write_spec(tmp_path, VALID + "batch_sizes: 4\n"))
    assert spec.batch_sizes == [4]
    assert spec.models[0].input_shape == (3, 224, 224)
    (block,) = spec.backends.enabled()["onnxruntime"]  # one mapping is one block of axes
    assert block.combinations() == [{"intra_op_threads": 1, "graph_optimization_level": "all"},
                                    {"intra_op_threads": 2, "graph_optimization_level": "all"}]


def test_a_backend_takes_blocks_each_with_its_batch_sizes(tmp_path: Path) -> None:
    body = VALID.replace("  torch: {}", "  torch: [{kind: [eager, cuda_graph]}, {kind: compile, compile_mode: max-autotune, batch_sizes: 8}]")
    spec, _ = load_spec(write_spec(tmp_path, body + "batch_sizes: [1, 8]\n"))
    cheap, autotuned = spec.backends.enabled()["torch"]
    assert cheap.batch_sizes is None and [c["kind"] for c in cheap.combinations()] == ["eager", "cuda_graph"]
    assert autotuned.batch_sizes == [8] and autotuned.combinations()[0]["compile_mode"] == "max-autotune"


def test_mode_is_the_old_name_of_kind(tmp_path: Path) -> None:
    spec, _ = load_spec(write_spec(tmp_path, VALID.replace("  torch: {}", "  torch: {mode: eager}")))
    assert spec.backends.enabled()["torch"][0].kind == ["eager"]


def test_batch_sizes_are_sorted_and_unique(tmp_path: Path) -> None:
    spec, _ = load_spec(write_spec(tmp_path, VALID + "batch_sizes: [8, 1, 8]\n"))
    assert spec.batch_sizes == [1, 8]


BASE = {"name": "t", "models": [{"name": "a", "source": "torchvision:resnet18", "weights": None}], "backends": {"torch": {}}}


def _with(**changes: object) -> dict[str, object]:
    return {**BASE, **changes}


INVALID = [
    (_with(models=[{"name": "a", "source": "torchvision:resnet18"}]), "models[0].weights: required field is missing"),
    (_with(models=[{"name": "a", "source": "resnet18", "weights": None}]), "models[0].source: expected torchvision:NAME"),
    (_with(models=[]), "models: List should have at least 1 item"),
    (_with(models=[BASE["models"][0], BASE["models"][0]]), "models: model names must be unique; 'a' appears twice"),  # type: ignore[index]
    (_with(models=[{"name": "a b", "source": "torchvision:resnet18", "weights": None}]), "models[0].name: String should match pattern"),
    (_with(models=[{"name": "a", "source": "torchvision:resnet18", "weights": None, "input_shape": [3, 0, 224]}]), "models[0].input_shape: expected positive dimensions"),
    (_with(backends={}), "backends: expected at least one backend"),
    (_with(backends={"tensorflow": {}}), "backends.tensorflow: unknown field"),
    (_with(backends={"onnxruntime": {"intra_op_threads": ["two"]}}), "backends.onnxruntime.intra_op_threads[0]: expected a valid integer"),
    (_with(backends={"onnxruntime": {"graph_optimization_level": "max"}}), "backends.onnxruntime.graph_optimization_level[0]: expected 'disable', 'basic', 'extended' or 'all', got 'max'"),
    (_with(backends={"torch": {"kind": "compiled"}}), "backends.torch.kind[0]: expected 'eager', 'cuda_graph', 'compile' or 'aoti'"),
    (_with(backends={"torch": [{"kind": "eager"}, {"kind": "aoti", "batch_sizes": [0]}]}), "backends.torch[1].batch_sizes[0]: expected"),
    (_with(batch_sizes=[0]), "batch_sizes[0]: expected greater than or equal to 1, got 0"),
    (_with(precisions=["int4"]), "precisions[0]: expected 'fp32'"),
    (_with(benchmark={"duration_s": "long"}), "benchmark.duration_s: expected a valid number"),
    (_with(benchmark={"warmup": 1}), "benchmark.warmup: unknown field"),
    (_with(fidelity={"min_top1_agreement": 1.5}), "fidelity.min_top1_agreement: expected less than or equal to 1, got 1.5"),
    (_with(limits={"job_timeout_s": 0}), "limits.job_timeout_s: expected greater than 0"),
    ({k: v for k, v in BASE.items() if k != "name"}, "name: required field is missing"),
]


@pytest.mark.parametrize(("data", "expected"), INVALID, ids=[e for _, e in INVALID])
def test_invalid_spec_names_file_and_field(tmp_path: Path, data: dict[str, object], expected: str) -> None:
    import yaml

    path = write_spec(tmp_path, yaml.safe_dump(data))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: t\nmodels: [\n")
    with pytest.raises(SpecError, match=rf"^{path}:3:1: not valid YAML"):
        load_spec(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="nope.yaml: cannot read the spec"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write_spec(tmp_path, "- a\n- b\n"))


def test_every_error_of_a_spec_is_named_at_once(tmp_path: Path) -> None:
    """Three mistakes cost one run, not three: each is its own line naming the file and the field."""
    path = write_spec(tmp_path, yaml.safe_dump(_with(batch_sizes=[0], precisions=["int4"], colour="blue")))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines), lines
    assert sorted(line.split(": ")[1] for line in lines) == ["batch_sizes[0]", "colour", "precisions[0]"]
    assert "more" not in str(caught.value)


def test_the_cli_prints_each_spec_error_on_its_own_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from farm.cli import app

    path = write_spec(tmp_path, yaml.safe_dump(_with(batch_sizes=[0], precisions=["int4"])))
    done = CliRunner().invoke(app, ["sweep", str(path), "--data-dir", str(tmp_path / "data")])
    assert done.exit_code == 2
    errors = [line for line in done.output.splitlines() if line.strip()]
    assert len(errors) == 2 and all(line.startswith("error: ") and str(path) in line for line in errors), errors
    assert not done.output.startswith("\n") and not (tmp_path / "data").exists()


def test_preprocessing_from_spec_weights_or_input_shape(tmp_path: Path) -> None:
    spec, _ = load_spec(write_spec(tmp_path, """
        name: t
        models:
          - {name: a, source: "torchvision:resnet18", weights: null, input_shape: [3, 112, 112]}
          - {name: b, source: "torchvision:resnet18", weights: IMAGENET1K_V1}
          - {name: c, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32],
             preprocess: {resize: 40, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
        backends: {torch: {}}
    """))
    scaled, from_weights, stated = (m.preprocessing() for m in spec.models)
    assert (scaled.resize, scaled.crop) == (128, 112)
    assert (from_weights.resize, from_weights.crop, from_weights.mean) == (256, 224, (0.485, 0.456, 0.406))
    assert (stated.resize, stated.crop, stated.std) == (40, 32, (0.25, 0.25, 0.25))


def test_the_readmes_sweep_format_is_a_valid_spec() -> None:
    """Every field the README's format block shows exists, with a value the spec accepts."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The sweep format"):]
    start = section.index("```yaml") + len("```yaml")
    spec = SweepSpec.model_validate(yaml.safe_load(section[start:section.index("```", start)]))
    assert spec.backends.torch and len(spec.backends.torch) == 4 and spec.selection.retime.rounds == 8
    assert spec.backends.torch[2].freezing == [True] and spec.backends.torch[3].quantize == ["fp8_rowwise", "int8_dynamic"]
