"""Real ONNX models small enough to build in a test: classifiers ONNX Runtime loads and runs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def classifier_onnx(input_shape: tuple[int, int, int], classes: int, seed: int = 0) -> bytes:
    """A real, tiny ONNX classifier over [batch, *input_shape]: global average pool, then a Gemm to `classes`."""
    rng = np.random.default_rng(seed)
    channels = input_shape[0]
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [channels, classes], rng.standard_normal((channels, classes)).astype(np.float32).ravel())
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [classes], rng.standard_normal(classes).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["output"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime the farm supports
    onnx.checker.check_model(model)
    return model.SerializeToString()
