"""Precision variants through the whole farm: calibration once and cached, the fallback in a sweep,
labelled accuracy, and a detector's box agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from farm.run.driver import SweepResult, run_sweep
from farm.results.select import candidates
from workers.device import describe
from workers.precision import onnxruntime_int8_layout
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from tests import digits_model
from tests.conftest import CALIBRATION_DATA, write_spec

pytestmark = pytest.mark.slow
DigitsSweep = tuple[Path, Store, SweepResult]  # the folder, the store, the first sweep's result


def _digits_spec(folder: Path, precisions: str) -> Path:
    paths = digits_model.save_digits_arrays(folder / "digits")
    return write_spec(folder, f"""
        name: digits
        models:
          - {{name: digits, source: "tests.digits_model:outlier_digits_cnn", weights: null, input_shape: [1, 8, 8]}}
        precisions: {precisions}
        batch_sizes: [1, 16]
        backends: {{onnxruntime: {{}}}}
        calibration: {{data: {paths['calibration']}, samples: 64, methods: minmax}}
        fidelity: {{data: {paths['holdout']}, samples: 200, labels: {paths['labels']}, min_top1_agreement: 0.99,
                   fallback: {{max_tries: 6, max_float_fraction: 0.5}}}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        limits: {{isolate_builds: false}}
    """, name=f"spec-{len(precisions)}.yaml")


@pytest.fixture(scope="module")
def digits_sweep(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> DigitsSweep:
    folder = tmp_path_factory.mktemp("digits")
    spec, base = load_spec(_digits_spec(folder, "[fp32, int8]"))
    store = open_store(StoreLocation.resolve(folder / "data"))
    return folder, store, run_sweep(spec, base, "digits", store)


def test_the_fallback_rescues_int8_inside_a_sweep(digits_sweep: DigitsSweep) -> None:
    _folder, store, _result = digits_sweep
    with store.session() as s:
        variant = s.scalars(select(schema.Variant).where(schema.Variant.precision == "int8")).one()
        fallback = variant.details["fallback"]
        assert fallback["plain"]["top1_agreement"] < 0.95  # the outlier channel breaks plain int8 (0.26 in the TensorRT layout, 0.89-0.93 in u8s8)
        assert fallback["passed"] and fallback["kept_in_float"] and not fallback["refused"]
        assert all("SQNR" in node["reason"] for node in fallback["kept_in_float"])
        assert variant.method == "minmax" and variant.calibration_key is not None
        # ONNX Runtime builds get the int8 layout this CPU's kernels compute faithfully. Keeping the
        # outlier in float leaves 4 of this tiny network's 7 quantized activations (u8 layouts) or 5 of
        # 10 (the TensorRT layout) quantized, and every answer says so.
        cpu = describe().cpu
        layout = onnxruntime_int8_layout(cpu.arch, cpu.int8_dot_32bit)
        fraction = variant.details["quantized_fraction"]
        assert variant.details["layout"] == layout and fraction == (0.5 if layout == "tensorrt" else round(4 / 7, 4))
        tries = fallback["tries"]
        assert fraction == round(next(t for t in reversed(tries) if t["passed"])["quantized"] / fallback["quantizable"], 4)
        build = s.scalars(select(schema.Build).where(schema.Build.variant_key == variant.key)).one()
        assert build.manifest["extra"]["variant"] == {"method": "minmax", "layout": layout, "quantized_fraction": fraction}
        best = [c for c in candidates(s) if c.precision == "int8"]
        assert best and all(c.quantized_fraction == fraction and f"({fraction:.0%} int8)" in c.engine for c in best)
        fidelity = s.scalars(select(schema.Fidelity).where(schema.Fidelity.build_key == build.key)).one()
        # the engine built from the rescued variant passes on the held-out rows, with labels
        assert fidelity.top1_agreement >= 0.99
        assert fidelity.labelled == 200 and fidelity.accuracy is not None and fidelity.reference_accuracy is not None
        assert fidelity.accuracy > 0.9 and abs(fidelity.accuracy - fidelity.reference_accuracy) < 0.02


def test_calibration_runs_once_and_is_reused(digits_sweep: DigitsSweep) -> None:
    folder, store, first = digits_sweep
    assert first.count("calibrate", "done") == 1
    with store.session() as s:
        calibration = s.scalars(select(schema.Calibration)).one()
        assert calibration.samples == 64 and calibration.tensors > 0
        assert store.artifacts.verify(calibration.ranges_sha256)
        created = calibration.created_at
    # Same calibration, one more precision: the ranges are reused and no calibrator runs.
    spec, base = load_spec(_digits_spec(folder, "[fp32, int8, fp8]"))
    second = run_sweep(spec, base, "digits", store)
    assert second.count("calibrate", "cached") == 1 and second.count("calibrate", "done") == 0
    assert second.count("variant", "cached") == 2 and second.count("variant", "done") == 1  # fp8 is new
    with store.session() as s:
        assert s.scalars(select(schema.Calibration)).one().created_at == created
        fp8 = s.scalars(select(schema.Variant).where(schema.Variant.precision == "fp8")).one()
        assert fp8.status == "ok" and fp8.calibration_key == calibration.key


def test_a_detector_is_judged_by_box_agreement(ray_cluster: None, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, f"""
        name: detector
        models:
          - name: frcnn
            source: "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
            weights: null
            task: detection
            input_shape: [3, 320, 320]
            kwargs: {{box_score_thresh: 0.0, box_detections_per_img: 20}}
        batch_sizes: [1]
        backends: {{onnxruntime: {{}}, tensorrt: {{}}}}
        targets: [cpu, "rtx:sm_89"]
        calibration: {{data: {CALIBRATION_DATA}, samples: 2}}
        fidelity: {{samples: 2, box_score_threshold: 0.0, min_top1_agreement: 0.9}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 2, window_s: 0.05, max_duration_s: 0.3}}
        limits: {{isolate_builds: false}}
    """)
    spec, base = load_spec(spec_path)
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    run_sweep(spec, base, str(spec_path), store)
    with store.session() as s:
        builds = {b.backend: b for b in s.scalars(select(schema.Build))}
        assert builds["onnxruntime"].status == "ok"
        assert builds["tensorrt"].status == "failed" and "(NonZero)" in builds["tensorrt"].error
        fidelity = s.scalars(select(schema.Fidelity)).one()
        # the fp32 engine against the fp32 reference: every box found again
        assert fidelity.reference_boxes > 0 and fidelity.candidate_boxes == fidelity.reference_boxes
        assert fidelity.box_recall == 1.0 and fidelity.box_precision == 1.0 and fidelity.score_diff_max < 1e-3
        assert fidelity.top1_agreement is None
        # box recall as k/n with its interval, per image, and fp32's own box agreement under a 2-pixel shift
        assert fidelity.agreed == fidelity.reference_boxes and fidelity.agreement_high == 1.0 and fidelity.agreement_low < 1.0
        assert [n for n, _matched in fidelity.evidence["per_image"]] and sum(m for _n, m in fidelity.evidence["per_image"]) == fidelity.agreed
        floor = s.scalars(select(schema.Reference)).one().noise_floor
        assert floor["perturbation"] == "2-pixel shift" and 0 <= floor["matched"] <= floor["reference_boxes"] == fidelity.reference_boxes
