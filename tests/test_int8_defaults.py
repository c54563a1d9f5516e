"""int8 settings that are right by default: augmented small calibration sets, ORT's entropy bins,
percentile as the second method, no moving average, and WeightBiasQuantization off in every CPU
session the farm opens (the build and the runner of the onnxruntime backend included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from farm.run.plan import expand
from farm.run.spec import load_spec
from farm.run.stages import CalibrateJob
from tests import digits_model
from tests.conftest import CALIBRATION_DATA, write_spec
from tests.test_plan import CPU
from workers import cpu_sessions, precision, precision_variants, qdq_sides
from workers.calibration import AUGMENTATIONS, SamplesReader, augment, load_images
from workers.structs import Preprocess

pytestmark = pytest.mark.usefixtures("quiet_ort")

SMALL = Preprocess(resize=40, crop=32)


@pytest.fixture(scope="module")
def photo_rows() -> np.ndarray:
    return load_images(CALIBRATION_DATA, SMALL, limit=16).array


def test_sixteen_photos_are_topped_up_to_32_rows_deterministically(photo_rows: np.ndarray) -> None:
    found = augment(photo_rows, precision.MIN_CALIBRATION_SAMPLES)
    assert found.array.shape == (32, *photo_rows.shape[1:]) and found.array.dtype == photo_rows.dtype
    assert np.array_equal(found.array[:16], photo_rows)  # the real rows first, untouched
    assert np.array_equal(found.array[16], photo_rows[0][:, :, ::-1])  # copy 0: the first photo flipped
    assert np.array_equal(augment(photo_rows, 32).array, found.array)  # the same rows every time
    assert found.description is not None and "16 rows + 16 augmented" in found.description and AUGMENTATIONS[0] in found.description
    # A third pass over 16 photos needs the crops: shifted and rescaled, so new pixels, same value range.
    more = augment(photo_rows, 40).array
    crop = more[32]
    assert not np.array_equal(crop, photo_rows[0]) and photo_rows.min() - 1e-5 <= crop.min() <= crop.max() <= photo_rows.max() + 1e-5


def test_enough_rows_or_non_image_rows_are_left_alone(photo_rows: np.ndarray) -> None:
    assert augment(photo_rows, 16).description is None and augment(photo_rows, 16).array is photo_rows
    features = np.ones((4, 10), dtype=np.float32)
    assert augment(features, 32).description is None and len(augment(features, 32).array) == 4


def test_the_calibrate_stage_augments_and_records_it(photo_rows: np.ndarray) -> None:
    from workers.models import export
    from workers.stage_work import calibrate_model, make_variant
    from workers.structs import ModelRef

    fp32 = export(ModelRef("tiny", "tests.models:tiny_cnn", None, (3, 32, 32))).onnx_bytes
    ranges = calibrate_model(fp32, photo_rows, "minmax", 99.999)
    assert ranges.samples == precision.MIN_CALIBRATION_SAMPLES and ranges.augmentation is not None
    stored = precision.CalibrationRanges.from_bytes(ranges.to_bytes())
    assert stored.augmentation == ranges.augmentation and stored.tensors == ranges.tensors
    # More rows than a flip of the same photos: the flipped copies really were seen (ranges can only grow).
    plain = precision_variants.calibrate(fp32, SamplesReader(photo_rows, "input", 8), "minmax")
    assert all(ranges.tensors[t].highest >= plain.tensors[t].highest for t in plain.tensors)
    details = make_variant(fp32, "int8", ranges=ranges.to_bytes()).details
    assert details["calibration_samples"] == 32 and details["calibration_augmentation"] == ranges.augmentation


def test_minmax_is_never_a_moving_average(digits: digits_model.DigitsData) -> None:
    """A moving average of batch ranges forgets the rare large activations; the farm's minmax keeps the true extremes."""
    fp32 = digits_model.export_onnx()
    reader = SamplesReader(digits.calibration_inputs, "input", 8)
    farm = precision_variants.calibrate(fp32, reader, "minmax")
    averaged = precision_variants.calibrate(fp32, reader, "minmax", moving_average=True)
    assert all(farm.tensors[t].highest >= averaged.tensors[t].highest for t in farm.tensors)
    assert any(farm.tensors[t].highest > averaged.tensors[t].highest for t in farm.tensors)
    assert precision.calibration_settings("minmax")["moving_average"] is False


def test_default_methods_are_minmax_and_percentile_with_their_settings_in_the_key(tmp_path: Path) -> None:
    spec = """
        name: t
        models: [{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}]
        precisions: [int8]
        backends: {onnxruntime: {}}
    """
    plan = expand(*load_spec(write_spec(tmp_path, spec)), [CPU])
    calibrations = [j for j in plan.jobs if isinstance(j, CalibrateJob)]
    assert {(j.method, j.percentile) for j in calibrations} == {("minmax", 0.0), ("percentile", 99.999)}
    assert precision.calibration_settings("entropy")["entropy_bins"] == 128  # ONNX Runtime's own default


def test_the_onnxruntime_backend_keeps_a_float_weight_float(digits: digits_model.DigitsData) -> None:
    """The build writes ORT's optimised model, and the runner opens it: neither may re-quantize a
    weight the fallback kept in float, and int8 kernels stay in use for the rest."""
    from workers.backends.onnxruntime import OnnxRuntimeBackend
    from workers.device import describe
    from workers.structs import BuildRequest, ModelRef, Target

    fp32 = digits_model.export_onnx("outlier_weights_digits_cnn")
    cpu = describe().cpu
    layout = precision.onnxruntime_int8_layout(cpu.arch, cpu.int8_dot_32bit)
    ranges = precision_variants.calibrate(fp32, SamplesReader(digits.calibration_inputs, "input", 16), "minmax")
    variant = qdq_sides.keep_weights_float(precision_variants.apply_quantization(fp32, ranges, "int8", layout=layout), ["/features/features.2/Conv"])
    request = BuildRequest(ModelRef("digits", "x", None, digits_model.INPUT_SHAPE), "int8", "onnxruntime", {}, Target("cpu", "here"), (16,))
    backend = OnnxRuntimeBackend()
    engine = backend.build(request, variant, None)
    assert engine.manifest.extra["disabled_optimizers"] == ["WeightBiasQuantization"]
    graph = onnx.load_from_string(engine.data).graph
    assert {i.name: i.data_type for i in graph.initializer}.get("features.2.weight") == onnx.TensorProto.FLOAT
    assert {"QLinearConv", "QGemm"} & {n.op_type for n in graph.node}
    inputs = digits.test_inputs[:16]
    reference = cpu_sessions.cpu_session(fp32, "fp32").run(None, {"input": inputs})[0]
    with backend.open(engine.data, engine.manifest) as runner:
        outputs = runner.infer({"input": inputs})[0]
    assert (outputs.argmax(1) == reference.argmax(1)).mean() >= 0.9
