"""k-quant against the tools it transcribes.

1. variant "ort" equals onnxruntime's own k_quant, byte for byte: its per-block function
   (quant_tensor_k_quant_cpu: codes, scales, zero points) for 2, 4 and 8 bits, fp32 and fp16
   weights, odd shapes and K not a multiple of the group; and the whole MatMulNBitsQuantizer path
   with KQuantWeightOnlyQuantConfig (the ONNX Runtime GenAI builder's int4_algo_config=k_quant).
   Deterministic everywhere: numpy's float32 reductions are pairwise sums, which nibble
   reproduces in the same order.
2. variant "llama_cpp" equals a float32 numpy transcription of llama.cpp's make_qkx2_quants and
   make_qx_quants written for this test (scalar loops, left-to-right sums).
3. Importance: all ones is the plain search, bit for bit; a skewed importance lowers the
   importance-weighted error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import KQuantWeightOnlyQuantConfig, MatMulNBitsQuantizer
from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

import nibble
from conftest import initializers_of, make_model

F32 = np.float32

# onnxruntime's k_quant divides by a zero determinant on purpose (NaN never wins the search).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def awkward_weights(rng, n, k, dtype=np.float32):
    """[N, K] normal weights with the rows that exercise the search's corners."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    if n > 1:
        w[1] = np.abs(w[1]) + 0.5  # all positive: onnxruntime keeps a positive offset
    if n > 2:
        w[2] = 0.0  # all zero
    if n > 3:
        w[3] = 0.75  # all equal
    if n > 4:
        w[4] = np.round(w[4] * 4) / 4  # a coarse grid: rounding ties
    return w.astype(dtype)


def codes_of(tensor: nibble.QuantTensor) -> np.ndarray:
    """[rows, padded K] codes."""
    rows, k, group = int(np.prod(tensor.shape[:-1])), tensor.shape[-1], tensor.config.group_size
    padded_k = k if group == nibble.PER_CHANNEL else -(-k // group) * group
    return nibble.unpack(np.ascontiguousarray(tensor.qweight.reshape(rows, -1)), tensor.config.bits, padded_k)


def zero_codes_of(tensor: nibble.QuantTensor) -> np.ndarray:
    rows = int(np.prod(tensor.shape[:-1]))
    slots = tensor.zeros.shape[-1] * 8 // tensor.config.bits
    return nibble.unpack(np.ascontiguousarray(tensor.zeros.reshape(rows, -1)), tensor.config.bits, slots)


ORT_CASES = [
    pytest.param(bits, group, n, k, dtype, id=f"b{bits}-g{group}-{n}x{k}-{np.dtype(dtype).name}")
    for bits in (2, 4, 8)
    for group, n, k in ((16, 7, 64), (32, 9, 101), (32, 1, 17), (128, 5, 300), (64, 6, 64), (-1, 5, 77))
    for dtype in (np.float32, np.float16)
]


@pytest.mark.parametrize("bits, group, n, k, dtype", ORT_CASES)
def test_ort_variant_equals_onnxruntime_k_quant(bits, group, n, k, dtype, rng):
    weight = awkward_weights(rng, n, k, dtype)
    g = k if group == -1 else group
    blocks = -(-k // g)
    padded = np.pad(weight, ((0, 0), (0, blocks * g - k)))  # rtn_quantize pads K with zeros
    their_codes, their_scales, their_zeros = quant_tensor_k_quant_cpu(padded, bits, g)

    ours = nibble.kquant(weight, bits, group, symmetric=False, variant="ort")
    np.testing.assert_array_equal(codes_of(ours).reshape(-1, g), their_codes.astype(np.uint8))
    # onnxruntime stores scale.astype(weight dtype); nibble's scale dtype defaults to the same.
    assert ours.scales.dtype == np.dtype(dtype)
    assert ours.scales.reshape(-1).tobytes() == their_scales.astype(dtype).reshape(-1).tobytes()
    np.testing.assert_array_equal(zero_codes_of(ours)[:, :blocks].reshape(-1), their_zeros.reshape(-1))


def ort_k_quant_model(weight_kn: np.ndarray, bits: int, block_size: int):
    k, n = weight_kn.shape
    model = make_model(
        [onnx.helper.make_node("MatMul", ["A", "W"], ["Y"], name="matmul")],
        [numpy_helper.from_array(weight_kn, "W")],
        [("A", weight_kn.dtype, [1, k])],
        [("Y", weight_kn.dtype, [1, n])],
    )
    config = KQuantWeightOnlyQuantConfig(customized_weight_config={"matmul": {"bits": bits, "group_size": block_size, "scheme": "asym"}})
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    (node,) = [node for node in quantized.graph.node if node.op_type == "MatMulNBits"]
    return node, initializers_of(quantized)


MODEL_CASES = [
    pytest.param(bits, block, n, k, id=f"b{bits}-g{block}-{n}x{k}")
    for bits in (4, 8)
    for block, n, k in ((16, 3, 128), (32, 9, 256), (32, 7, 100), (128, 5, 256))
]


@pytest.mark.parametrize("bits, block, n, k", MODEL_CASES)
def test_ort_variant_equals_onnxruntime_k_quant_matmul_nbits_bytes(bits, block, n, k, rng):
    # Even block counts only: onnxruntime packs 4-bit zero points flat over N x blocks, which
    # straddles rows (and its reshape fails) for an odd count (test_matmul_nbits.py says more).
    weight_kn = awkward_weights(rng, n, k).T.copy()
    node, initializers = ort_k_quant_model(weight_kn, bits, block)
    ours = nibble.to_matmul_nbits(nibble.kquant(np.ascontiguousarray(weight_kn.T), bits, block, variant="ort"))
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == ours.attributes
    their_b, their_scales, their_zeros = (numpy_helper.to_array(initializers[name]) for name in node.input[1:4])
    assert their_b.tobytes() == ours.B.tobytes() and their_b.shape == ours.B.shape
    assert their_scales.tobytes() == ours.scales.tobytes()
    assert their_zeros.tobytes() == ours.zero_points.tobytes() and their_zeros.shape == ours.zero_points.shape


# ---- llama.cpp, transcribed in float32 numpy scalars --------------------------------------------


def nearest(value) -> F32:
    return F32(np.round(F32(value)))  # half to even, as nearest_int's magic-number add


def make_qkx2_quants(x, weights, nmax):
    """llama.cpp ggml-quants.c make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux,
    rmin=-1, rdelta=0.1, nstep=20, use_mad=false) -> (scale, min offset, codes)."""
    n = len(x)
    lo, hi = F32(x[0]), F32(x[0])
    sum_w = F32(weights[0])
    sum_x = F32(sum_w * x[0])
    for i in range(1, n):
        lo, hi = min(lo, x[i]), max(hi, x[i])
        sum_w = F32(sum_w + weights[i])
        sum_x = F32(sum_x + F32(weights[i] * x[i]))
    lo = min(lo, F32(0))
    if hi == lo:
        return F32(0), lo, np.zeros(n, np.uint8)

    def levels(inverse):
        return [F32(min(max(nearest(F32(inverse * F32(x[i] - lo))), 0), nmax)) for i in range(n)]

    def error(codes, scale, offset):
        total = F32(0)
        for i in range(n):
            diff = F32(F32(F32(scale * codes[i]) + offset) - x[i])
            total = F32(total + F32(weights[i] * F32(diff * diff)))
        return total

    inverse = F32(F32(nmax) / F32(hi - lo))
    scale = F32(F32(1) / inverse)
    best_codes = levels(inverse)
    best = error(best_codes, scale, lo)
    for step in range(21):
        inverse = F32(F32(F32(F32(-1) + F32(F32(0.1) * F32(step))) + F32(nmax)) / F32(hi - lo))
        codes = levels(inverse)
        sum_l = sum_l2 = sum_xl = F32(0)
        for i in range(n):
            wl = F32(weights[i] * codes[i])
            sum_l = F32(sum_l + wl)
            sum_l2 = F32(sum_l2 + F32(wl * codes[i]))
            sum_xl = F32(sum_xl + F32(wl * x[i]))
        det = F32(F32(sum_w * sum_l2) - F32(sum_l * sum_l))
        if not det > 0:
            continue
        this_scale = F32(F32(F32(sum_w * sum_xl) - F32(sum_x * sum_l)) / det)
        this_min = F32(F32(F32(sum_l2 * sum_x) - F32(sum_l * sum_xl)) / det)
        if this_min > 0:
            this_min, this_scale = F32(0), F32(sum_xl / sum_l2)
        err = error(codes, this_scale, this_min)
        if err < best:
            best, scale, lo, best_codes = err, this_scale, this_min, codes
    return scale, lo, np.array(best_codes, np.uint8)


def make_qx_quants(x, weights, nmax):
    """llama.cpp make_qx_quants(n, nmax, x, L, rmse_type=1, qw=weights) -> (scale, L + nmax)."""
    n = len(x)
    amax, extreme = F32(0), F32(0)
    for v in x:
        if abs(v) > amax:
            amax, extreme = F32(abs(v)), F32(v)
    if amax < F32(1e-15):
        return F32(0), np.full(n, nmax, np.uint8)

    def levels(inverse):
        return [F32(min(max(nearest(F32(inverse * x[i])), -nmax), nmax - 1)) for i in range(n)]

    def moments(codes):
        lx = l2 = F32(0)
        for i in range(n):
            lx = F32(lx + F32(F32(weights[i] * x[i]) * codes[i]))
            l2 = F32(l2 + F32(F32(weights[i] * codes[i]) * codes[i]))
        return lx, l2

    inverse = F32(F32(-nmax) / extreme)
    codes = levels(inverse)
    lx, l2 = moments(codes)
    scale = F32(lx / l2) if l2 != 0 else F32(0)
    best = F32(scale * lx)
    for step in range(-9, 10):
        if step == 0:
            continue
        inverse = F32(F32(-F32(F32(nmax) + F32(F32(0.1) * F32(step)))) / extreme)
        candidate = levels(inverse)
        lx, l2 = moments(candidate)
        if l2 > 0 and F32(lx * lx) > F32(best * l2):
            codes, scale, best = candidate, F32(lx / l2), F32(F32(lx / l2) * lx)
    return scale, (np.array(codes) + nmax).astype(np.uint8)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_llama_cpp_variant_equals_a_transcription_of_llama_cpp(bits, symmetric, rng):
    n, k, group = 6, 80, 32  # the last group holds 16 real elements
    weight = awkward_weights(rng, n, k)
    ours = nibble.kquant(weight, bits, group, symmetric=symmetric, variant="llama_cpp")
    codes = codes_of(ours)
    scales = ours.scales.reshape(n, -1)
    maxq, mid = (1 << bits) - 1, 1 << (bits - 1)
    for row in range(n):
        for g in range(-(-k // group)):
            x = weight[row, g * group : min((g + 1) * group, k)]
            if symmetric:
                scale, expected = make_qx_quants(x, [F32(v * v) for v in x], mid)
            else:
                rms = F32(np.sqrt(F32(sum_left_to_right([F32(v * v) for v in x]) / F32(len(x)))))
                scale, offset, _ = make_qkx2_quants(x, [F32(rms + abs(v)) for v in x], maxq)
                # nibble's integer form of the fit (kquant.hpp): zero point round(-offset / scale),
                # codes from (scale, zero point); a group of equal c < 0 gets scale c / -maxq.
                if scale == 0 and offset != 0:
                    scale = F32(offset / F32(-maxq))
                if scale == 0:
                    zero, expected = 0, np.zeros(len(x))
                else:
                    zero = int(min(max(np.round(F32(-offset / scale)), 0), maxq))
                    expected = np.clip(np.round(x.astype(np.float64) / np.float64(scale) + zero), 0, maxq)
                assert zero_codes_of(ours)[row, g] == zero
            assert scales[row, g].tobytes() == F32(scale).tobytes(), (row, g)
            np.testing.assert_array_equal(codes[row, g * group : g * group + len(x)], expected)


def sum_left_to_right(values):
    total = F32(0)
    for v in values:
        total = F32(total + v)
    return total


# ---- importance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, symmetric", [("ort", False), ("llama_cpp", False), ("llama_cpp", True)])
def test_importance_of_ones_is_the_plain_search(variant, symmetric, rng):
    weight = awkward_weights(rng, 9, 96)
    plain = nibble.kquant(weight, 4, 32, symmetric, variant)
    ones = nibble.kquant(weight, 4, 32, symmetric, variant, importance=np.ones(96, np.float32))
    assert plain.qweight.tobytes() == ones.qweight.tobytes()
    assert plain.scales.tobytes() == ones.scales.tobytes()
    if not symmetric:
        assert plain.zeros.tobytes() == ones.zeros.tobytes()


@pytest.mark.parametrize("variant, symmetric", [("ort", False), ("llama_cpp", False), ("llama_cpp", True)])
def test_importance_lowers_the_importance_weighted_error(variant, symmetric, rng):
    weight = rng.standard_normal((256, 256)).astype(np.float32)
    importance = np.where(rng.random(256) < 0.1, 100.0, 1.0).astype(np.float32)  # few hot inputs

    def weighted_error(tensor):
        return float(np.sum(importance * (weight - tensor.dequantize().reshape(weight.shape)) ** 2))

    plain = nibble.kquant(weight, 4, 32, symmetric, variant)
    informed = nibble.kquant(weight, 4, 32, symmetric, variant, importance=importance)
    # Symmetric groups keep the search's codes: ~10% lower. Asymmetric ones round the fitted
    # offset to an integer zero point and recompute the codes, which keeps ~2% of the gain.
    assert weighted_error(informed) < (0.95 if symmetric else 0.995) * weighted_error(plain)


def test_per_expert_importance_is_each_experts_own(rng):
    experts = rng.standard_normal((3, 5, 64)).astype(np.float32)
    importance = rng.random((3, 64)).astype(np.float32)
    together = nibble.kquant(experts, 4, 32, importance=importance)
    for e in range(3):
        alone = nibble.kquant(np.ascontiguousarray(experts[e]), 4, 32, importance=np.ascontiguousarray(importance[e]))
        assert together.qweight[e].tobytes() == alone.qweight.tobytes()
        assert together.scales[e].tobytes() == alone.scales.tobytes()


def test_k_quant_against_rtn_is_onnxruntimes_trade_off(rng):
    """On its objective (sum w (x - x^)^2, w = rms + |x|) onnxruntime's k_quant beats its RTN at 2
    bits and loses at 4 (the float offset is rounded to an integer zero point): both measured
    with onnxruntime's functions and with nibble, which agree."""
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor

    weight = rng.standard_normal((64, 256)).astype(np.float32)
    groups = weight.reshape(-1, 32).astype(np.float64)
    importance = np.sqrt(np.mean(groups**2, axis=1, keepdims=True)) + np.abs(groups)

    def objective(restored):
        return float(np.sum(importance * (groups - restored.reshape(groups.shape)) ** 2))

    for bits, k_quant_wins in ((2, True), (4, False)):
        q, s, z = quant_tensor(weight.copy(), bits, 32, "asym", "uint")
        their_rtn = objective((q - z) * s)
        ours_rtn = objective(nibble.quantize(weight, bits, 32, False, "ort_weight_only").dequantize())
        ours_k = objective(nibble.kquant(weight, bits, 32).dequantize())
        assert ours_rtn == pytest.approx(their_rtn, rel=1e-6)  # float32 vs float64 dequantization
        assert (ours_k < ours_rtn) == k_quant_wins, (bits, ours_k, ours_rtn)


def test_bad_input_is_refused(rng):
    weight = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="asymmetric only"):
        nibble.kquant(weight, 4, 32, symmetric=True, variant="ort")
    with pytest.raises(ValueError, match="importance has 63 values"):
        nibble.kquant(weight, 4, 32, importance=np.ones(63, np.float32))
    with pytest.raises(ValueError, match="expected a finite value >= 0"):
        nibble.kquant(weight, 4, 32, importance=-np.ones(64, np.float32))
    with pytest.raises(ValueError, match="variant 'gguf' is unknown"):
        nibble.kquant(weight, 4, 32, variant="gguf")
    with pytest.raises(ValueError, match="not supported"):
        nibble.kquant(weight, 3, 32)
    weight[2, 7] = np.nan
    with pytest.raises(ValueError, match=r"weights\[2, 7\] = nan"):
        nibble.kquant(weight, 4, 32)
