"""The precision fallback on a case built to need it.

The digits CNN gets one extra first-layer channel that is always 400 and that the next layer
ignores: fp32 outputs are unchanged, but the per-tensor int8 range of that layer's output grows
a hundredfold and int8 collapses (measured: top-1 agreement 0.08). The fallback must find that
tensor, keep it in float and pass, from the stored ranges alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from workers import cpu_sessions, fidelity, precision, precision_variants, qdq_sides
from workers.calibration import SamplesReader
from workers.device import describe
from workers.fallback import Threshold, diagnose, find_fallback

from tests import digits_model

pytestmark = pytest.mark.usefixtures("quiet_ort")

HELD_OUT = 250  # test digits used for fidelity; calibration uses training digits only
OUTLIER_TENSORS = {"/features/features.0/Conv_output_0", "/features/features.1/Relu_output_0"}


@pytest.fixture(scope="module")
def outlier() -> bytes:
    return digits_model.export_onnx("outlier_digits_cnn")


@pytest.fixture(scope="module")
def held_out(digits: digits_model.DigitsData) -> np.ndarray:
    return digits.test_inputs[:HELD_OUT]


def fp32_outputs(model: bytes, inputs: np.ndarray) -> np.ndarray:
    return cpu_sessions.cpu_session(model, "fp32").run(None, {"input": inputs})[0]  # type: ignore[no-any-return]


def calibrate(model: bytes, digits: digits_model.DigitsData) -> precision.CalibrationRanges:
    return precision_variants.calibrate(model, SamplesReader(digits.calibration_inputs, "input", 16), "minmax")


def test_the_outlier_model_is_the_same_function_in_fp32(outlier: bytes, held_out: np.ndarray) -> None:
    plain = digits_model.export_onnx()
    assert np.allclose(fp32_outputs(plain, held_out), fp32_outputs(outlier, held_out), atol=1e-4)


def test_fallback_rescues_int8_that_the_plain_variant_fails(outlier: bytes, held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    ranges = precision.CalibrationRanges.from_bytes(calibrate(outlier, digits).to_bytes())  # as the driver stores it
    reference = fp32_outputs(outlier, held_out)
    labels = digits.test_labels[:HELD_OUT]
    # Half of this ten-activation network's quantized tensors sit around the outlier: allow that much float.
    result = find_fallback(outlier, ranges, held_out, reference, threshold=Threshold(top1_agreement=0.99), max_tries=6,
                           max_float_fraction=0.5, labels=labels)

    # Relations only, no numbers from this session's training (they move with torch and the CPU's kernels).
    plain = result.steps[0]
    assert plain.kept_float == 0 and not plain.passed and plain.fidelity.top1_agreement < 0.99
    assert plain.fidelity.top1_agreement < result.steps[-1].fidelity.top1_agreement
    assert result.passed and result.onnx_bytes is not None, result.reason

    # Activations are at fault, measured: quantized alone they lose far more than the weights alone.
    assert result.side == "activations" and result.diagnosis is not None
    assert result.diagnosis.activations_only.cosine_mean < result.diagnosis.weights_only.cosine_mean
    assert result.diagnosis.activations_only.top1_agreement < 0.99 <= result.diagnosis.weights_only.top1_agreement
    assert result.reason.startswith("activations cause the loss")

    # The outlier tensors are ranked first, far below the rest, and are what the result keeps in float.
    assert {s.tensor for s in result.ranking[:2]} == OUTLIER_TENSORS
    assert [s.sqnr_db for s in result.ranking] == sorted(s.sqnr_db for s in result.ranking)
    assert result.ranking[1].sqnr_db < result.ranking[2].sqnr_db
    # What is kept in float is the outlier tensors' producers and consumers, and nothing else.
    excluded = {e.node for e in result.excluded}
    assert excluded == {node for s in result.ranking[:2] for node in s.nodes}
    assert {"/features/features.0/Conv", "/features/features.1/Relu"} <= excluded
    outlier_scores = {s.score for s in result.ranking[:2]}
    assert all(e.score in outlier_scores and e.score > result.ranking[2].score for e in result.excluded)
    assert all("SQNR" in e.reason and "rank" in e.reason for e in result.excluded)
    assert 2 <= len(result.steps) <= 7 and result.steps[-1].passed

    # What stays quantized is what the passing variant counts, and part of it went back to float.
    passing = min((s for s in result.steps if s.passed), key=lambda s: s.kept_float)
    assert 0 < passing.quantized < plain.quantized == result.quantizable and not result.refused
    assert result.quantized_fraction == passing.quantized / result.quantizable

    # The returned variant really passes, and is exactly what the stored ranges give with that exclusion list.
    outputs = cpu_sessions.fake_quant_session(result.onnx_bytes).run(None, {"input": held_out})[0]
    final = fidelity.compare(reference, outputs, labels)
    assert final.top1_agreement >= 0.99 and final.accuracy is not None and final.reference_accuracy is not None
    # agreeing with fp32 on 99% of images, its accuracy is fp32's within the 1% that may differ
    assert abs(final.accuracy - final.reference_accuracy) <= 1 - final.top1_agreement + 1e-9
    assert result.onnx_bytes == precision_variants.apply_quantization(outlier, ranges, "int8", sorted(excluded))
    graph = onnx.load_from_string(result.onnx_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    still_int8 = {n.name for n in graph.node if n.op_type != "DequantizeLinear" and set(n.input) & dequantized}
    assert {"/features/features.5/Conv", "/features/features.7/Flatten", "/classifier/Gemm"} <= still_int8
    assert not excluded & still_int8


def test_fallback_stops_at_max_tries(outlier: bytes, held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    # Keeping only the single worst tensor in float is not enough (its Relu output is as bad), so one try fails.
    result = find_fallback(outlier, calibrate(outlier, digits), held_out, fp32_outputs(outlier, held_out), max_tries=1)
    assert not result.passed and result.onnx_bytes is None and result.excluded == []
    assert len(result.steps) == 2 and not any(s.passed for s in result.steps)
    assert "within 1 tries" in result.reason


def test_a_variant_that_passes_needs_no_fallback(held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    plain = digits_model.export_onnx()
    result = find_fallback(plain, calibrate(plain, digits), held_out, fp32_outputs(plain, held_out), threshold=Threshold(0.99, 0.999))
    assert result.passed and result.excluded == [] and result.ranking == [] and len(result.steps) == 1
    assert result.steps[0].fidelity.cosine_mean >= 0.999


def test_cosine_threshold_alone_can_demand_a_fallback(outlier: bytes, held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    result = find_fallback(outlier, calibrate(outlier, digits), held_out, fp32_outputs(outlier, held_out),
                           threshold=Threshold(top1_agreement=None, cosine_mean=0.999), max_tries=6, max_float_fraction=0.5)
    assert not result.steps[0].passed and result.passed
    assert result.steps[-1].fidelity.cosine_mean >= 0.999


def test_a_rescue_that_keeps_too_much_in_float_is_refused(outlier: bytes, held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    ranges = calibrate(outlier, digits)
    reference = fp32_outputs(outlier, held_out)
    result = find_fallback(outlier, ranges, held_out, reference, max_tries=6, max_float_fraction=0.25)
    # A passing try exists (half the activations in float), but that is an fp32 network under an int8 name.
    assert result.refused and not result.passed and result.onnx_bytes is None
    assert any(s.passed for s in result.steps) and result.quantized_fraction < 0.75
    kept = result.quantizable - min(s.quantized for s in result.steps if s.passed)
    assert f"{kept} of {result.quantizable} quantized activations ({kept / result.quantizable:.0%})" in result.reason
    assert "not viable" in result.reason and kept / result.quantizable > 0.25
    assert "max_float_fraction 0.25" in result.reason and "not a kernel" in result.reason
    # Through the variant stage the refusal is a failed job with that reason, never an "int8" variant.
    from workers.stage_work import _npz, make_variant

    with pytest.raises(precision.QuantizationError, match="not viable"):
        make_variant(outlier, "int8", ranges=ranges.to_bytes(), heldout=held_out, reference=_npz(outputs=reference),
                     fallback_tries=6, max_float_fraction=0.25)


def test_the_fallback_judges_by_fake_quant_so_every_cpu_gives_one_answer(held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    """TensorRT-layout int8 on x86 without VNNI saturates in ONNX Runtime's kernels (top-1 agreement
    0.944 here on an AVX2 EPYC); judged by fake-quant the plain variant passes on every CPU alike."""
    plain = digits_model.export_onnx()
    ranges = calibrate(plain, digits)
    reference = fp32_outputs(plain, held_out)
    result = find_fallback(plain, ranges, held_out, reference)
    assert result.passed and len(result.steps) == 1 and result.quantized_fraction == 1.0
    fake = cpu_sessions.fake_quant_session(result.onnx_bytes).run(None, {"input": held_out})[0]
    assert fidelity.compare(reference, fake).top1_agreement == result.steps[0].fidelity.top1_agreement


def test_threshold_reads_both_measures() -> None:
    good = fidelity.Fidelity(10, 1.0, 1.0, 0.9999, 0.999, 0.01)
    bad_cosine = fidelity.Fidelity(10, 1.0, 1.0, 0.98, 0.95, 0.5)
    assert Threshold().passes(good) and Threshold().passes(bad_cosine)
    assert not Threshold(0.99, 0.99).passes(bad_cosine)
    assert Threshold(None, None).passes(fidelity.Fidelity(10, 0.0, 0.0, 0.0, 0.0, 9.0))
    assert Threshold(0.99, 0.99).describe() == "top-1 agreement >= 0.99 and mean cosine >= 0.99"


@pytest.fixture(scope="module")
def outlier_weights() -> bytes:
    return digits_model.export_onnx("outlier_weights_digits_cnn")


SECOND_CONV = "/features/features.2/Conv"


def test_weights_at_fault_are_kept_in_float_per_layer(outlier_weights: bytes, held_out: np.ndarray,
                                                      digits: digits_model.DigitsData) -> None:
    """The second conv reads an always-zero channel through huge weights: fp32 is unchanged, its
    activations are untouched, but its per-channel weight scales round the real weights to zero.
    The fallback must blame the weights and keep that layer's weights, and only those, in float."""
    plain_model = digits_model.export_onnx()
    reference = fp32_outputs(outlier_weights, held_out)
    assert np.allclose(reference, fp32_outputs(plain_model, held_out), atol=1e-4)
    ranges = calibrate(outlier_weights, digits)
    result = find_fallback(outlier_weights, ranges, held_out, reference, max_tries=6)

    assert not result.steps[0].passed and result.side == "weights" and result.diagnosis is not None
    weights_only, activations_only = result.diagnosis.weights_only, result.diagnosis.activations_only
    assert weights_only.cosine_mean < 0.9 < 0.999 <= activations_only.cosine_mean
    assert weights_only.top1_agreement < 0.5 < 0.99 <= activations_only.top1_agreement
    assert f"{weights_only.cosine_mean:.4f}" in result.reason and f"{activations_only.cosine_mean:.4f}" in result.reason

    assert result.ranking[0].tensor == "features.2.weight" and result.ranking[0].nodes == (SECOND_CONV,)
    assert result.ranking[0].sqnr_db + 20 < result.ranking[1].sqnr_db  # far worse than any other weight
    assert result.passed and result.onnx_bytes is not None, result.reason
    assert [e.node for e in result.excluded] == [SECOND_CONV] and "weight features.2.weight in float" in result.excluded[0].reason
    assert result.quantized_fraction == (result.quantizable - 1) / result.quantizable

    # The conv reads its float weight directly, but its input is still dequantized int8, as are the other layers' weights.
    graph = onnx.load_from_string(result.onnx_bytes).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == SECOND_CONV)
    assert conv.input[1] == "features.2.weight" and produced_by[conv.input[0]].op_type == "DequantizeLinear"
    other = next(n for n in graph.node if n.name == "/features/features.5/Conv")
    assert produced_by[other.input[1]].op_type == "DequantizeLinear"
    final = fidelity.compare(reference, cpu_sessions.fake_quant_session(result.onnx_bytes).run(None, {"input": held_out})[0])
    assert final.top1_agreement >= 0.99


def test_the_variant_record_says_which_side_and_why(outlier_weights: bytes, held_out: np.ndarray,
                                                    digits: digits_model.DigitsData) -> None:
    from workers.stage_work import _npz, make_variant

    reference = fp32_outputs(outlier_weights, held_out)
    variant = make_variant(outlier_weights, "int8", ranges=calibrate(outlier_weights, digits).to_bytes(), heldout=held_out,
                           reference=_npz(outputs=reference), fallback_tries=6)
    record = variant.details["fallback"]
    assert record["passed"] and record["side"] == "weights"
    diagnosis = record["diagnosis"]
    assert diagnosis["side"] == "weights" and diagnosis["weights_only"]["cosine_mean"] < diagnosis["activations_only"]["cosine_mean"]
    assert "weights cause the loss" in diagnosis["reason"] and [k["node"] for k in record["kept_in_float"]] == [SECOND_CONV]


def test_a_weight_kept_in_float_stays_float_in_the_int8_session(outlier_weights: bytes, held_out: np.ndarray,
                                                                digits: digits_model.DigitsData, tmp_path: Path) -> None:
    """With float biases (the TensorRT layout), ORT's WeightBiasQuantization gives the float weight a
    per-tensor int8 grid, and the huge weights zero the real ones; the farm's CPU sessions turn it off.
    The layout ORT gets on this CPU (int32 biases) keeps ORT's int8 kernels with the pass off."""
    from workers.device import describe

    reference = fp32_outputs(outlier_weights, held_out)
    ranges = calibrate(outlier_weights, digits)

    def optimized(layout: str, disabled: tuple[str, ...]) -> tuple[onnx.GraphProto, float]:
        import onnxruntime as ort

        variant = qdq_sides.keep_weights_float(precision_variants.apply_quantization(outlier_weights, ranges, "int8", layout=layout), [SECOND_CONV])
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{layout}{len(disabled)}.onnx")
        options.log_severity_level = 3
        outputs = cpu_sessions.cpu_inference_session(variant, options, disabled).run(None, {"input": held_out})[0]
        return onnx.load(options.optimized_model_filepath).graph, fidelity.compare(reference, outputs).cosine_mean

    def weight_type(graph: onnx.GraphProto) -> int | None:
        return {i.name: i.data_type for i in graph.initializer}.get("features.2.weight")

    farm_graph, farm_cosine = optimized("tensorrt", cpu_sessions.DISABLED_OPTIMIZERS)
    ort_graph, ort_cosine = optimized("tensorrt", ())
    assert weight_type(farm_graph) == onnx.TensorProto.FLOAT and weight_type(ort_graph) is None  # ORT re-quantized it
    assert ort_cosine < 0.9 < 0.999 < farm_cosine

    cpu = describe().cpu
    own_graph, own_cosine = optimized(precision.onnxruntime_int8_layout(cpu.arch, cpu.int8_dot_32bit), cpu_sessions.DISABLED_OPTIMIZERS)
    assert weight_type(own_graph) == onnx.TensorProto.FLOAT and own_cosine > 0.99
    assert {"QLinearConv", "QGemm"} & {n.op_type for n in own_graph.node}  # the other layers still run int8 kernels


@pytest.mark.parametrize("layout", sorted(precision.INT8_LAYOUTS))
def test_the_diagnosis_blames_the_right_side_in_every_layout(layout: str, outlier: bytes, outlier_weights: bytes,
                                                             held_out: np.ndarray, digits: digits_model.DigitsData) -> None:
    """In the u8 layouts ORT folds each Relu into the grid after it (zero point 0): the side left
    unquantized must keep that Relu, or "weights alone" would be a network without its Relus."""
    for model, culprit in ((outlier, "activations"), (outlier_weights, "weights")):
        reference = fp32_outputs(model, held_out)

        def judge(variant: bytes) -> fidelity.Fidelity:
            return fidelity.compare(reference, cpu_sessions.fake_quant_session(variant).run(None, {"input": held_out})[0])

        plain = precision_variants.apply_quantization(model, calibrate(model, digits), "int8", layout=layout)
        found = diagnose(plain, judge)
        innocent = found.activations_only if culprit == "weights" else found.weights_only
        guilty = found.weights_only if culprit == "weights" else found.activations_only
        assert found.side == culprit and guilty.cosine_mean < 0.95 < 0.999 < innocent.cosine_mean, (culprit, found.reason)
        assert qdq_sides.count(qdq_sides.without(plain, culprit), culprit) == 0 < qdq_sides.count(plain, culprit)


def test_the_fallback_judges_by_evidence_where_the_spec_does() -> None:
    """The fallback passes a variant as eligibility (farm.results.evidence) would: flips on images fp32 itself
    could hardly decide (margins 0.01, 0.02) or flipped under its own 2-pixel shift are no reason to fall
    back; one flip fp32 was sure of is, and so is a bare 22/24 under the old threshold."""
    from workers.fidelity import Fidelity

    margins = tuple([0.9] * 22 + [0.01, 0.02])
    undecided = Fidelity(24, 22 / 24, 1.0, 0.999, 0.99, 0.1, agreed=22, flipped=(22, 23), reference_margins=margins)
    confident = Fidelity(24, 23 / 24, 1.0, 0.999, 0.99, 0.1, agreed=23, flipped=(0,), reference_margins=margins)
    bare = Threshold(top1_agreement=0.99)
    evidence = Threshold(top1_agreement=0.99, confident_margin=0.1, noise_flipped=(5, 22, 23))  # fp32 moved 3 images itself
    assert evidence.passes(undecided) and not bare.passes(undecided)  # within fp32's own noise: 2 flips <= 3
    assert not Threshold(top1_agreement=0.99, confident_margin=0.1).passes(undecided)  # no noise floor: 22/24 < [.., 0.977]
    assert not evidence.passes(confident) and not bare.passes(confident)  # a confident flip fp32 did not make itself
    assert Threshold(top1_agreement=0.99, confident_margin=0.1, noise_flipped=(0,)).passes(confident)  # ... unless it did
    assert "no confident flip" in evidence.describe() and evidence.describe() != bare.describe()


def test_the_fallback_and_eligibility_judge_top1_by_one_rule() -> None:
    """workers.stats.top1_rule is the one evidence rule: on every case the fallback's Threshold passes exactly the
    variants that eligibility (farm.results.evidence.judge) lets through, and the cases cover both answers."""
    from farm.results.evidence import Evidence, NoiseFloor, judge
    from workers.fidelity import Fidelity

    margins = tuple([0.9] * 22 + [0.01, 0.02])  # fp32 is sure of images 0-21 and torn on 22 and 23
    cases = [  # (agreed of 24, flipped, what fp32 itself flips under its shift)
        (24, (), ()), (22, (22, 23), ()), (22, (22, 23), (5, 22, 23)), (23, (0,), ()), (23, (0,), (0,)),
        (21, (0, 22, 23), (0, 1, 2)), (20, (0, 1, 22, 23), (0, 1, 2)), (23, (23,), ()), (22, (0, 1), (0, 1)),
    ]
    answers = set()
    for floor in (0.9, 0.99):
        for agreed, flipped, noise in cases:
            result = Fidelity(24, agreed / 24, 1.0, 0.999, 0.99, 0.1, agreed=agreed, flipped=flipped, reference_margins=margins)
            passes = Threshold(top1_agreement=floor, confident_margin=0.1, noise_flipped=noise).passes(result)
            shifted = NoiseFloor("2-pixel shift", 24, 24 - len(noise), noise) if noise else None
            eligible = judge(Evidence("top-1", 24, agreed, flipped, margins, noise=shifted), floor, "evidence", 0.1).eligible
            assert passes == eligible, (floor, agreed, flipped, noise)
            answers.add(passes)
    assert answers == {True, False}


def test_cached_digits_weights_are_keyed_by_code_and_cpu() -> None:
    # The weights shared through the temp folder are only reused by the same training code on the same kind of CPU.
    here = describe().cpu
    source = Path(digits_model.__file__).read_text()
    assert digits_model.weights_cache() == digits_model.weights_cache(source, here)
    assert digits_model.weights_cache(source + "\n# changed", here) != digits_model.weights_cache()
    other_isa = dataclasses.replace(here, isa=tuple(f for f in ("avx2", "avx512f", "amx_tile") if f not in here.isa))
    assert digits_model.weights_cache(source, other_isa) != digits_model.weights_cache()
    assert digits_model.weights_cache(source, dataclasses.replace(here, arch="aarch64")) != digits_model.weights_cache()
