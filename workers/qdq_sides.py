"""The two sides of a Q/DQ model, weights and activations, taken apart.

ORT writes every quantized weight as a float initializer with its own QuantizeLinear ->
DequantizeLinear pair (AddQDQPairToWeight), and every quantized activation with a pair on a
computed tensor. Removing one side's pairs gives a model that quantizes only the other side: what
the precision fallback measures to find which side loses the accuracy (`without`), and how it keeps
one layer's weights in float while its activations stay quantized (`keep_weights_float`).
`only_weight` isolates one weight, so the fallback can measure what its own grid costs the outputs.
int32 biases (a DequantizeLinear without a QuantizeLinear, ORT's layouts) stay as they are: their
grid is the input's scale times the weight's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

Side = Literal["weights", "activations"]


@dataclass(frozen=True)
class _Pair:
    quantize: onnx.NodeProto
    dequantize: onnx.NodeProto
    consumers: tuple[str, ...]  # names of the nodes that read the dequantized tensor

    @property
    def source(self) -> str:
        return str(self.quantize.input[0])


def _side(pair: _Pair, initializers: set[str]) -> Side:
    return "weights" if pair.source in initializers else "activations"


def _pairs(model: onnx.ModelProto) -> list[_Pair]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        readers = consumers.get(node.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            continue  # a QuantizeLinear read by an integer op is not a fake-quant pair
        for dq in readers:
            found.append(_Pair(node, dq, tuple(n.name for n in consumers.get(dq.output[0], []))))
    return found


def count(model_bytes: bytes, side: Side) -> int:
    """How many tensors of `side` the Q/DQ model quantizes (weights: initializers; activations: computed tensors)."""
    model = onnx.load_from_string(model_bytes)
    initializers = {i.name for i in model.graph.initializer}
    return len({p.source for p in _pairs(model) if _side(p, initializers) == side})


def without(model_bytes: bytes, side: Side) -> bytes:
    """The Q/DQ model with every pair of `side` removed: only the other side stays quantized."""
    return _drop(model_bytes, lambda pair, initializers: _side(pair, initializers) == side)


def keep_weights_float(model_bytes: bytes, nodes: Iterable[str]) -> bytes:
    """The Q/DQ model with the weights read by `nodes` in float (their pairs removed); activations stay quantized.

    The model must then be opened with ORT's WeightBiasQuantization off (cpu_sessions.DISABLED_OPTIMIZERS),
    which would otherwise quantize those float weights again, per tensor."""
    chosen = set(nodes)
    return _drop(model_bytes, lambda pair, initializers: _side(pair, initializers) == "weights" and set(pair.consumers) <= chosen)


def _drop(model_bytes: bytes, drop: Callable[[_Pair, set[str]], bool]) -> bytes:
    """Remove the pairs `drop` picks: readers of a dequantized tensor read the pair's float input instead."""
    model = onnx.load_from_string(model_bytes)
    initializers = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    dropped = [p for p in _pairs(model) if drop(p, initializers)]
    if not dropped:
        return model_bytes
    values = {i.name: i for i in model.graph.initializer}
    # A pair whose grid starts at 0 may stand for a Relu that ORT folded into it (u8 layouts): a Relu keeps that meaning.
    relus = [p for p in dropped if p.source not in initializers and _starts_at_zero(p, values)]
    renamed = {p.dequantize.output[0]: p.source for p in dropped if p not in relus}
    removed = {id(p.dequantize) for p in dropped}
    still_read = {name for n in model.graph.node if id(n) not in removed for name in n.input}
    quantizers = {p.quantize.output[0] for p in dropped}
    relu_for = {id(p.dequantize): p for p in relus}
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in relu_for:  # in the DequantizeLinear's place, so the graph stays in topological order
            pair = relu_for[id(node)]
            kept.append(onnx.helper.make_node("Relu", [pair.source], [node.output[0]], name=f"{node.output[0]}_relu"))
            continue
        if id(node) in removed or (node.op_type == "QuantizeLinear" and node.output[0] in quantizers and node.output[0] not in still_read):
            continue
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        kept.append(node)
    # A graph output keeps its name: an Identity carries the float tensor to it.
    kept += [onnx.helper.make_node("Identity", [source], [out], name=f"{out}_float") for out, source in renamed.items() if out in outputs]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {name for n in model.graph.node for name in n.input} | outputs
    unused = [i for i in model.graph.initializer if i.name not in read]
    for init in unused:
        model.graph.initializer.remove(init)
    return model.SerializeToString()


def _starts_at_zero(pair: _Pair, values: dict[str, onnx.TensorProto]) -> bool:
    """Whether the pair's grid has 0 as its lowest value: an unsigned zero point of 0 (or a signed one of -128)."""
    zero = values.get(pair.quantize.input[2]) if len(pair.quantize.input) > 2 else None
    if zero is None:
        return False
    lowest = {int(onnx.TensorProto.UINT8): 0, int(onnx.TensorProto.INT8): -128}.get(int(zero.data_type))
    return lowest is not None and bool((numpy_helper.to_array(zero) == lowest).all())


def weights(model_bytes: bytes) -> dict[str, tuple[str, ...]]:
    """Every weight the Q/DQ model quantizes -> the named nodes that read it (where keeping it in float takes effect)."""
    model = onnx.load_from_string(model_bytes)
    initializers = {i.name for i in model.graph.initializer}
    found: dict[str, set[str]] = {}
    for pair in _pairs(model):
        if _side(pair, initializers) == "weights":
            found.setdefault(pair.source, set()).update(n for n in pair.consumers if n)
    return {name: tuple(sorted(nodes)) for name, nodes in found.items()}


def only_weight(model_bytes: bytes, weight: str) -> bytes:
    """The Q/DQ model with one weight quantized and everything else in float: that weight's own damage."""
    return _drop(model_bytes, lambda pair, initializers: _side(pair, initializers) == "activations" or pair.source != weight)


def channel_sqnr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """SQNR of the mean per-channel noise-to-signal ratio.

    Per channel, not per tensor: one large channel (an outlier feature) stretches a per-tensor scale
    until the other channels are a few quantization levels, yet holds most of the tensor's energy,
    so the whole-tensor SQNR looks fine (48 dB in the test built for it) while the channels the next
    layer reads are destroyed. Silent channels (no signal) are left out.
    """
    live = signal > 0
    if not live.any():
        return math.inf
    ratio = float(np.sqrt(noise[live] / signal[live]).mean())
    return math.inf if ratio <= 0 else -20 * math.log10(ratio)
