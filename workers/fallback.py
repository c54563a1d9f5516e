"""Automatic precision fallback: keep the fewest tensors in float that bring a quantized variant
back above a fidelity threshold, re-quantizing from stored ranges (never calibrating again).

1. Quantize with no exclusions and measure fidelity on the held-out inputs; done if it passes.
   Every measurement is fake-quant arithmetic (Q/DQ ops around float kernels), the same on every CPU
   and what TensorRT computes; one CPU's int8 kernels are judged later, by the fidelity of the
   builds on it.
2. Find the side at fault (`diagnose`): the same variant with only its weights quantized, and with
   only its activations quantized, each measured alone. The side whose mean cosine with fp32 falls
   further is the one fallen back: keeping activations in float cannot repair weights that lost
   their precision, nor the reverse. Weights are fallen back per layer, the layer's weight kept in
   float while its activations stay quantized, ranked by the noise of their own per-channel grid
   (`rank_weights`: each weight quantized alone); the steps below describe the activations side.
3. Rank every quantized activation by the noise its own Q/DQ adds: run the fp32 model once over
   the held-out inputs, put each activation through its Q/DQ grid (scale and zero point read from
   the quantized model) alone, and take the signal-to-quantization-noise ratio (SQNR, dB; lower is
   worse) per channel, averaged (`rank_tensors` and `qdq_sides.channel_sqnr_db` say why). One fp32 run ranks
   every tensor; re-quantizing without each candidate and measuring the outputs would cost one
   quantization and one evaluation per tensor. onnxruntime.quantization.qdq_loss_debug's `qdq_err`
   measures inside the Q/DQ model, which blames the wrong tensors, and keeps every activation of
   every batch in memory.
4. Keeping a tensor in float means excluding every node that would quantize it: its producer and
   its consumers (ORT puts Q/DQ on a node's inputs and outputs alike).
5. Exclude the k worst-ranked tensors for k = 1, 2, 4, 8, ... until the variant passes, then bisect
   between the last failing and the first passing k. Each try re-quantizes from the stored ranges and
   measures real fidelity, so the ranking only orders the search; the answer is always a variant
   that was measured to pass. `max_tries` bounds the re-quantizations after the plain one.
6. A variant that passes only with more than `max_float_fraction` of its quantized tensors (of the
   side fallen back) in float is refused, not rescued: it would be an fp32 engine sold as int8.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from workers import fidelity as fidelity_
from workers.stats import top1_rule
from workers import qdq_sides
from workers.qdq_sides import Side, channel_sqnr_db
from workers.cpu_sessions import cpu_session, fake_quant_session
from workers.precision import DEFAULT_LAYOUT, CalibrationRanges
from workers.precision_variants import apply_quantization


# Ranking weights costs one fake-quant run per weight (mobilenet_v3_small: 54); it only orders the
# search, whose every try is judged on all held-out rows, so it looks at the first few.
WEIGHT_RANKING_ROWS = 8


@dataclass(frozen=True)
class Threshold:
    """What a variant must reach against the fp32 reference; None skips a measure."""

    top1_agreement: float | None = 0.99
    cosine_mean: float | None = None
    # The evidence rule (docs/verdicts.md), as eligibility judges a build (farm.results.evidence): top-1 passes when
    # no flip is confident (fp32's softmax margin p1 - p2 at least this, on an image fp32's own shifted run
    # kept) and the Wilson upper bound on k/n reaches the floor, or the variant disagrees on no more images
    # than fp32 does with itself. None: the bare threshold. A flip fp32 cannot decide is no reason to fall back.
    confident_margin: float | None = None
    noise_flipped: tuple[int, ...] = ()  # the images fp32 changed its mind on under the noise floor's shift

    def passes(self, result: fidelity_.Fidelity) -> bool:
        return self._top1_passes(result) and (self.cosine_mean is None or result.cosine_mean >= self.cosine_mean)

    def _top1_passes(self, result: fidelity_.Fidelity) -> bool:
        if self.top1_agreement is None:
            return True
        if self.confident_margin is None or len(result.reference_margins) != result.samples:
            return result.top1_agreement >= self.top1_agreement
        if result.nonfinite:
            return False
        # fp32's flips under the shift are all this knows of the noise floor, measured on these images
        return top1_rule(result.agreed, result.samples, result.flipped, result.reference_margins, self.top1_agreement,
                         self.confident_margin, noise_flipped=self.noise_flipped, noise_disagreed=len(self.noise_flipped)).eligible

    def describe(self) -> str:
        top1 = (f"top-1 agreement >= {self.top1_agreement}" if self.confident_margin is None else
                f"no confident flip (fp32 margin >= {self.confident_margin}) and top-1 agreement's 95% upper bound >= {self.top1_agreement}")
        parts = [top1 if self.top1_agreement is not None else "",
                 f"mean cosine >= {self.cosine_mean}" if self.cosine_mean is not None else ""]
        return " and ".join(p for p in parts if p) or "no threshold"


@dataclass(frozen=True)
class TensorSensitivity:
    tensor: str  # the activation's name in the fp32 graph
    sqnr_db: float  # signal-to-quantization-noise ratio on the held-out inputs; lower is more sensitive
    nodes: tuple[str, ...]  # the nodes to exclude to keep it in float (producer and consumers)

    @property
    def score(self) -> float:
        """Noise-to-signal ratio ||x - qdq(x)|| / ||x||: higher is more sensitive."""
        return float(10 ** (-self.sqnr_db / 20))


@dataclass(frozen=True)
class ExcludedNode:
    node: str
    op_type: str
    score: float  # the sensitivity score of the tensor that brought it in
    reason: str


@dataclass(frozen=True)
class Step:
    kept_float: int  # how many of the worst-ranked tensors this try kept in float (0: the plain variant)
    excluded: tuple[str, ...]  # node names excluded in this try
    fidelity: fidelity_.Fidelity
    passed: bool
    seconds: float
    quantized: int = 0  # activations this try's variant still quantizes


@dataclass(frozen=True)
class Diagnosis:
    """Which side of a quantized variant loses the accuracy: each side quantized alone, measured."""

    weights_only: fidelity_.Fidelity
    activations_only: fidelity_.Fidelity
    side: Side
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"side": self.side, "reason": self.reason,
                "weights_only": {"top1_agreement": self.weights_only.top1_agreement, "cosine_mean": self.weights_only.cosine_mean},
                "activations_only": {"top1_agreement": self.activations_only.top1_agreement,
                                     "cosine_mean": self.activations_only.cosine_mean}}


@dataclass
class FallbackResult:
    onnx_bytes: bytes | None  # the passing variant; None when none passed, or only by keeping too much in float
    excluded: list[ExcludedNode]
    steps: list[Step]
    ranking: list[TensorSensitivity] = field(default_factory=list)  # most sensitive first; empty if the plain variant passed
    reason: str = ""
    refused: bool = False  # a try passed, but only with more than max_float_fraction kept in float: not a rescue
    quantizable: int = 0  # tensors of the side fallen back that the plain variant quantizes (activations when none was)
    diagnosis: Diagnosis | None = None  # None when the plain variant passed

    @property
    def side(self) -> Side:
        """The side kept in float where needed: activations unless the diagnosis blamed the weights."""
        return self.diagnosis.side if self.diagnosis is not None else "activations"

    @property
    def passed(self) -> bool:
        return self.onnx_bytes is not None

    @property
    def quantized_fraction(self) -> float:
        """Share of the side's quantizable tensors still quantized by the passing variant (refused ones
        included), else by the plain one."""
        passing = [s for s in self.steps if s.passed]
        chosen = min(passing, key=lambda s: s.kept_float) if passing else self.steps[0]
        return chosen.quantized / self.quantizable if self.quantizable else 1.0


def find_fallback(
    onnx_bytes: bytes,
    ranges: CalibrationRanges,
    inputs: np.ndarray,
    reference: np.ndarray,
    *,
    precision: str = "int8",
    layout: str = DEFAULT_LAYOUT,
    threshold: Threshold = Threshold(),
    max_tries: int = 10,
    max_float_fraction: float = 0.25,
    labels: np.ndarray | None = None,
    batch_size: int = 16,
) -> FallbackResult:
    """Find which nodes of the fp32 model `onnx_bytes` to keep in float so that the `precision`
    variant meets `threshold` on held-out `inputs` (never calibration samples), whose fp32 outputs
    are `reference`.

    Every try is judged by fake-quant arithmetic (`fake_quant_session`): what TensorRT computes, the
    same on every CPU. Judged by one CPU's int8 kernels instead, a kernel that saturates there (x86
    without VNNI) looks like sensitive ranges, and the search keeps nearly everything in float.
    A variant that passes only with more than `max_float_fraction` of the quantizable tensors of the
    side at fault in float is refused: it would be an fp32 engine under an int8 name.
    """
    model = onnx.load_from_string(onnx_bytes)
    input_name = _input_name(model)
    op_types = {n.name: n.op_type for n in model.graph.node}

    def judge(variant: bytes, rows: int | None = None) -> fidelity_.Fidelity:
        session = fake_quant_session(variant)
        outputs = fidelity_.run_batched(lambda x: session.run(None, {input_name: x})[0], inputs[:rows], batch_size)
        return fidelity_.compare(reference[:rows], outputs, None if labels is None else labels[:rows])

    started = time.perf_counter()
    plain_variant = apply_quantization(onnx_bytes, ranges, precision, (), layout)
    plain_fidelity = judge(plain_variant)
    if threshold.passes(plain_fidelity):
        total = _quantized(plain_variant, "activations")
        plain = Step(0, (), plain_fidelity, True, time.perf_counter() - started, total)
        return FallbackResult(plain_variant, [], [plain], reason=f"the plain {precision} variant meets {threshold.describe()}",
                              quantizable=total)
    diagnosis = diagnose(plain_variant, judge)
    side = diagnosis.side
    total = _quantized(plain_variant, side)
    plain = Step(0, (), plain_fidelity, False, time.perf_counter() - started, total)
    if side == "weights":
        ranking = rank_weights(plain_variant, lambda variant: judge(variant, WEIGHT_RANKING_ROWS))

        def make(nodes: Sequence[str]) -> bytes:
            return qdq_sides.keep_weights_float(plain_variant, nodes)
    else:
        ranking = rank_tensors(model, plain_variant, inputs, input_name, batch_size=min(batch_size, 8))

        def make(nodes: Sequence[str]) -> bytes:
            return apply_quantization(onnx_bytes, ranges, precision, nodes, layout)

    def attempt(kept: int, nodes: Sequence[str]) -> tuple[Step, bytes]:
        begun = time.perf_counter()
        variant = make(nodes)
        result = judge(variant)
        quantized = _quantized(variant, side)
        return Step(kept, tuple(sorted(nodes)), result, threshold.passes(result), time.perf_counter() - begun, quantized), variant

    def float_fraction(step: Step) -> float:
        return 1 - step.quantized / total if total else 0.0

    found: dict[str, Any] = {"quantizable": total, "diagnosis": diagnosis}
    if not ranking:
        return FallbackResult(None, [], [plain], reason=f"no quantized {side} to keep in float in the {precision} variant", **found)
    steps = [plain]
    low, high, best = 0, 0, b""  # largest failing and smallest passing prefix length (0: none yet)
    for _ in range(max_tries):
        if high:
            if high - low <= 1:
                break
            kept = (low + high) // 2
        elif low >= len(ranking) or (low and float_fraction(steps[-1]) > max_float_fraction):
            break  # doubling further only keeps more in float than a rescue may
        else:
            kept = min(len(ranking), max(1, 2 * low))
        step, candidate = attempt(kept, _nodes(ranking[:kept]))
        steps.append(step)
        if step.passed:
            high, best = kept, candidate
        else:
            low = kept
    noun = "weights" if side == "weights" else "tensors"
    if not high:
        return FallbackResult(None, [], steps, ranking, **found,
                              reason=f"{diagnosis.reason}; no variant met {threshold.describe()} within {max_tries} tries "
                                     f"(up to {low} of {len(ranking)} ranked {noun} kept in float)")
    passing = next(s for s in reversed(steps) if s.passed and s.kept_float == high)
    excluded = _explain(ranking[:high], op_types, ranges, precision, side)
    if float_fraction(passing) > max_float_fraction:
        return FallbackResult(None, excluded, steps, ranking, refused=True, **found, reason=(
            f"{precision} is not viable for this model with {ranges.method} ranges: meeting {threshold.describe()} needs "
            f"{total - passing.quantized} of {total} quantized {side} ({float_fraction(passing):.0%}) kept in float, "
            f"above max_float_fraction {max_float_fraction:g}; the plain variant's fake-quant top-1 agreement is "
            f"{plain.fidelity.top1_agreement:.3f} (cosine {plain.fidelity.cosine_mean:.4f}), so its ranges, not a kernel, fall short "
            f"({diagnosis.reason})"))
    return FallbackResult(best, excluded, steps, ranking, **found,
                          reason=f"{diagnosis.reason}; keeping the {high} most sensitive of {len(ranking)} quantized {noun} "
                                 f"in float meets {threshold.describe()}")


def diagnose(variant: bytes, judge: Callable[[bytes], fidelity_.Fidelity]) -> Diagnosis:
    """Measure the Q/DQ `variant` with only its weights quantized, then only its activations, and
    blame the side whose mean cosine with fp32 falls further (ties: activations, the usual culprit)."""
    weights_only = judge(qdq_sides.without(variant, "activations"))
    activations_only = judge(qdq_sides.without(variant, "weights"))
    side: Side = "weights" if weights_only.cosine_mean < activations_only.cosine_mean else "activations"
    reason = (f"{side} cause the loss: weights alone quantized give mean cosine {weights_only.cosine_mean:.4f} "
              f"(top-1 agreement {weights_only.top1_agreement:.3f}), activations alone {activations_only.cosine_mean:.4f} "
              f"({activations_only.top1_agreement:.3f}), so {side} are kept in float where needed")
    return Diagnosis(weights_only, activations_only, side, reason)


def rank_weights(variant: bytes, judge: Callable[[bytes], fidelity_.Fidelity]) -> list[TensorSensitivity]:
    """Every weight `variant` quantizes, most damaging first: the outputs' SQNR with that weight alone quantized.

    Measured through the network, not read off the weight: one huge weight in a channel (reading an
    input that is always zero, say) stretches the channel's scale until its other weights round to
    zero, yet holds most of the channel's energy, so the weight's own SQNR looks excellent (67 dB in
    the test built for it) while the layer's outputs are gone. One fake-quant run per weight (on
    WEIGHT_RANKING_ROWS held-out rows in `find_fallback`); the
    output SQNR is the one the mean cosine implies (||a - b||^2 = 2 (1 - cos) for unit vectors).
    """
    ranked = []
    for weight, nodes in qdq_sides.weights(variant).items():
        if not nodes:
            continue
        loss = max(0.0, 1.0 - judge(qdq_sides.only_weight(variant, weight)).cosine_mean)
        sqnr = math.inf if loss == 0 else -10 * math.log10(2 * loss)
        ranked.append(TensorSensitivity(weight, sqnr, nodes))
    return sorted(ranked, key=lambda s: (s.sqnr_db, s.tensor))


def rank_tensors(
    model: onnx.ModelProto, quantized: bytes, inputs: np.ndarray, input_name: str, *, batch_size: int = 8
) -> list[TensorSensitivity]:
    """Every activation `quantized` quantizes, with its SQNR on `inputs`, most sensitive first.

    Each tensor is taken from the fp32 model and put through its own Quantize/DequantizeLinear
    (scale and zero point read from `quantized`) alone. Measuring inside the Q/DQ model instead
    blames the wrong tensors: after one lossy Q/DQ, the next one on the same grid (behind a Relu,
    say) re-quantizes losslessly and looks perfect although it alone would do the same damage, and
    tensors downstream of the damage look bad only because their inputs already are.
    """
    grids = _activation_grids(onnx.load_from_string(quantized))
    if not grids:
        return []
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in sorted(set(grids) - present):
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = cpu_session(augmented.SerializeToString(), "fp32")
    names = [o.name for o in session.get_outputs()]
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    for start in range(0, len(inputs), batch_size):
        values = dict(zip(names, session.run(None, {input_name: inputs[start : start + batch_size]}), strict=True))
        for tensor, grid in grids.items():
            x = values[tensor].astype(np.float64)
            signal[tensor] = signal.get(tensor, 0.0) + _per_channel(x * x)
            noise[tensor] = noise.get(tensor, 0.0) + _per_channel((x - grid.apply(values[tensor])) ** 2)
    owners = _owners(model, set(grids))
    ranked = [TensorSensitivity(t, channel_sqnr_db(signal[t], noise[t]), owners[t]) for t in grids if owners.get(t)]
    return sorted(ranked, key=lambda s: (s.sqnr_db, s.tensor))


@dataclass(frozen=True)
class _Grid:
    """One activation's quantization grid, as its QuantizeLinear in the Q/DQ model defines it."""

    scale: float
    zero_point: float
    elem_type: int  # the zero point's onnx.TensorProto type: INT8, UINT8 or FLOAT8E4M3FN

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x -> DequantizeLinear(QuantizeLinear(x)) as ONNX defines them (round half to even, saturate)."""
        scaled = x.astype(np.float32) / np.float32(self.scale)
        if self.elem_type == onnx.TensorProto.FLOAT8E4M3FN:
            import ml_dtypes

            q = np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
            fp8: np.ndarray = (q - np.float32(self.zero_point)) * np.float32(self.scale)
            return fp8
        low, high = (-128, 127) if self.elem_type == onnx.TensorProto.INT8 else (0, 255)
        q = np.clip(np.rint(scaled) + self.zero_point, low, high)
        integer: np.ndarray = ((q - self.zero_point) * self.scale).astype(np.float32)
        return integer


def _activation_grids(qmodel: onnx.ModelProto) -> dict[str, _Grid]:
    """fp32 tensor name -> its grid, for every QuantizeLinear of an activation (weights are skipped)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in qmodel.graph.initializer}
    outputs = {o.name for o in qmodel.graph.output}
    dequantized = {n.input[0]: n.output[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear"}
    grids: dict[str, _Grid] = {}
    for node in qmodel.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers or len(node.input) < 3:
            continue
        scale, zero = initializers.get(node.input[1]), initializers.get(node.input[2])
        if scale is None or zero is None or numpy_helper.to_array(scale).size != 1:
            continue  # per-tensor grids with constant parameters are the only ones ORT writes for activations
        post = dequantized.get(node.output[0], "")
        # A quantized graph output is renamed on its way in; the DequantizeLinear keeps the fp32 name.
        tensor = post if post in outputs else node.input[0]
        zero_value = float(np.asarray(numpy_helper.to_array(zero), dtype=np.float32).reshape(-1)[0])
        grids[tensor] = _Grid(float(numpy_helper.to_array(scale).reshape(-1)[0]), zero_value, zero.data_type)
    return grids


# Activations ONNX Runtime folds into the node before them when activations are asymmetric (u8): the
# Relu's input gets no Q/DQ of its own and shares the Relu output's grid.
FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _owners(model: onnx.ModelProto, quantized: set[str]) -> dict[str, tuple[str, ...]]:
    """fp32 tensor name -> the named nodes to exclude so that it stays in float: its producer and
    consumers, and, where the producer is an activation ORT folded (its input not among the
    `quantized` tensors), the node before it, which would otherwise quantize that input instead."""
    owners: dict[str, set[str]] = {}
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if not node.name:
            continue  # ORT excludes by node name; an unnamed node cannot be kept in float
        for name in [*node.input, *node.output]:
            owners.setdefault(name, set()).add(node.name)
    for name, nodes in owners.items():
        made_by = producer.get(name)
        if made_by is not None and made_by.op_type in FOLDED_ACTIVATIONS and made_by.input[0] not in quantized:
            before = producer.get(made_by.input[0])
            if before is not None and before.name:
                nodes.add(before.name)
    return {name: tuple(sorted(nodes)) for name, nodes in owners.items()}


def _quantized(variant: bytes, side: Side) -> int:
    """Tensors of `side` the variant quantizes; activations counted as the ranking sees them (one grid each)."""
    return len(_activation_grids(onnx.load_from_string(variant))) if side == "activations" else qdq_sides.count(variant, side)


def _nodes(ranking: Sequence[TensorSensitivity]) -> list[str]:
    return sorted({node for s in ranking for node in s.nodes})


def _explain(ranking: Sequence[TensorSensitivity], op_types: dict[str, str], ranges: CalibrationRanges, precision: str,
             side: Side = "activations") -> list[ExcludedNode]:
    excluded: dict[str, ExcludedNode] = {}
    for rank, s in enumerate(ranking, start=1):
        if side == "weights":
            why = (f"keeps its weight {s.tensor} in float: with that weight alone in per-channel {precision}, "
                   f"the outputs' SQNR is {s.sqnr_db:.1f} dB on held-out inputs (rank {rank})")
        else:
            r = ranges.tensors.get(s.tensor)
            span = f", calibrated range [{r.lowest:.4g}, {r.highest:.4g}]" if r else ""
            why = f"keeps {s.tensor} in float: {precision} SQNR {s.sqnr_db:.1f} dB on held-out inputs (rank {rank}){span}"
        for node in s.nodes:
            if node not in excluded:
                excluded[node] = ExcludedNode(node, op_types.get(node, "?"), s.score, why)
    return list(excluded.values())


def _per_channel(squares: np.ndarray) -> np.ndarray:
    """Sum over every axis but the channel axis (1); one value for tensors without one."""
    if squares.ndim < 2:
        return np.atleast_1d(squares.sum())
    summed: np.ndarray = squares.sum(axis=tuple(a for a in range(squares.ndim) if a != 1))
    return summed


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise ValueError(f"the fallback handles single-input models; this one has {len(names)} inputs ({', '.join(names)})")
    return names[0]
