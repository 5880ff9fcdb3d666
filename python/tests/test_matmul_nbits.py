"""nibble against ONNX Runtime's MatMulNBits: its quantizer's bytes, and its kernel running ours.

1. With convention="ort", nibble's B, scales and zero_points equal, byte for byte, what
   onnxruntime's own MatMulNBitsQuantizer (default RTN config, MLAS) writes for the same weights
   (fp32, fp16 and bf16; 4 and 8 bits; symmetric and asymmetric; every block size it accepts);
   so do the node's attributes and input names.
   Excluded, by design: the pad codes of B (positions K .. K_pad of each row). onnxruntime leaves
   them as the zeros of the numpy buffer it allocates, and for odd K the high nibble of the last
   real byte keeps a stale code from the previous pair; nibble stores the zero point there so the
   pad dequantizes to exactly 0. No kernel reads them. Every real code is compared.
2. A one-node model built from nibble's initializers runs in onnxruntime and matches nibble's
   reference GEMM within the float32 dot-product bound, for M in {1, 3, 64}.
3. MoE: each expert of a rank-3 [E, N, K] tensor runs in MatMulNBits with the right result.
4. With convention="ort_weight_only", the bytes equal what MatMulNBitsQuantizer writes with
   RTNWeightOnlyQuantConfig (the ONNX Runtime GenAI builder's int4_algo_config=rtn), pads
   included (that tool zero-pads K before quantizing, so its pad codes are the zero point too).
   Its asymmetric path cannot write an odd number of blocks per row (it packs zero points flat
   over the whole tensor and then fails to reshape them per row), so those cases are not made.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, RTNWeightOnlyQuantConfig

import nibble
from conftest import fp32_dot_tolerance, initializers_of, make_model, run

BLOCK_SIZES = (16, 32, 64, 128, 256)


def shapes_for(block_size):
    """(N, K): K a multiple of the block, K not a multiple, K shorter than one block; N odd."""
    return [(7, 2 * block_size), (33, 3 * block_size + 5), (1, block_size // 2 + 1)]


def ort_quantized(weight_kn: np.ndarray, bits: int, block_size: int, symmetric: bool, rtn: bool = False):
    """(node, initializers) of onnxruntime quantizing MatMul(A, W) with W = weight_kn [K, N]:
    its default (MLAS) quantizer, or with rtn=True its weight_only RTN."""
    k, n = weight_kn.shape
    model = make_model(
        [onnx.helper.make_node("MatMul", ["A", "W"], ["Y"], name="matmul")],
        [numpy_helper.from_array(weight_kn, "W")],
        [("A", weight_kn.dtype, [1, k])],
        [("Y", weight_kn.dtype, [1, n])],
    )
    algo_config = RTNWeightOnlyQuantConfig(customized_weight_config={"matmul": {"bits": bits}}) if rtn else None
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, algo_config=algo_config
    )
    quantizer.process()
    quantized = quantizer.model.model
    (node,) = [node for node in quantized.graph.node if node.op_type == "MatMulNBits"]
    return node, initializers_of(quantized)


CASES = [
    pytest.param(bits, symmetric, block_size, n, k, dtype, id=f"b{bits}-{'sym' if symmetric else 'asym'}-g{block_size}-{n}x{k}-{np.dtype(dtype).name}")
    for bits in (4, 8)
    for symmetric in (False, True)
    for block_size in BLOCK_SIZES
    for n, k in shapes_for(block_size)
    for dtype in (np.float32, np.float16, ml_dtypes.bfloat16)
]


@pytest.mark.parametrize("bits, symmetric, block_size, n, k, dtype", CASES)
def test_ort_convention_matches_onnxruntime_quantizer_bytes(bits, symmetric, block_size, n, k, dtype, rng):
    weight = rng.standard_normal((k, n)).astype(dtype)  # MatMul's [K, N]
    weight[: min(k, block_size), 0] = 0  # an all-zero block (scale 0 / -0.0 paths)
    weight[:, -1] = np.round(weight[:, -1] * 4) / 4  # values on a coarse grid: rounding ties
    node, initializers = ort_quantized(weight, bits, block_size, symmetric)

    ours = nibble.to_matmul_nbits(
        nibble.quantize(np.ascontiguousarray(weight.T), bits, block_size, symmetric, convention="ort")
    )
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == ours.attributes
    our_node, our_initializers = ours.make_node("A", "Y", name="W")
    assert list(node.input) == list(our_node.input)

    their_b = numpy_helper.to_array(initializers[f"W_Q{bits}"])
    their_scales = numpy_helper.to_array(initializers["W_scales"])
    assert their_b.shape == ours.B.shape and their_b.dtype == np.uint8
    assert their_scales.dtype == ours.scales.dtype and their_scales.shape == ours.scales.shape
    assert their_scales.tobytes() == ours.scales.tobytes()  # bit for bit, -0.0 included
    padded_k = ours.B.shape[1] * block_size
    their_codes = nibble.unpack(np.ascontiguousarray(their_b.reshape(n, -1)), bits, padded_k)[:, :k]
    our_codes = nibble.unpack(np.ascontiguousarray(ours.B.reshape(n, -1)), bits, padded_k)[:, :k]
    np.testing.assert_array_equal(our_codes, their_codes)
    if symmetric:
        assert ours.zero_points is None and "W_zero_points" not in initializers
    else:
        their_zero_points = numpy_helper.to_array(initializers["W_zero_points"])
        assert their_zero_points.shape == ours.zero_points.shape
        assert their_zero_points.tobytes() == ours.zero_points.tobytes()  # pad nibbles included
    assert [t.name for t in our_initializers] == [name for name in node.input[1:]]


WEIGHT_ONLY_CASES = [
    pytest.param(bits, symmetric, block_size, n, k, id=f"b{bits}-{'sym' if symmetric else 'asym'}-g{block_size}-{n}x{k}")
    for bits in (4, 8)
    for symmetric in (False, True)
    for block_size, n, k in ((16, 3, 128), (32, 9, 256), (32, 7, 100), (128, 5, 200), (32, 5, 96))
    if symmetric or -(-k // block_size) % 2 == 0  # the tool fails on odd block counts (see top)
]


@pytest.mark.parametrize("bits, symmetric, block_size, n, k", WEIGHT_ONLY_CASES)
def test_ort_weight_only_convention_matches_onnxruntime_rtn_bytes(bits, symmetric, block_size, n, k, rng):
    weight = rng.standard_normal((k, n)).astype(np.float32)
    weight[:, 0] = np.abs(weight[:, 0]) + 0.5  # an all-positive column: the raw-range saturation
    node, initializers = ort_quantized(weight, bits, block_size, symmetric, rtn=True)
    ours = nibble.to_matmul_nbits(
        nibble.quantize(np.ascontiguousarray(weight.T), bits, block_size, symmetric, "ort_weight_only")
    )
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == ours.attributes
    their_b, their_scales = (numpy_helper.to_array(initializers[name]) for name in node.input[1:3])
    assert their_b.tobytes() == ours.B.tobytes() and their_b.shape == ours.B.shape
    assert their_scales.tobytes() == ours.scales.tobytes() and their_scales.shape == ours.scales.shape
    if symmetric:
        assert len(node.input) == 3 and ours.zero_points is None
    else:
        their_zero_points = numpy_helper.to_array(initializers[node.input[3]])
        assert their_zero_points.tobytes() == ours.zero_points.tobytes()
        assert their_zero_points.shape == ours.zero_points.shape


EXECUTION_CASES = [
    pytest.param(bits, symmetric, block_size, convention, id=f"b{bits}-{'sym' if symmetric else 'asym'}-g{block_size}-{convention}")
    for bits in (2, 4, 8)
    for symmetric in (False, True)
    for block_size in (16, 32, 128)
    for convention in nibble.CONVENTIONS
]


@pytest.mark.parametrize("bits, symmetric, block_size, convention", EXECUTION_CASES)
def test_onnxruntime_runs_our_tensors(bits, symmetric, block_size, convention, rng):
    n, k = 45, 3 * block_size + 7  # odd N, K not a multiple of the block
    qt = nibble.quantize(rng.standard_normal((n, k)).astype(np.float32), bits, block_size, symmetric, convention)
    node, initializers = nibble.to_matmul_nbits(qt).make_node("A", "Y", name="W")
    model = make_model([node], initializers, [("A", np.float32, ["M", k])], [("Y", np.float32, ["M", n])])
    w_hat = nibble.dequantize(qt)
    for m in (1, 3, 64):
        x = rng.standard_normal((m, k)).astype(np.float32)
        try:
            (y_ort,) = run(model, {"A": x})
        except onnxruntime.capi.onnxruntime_pybind11_state.Fail as error:  # pragma: no cover
            if bits == 2:
                pytest.skip(f"onnxruntime {onnxruntime.__version__} cannot run 2-bit MatMulNBits: {error}")
            raise
        y_ref = nibble.gemm(x, qt, reference=True)
        assert np.all(np.abs(y_ort - y_ref) <= fp32_dot_tolerance(x, w_hat)), f"M={m}"


def test_onnxruntime_runs_fp16_scales_with_fp16_activations(rng):
    # MatMulNBits takes A and scales of one type: fp16 weights quantize to fp16 scales.
    n, k = 40, 200
    qt = nibble.quantize(rng.standard_normal((n, k)).astype(np.float16), 4, 32, False, "ort")
    assert qt.scales.dtype == np.float16
    node, initializers = nibble.to_matmul_nbits(qt).make_node("A", "Y", name="W")
    model = make_model([node], initializers, [("A", np.float16, ["M", k])], [("Y", np.float16, ["M", n])])
    x = rng.standard_normal((3, k)).astype(np.float16)
    (y_ort,) = run(model, {"A": x})
    y_ref = nibble.gemm(x.astype(np.float32), qt, reference=True)
    # fp16 output: one fp16 rounding of the result (2^-11 relative) on top of an fp16-accuracy
    # accumulation, bounded by 2^-10 * sum |x||w| (K terms of fp16-rounded products).
    w_hat = nibble.dequantize(qt).astype(np.float64)
    bound = 2.0**-11 * np.abs(y_ref) + 2.0**-10 * (np.abs(x.astype(np.float64)) @ np.abs(w_hat).T)
    assert np.all(np.abs(y_ort.astype(np.float64) - y_ref) <= bound)


def test_moe_experts_are_their_own_tensors_and_run_in_matmul_nbits(rng):
    experts, n, k = 4, 24, 100
    weights = rng.standard_normal((experts, n, k)).astype(np.float32)
    whole = nibble.quantize(weights, 4, 32, False, "ort")
    x = rng.standard_normal((5, k)).astype(np.float32)
    for e in range(experts):
        alone = nibble.quantize(np.ascontiguousarray(weights[e]), 4, 32, False, "ort")
        expert = whole[e]
        assert np.shares_memory(expert.qweight, whole.qweight)  # a view, not a copy
        for ours, theirs in ((expert.qweight, alone.qweight), (expert.scales, alone.scales), (expert.zeros, alone.zeros)):
            assert ours.tobytes() == theirs.tobytes()
        node, initializers = nibble.to_matmul_nbits(expert).make_node("A", "Y", name=f"expert{e}")
        model = make_model([node], initializers, [("A", np.float32, [5, k])], [("Y", np.float32, [5, n])])
        (y_ort,) = run(model, {"A": x})
        assert np.all(np.abs(y_ort - nibble.gemm(x, expert, reference=True)) <= fp32_dot_tolerance(x, nibble.dequantize(expert)))
    with pytest.raises(ValueError, match="expected \\[N, K\\]"):
        nibble.to_matmul_nbits(whole)


def test_block_sizes_matmul_nbits_cannot_express_are_refused(rng):
    w = rng.standard_normal((4, 100)).astype(np.float32)
    with pytest.raises(ValueError, match="group_size = 128 instead"):
        nibble.to_matmul_nbits(nibble.quantize(w, 4, nibble.PER_CHANNEL))
    with pytest.raises(ValueError, match="power of two >= 16"):
        nibble.to_matmul_nbits(nibble.quantize(w, 4, 48))
