"""Helpers shared by the Python tests: ONNX model building and running through onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest


def fp32_dot_tolerance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bound on |fp32 x @ w.T - exact| per output: (K + 2) * 2^-23 * (|x| @ |w|.T), the standard
    gamma_K bound on a K-term float32 dot product with headroom for any summation order."""
    k = x.shape[-1]
    return (k + 2) * 2.0**-23 * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T)


def make_model(nodes, initializers, inputs, outputs):
    """A model from nodes; inputs/outputs are (name, numpy dtype, shape) triples."""
    import onnx
    from onnx import helper

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

    graph = helper.make_graph(
        nodes, "nibble_test", [info(*i) for i in inputs], [info(*o) for o in outputs], initializer=initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10  # what onnxruntime 1.2x-1.3x accept
    return model


def run(model, feeds: dict):
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def initializers_of(model) -> dict:
    """name -> TensorProto of every initializer in the main graph."""
    return {tensor.name: tensor for tensor in model.graph.initializer}


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)
