"""The Python API: round trips, the N-D invariant, arrays in and out, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import nibble

FLOAT_DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


def gaussian_both_signs(rng, rows, k, group_size):
    """Normal values where every group holds a negative and a positive value."""
    w = rng.standard_normal((rows, k)).astype(np.float32)
    for begin in range(0, k, group_size):
        end = min(begin + group_size, k)
        if end - begin >= 2:
            w[:, begin] = -np.abs(w[:, begin]) - 0.1
            w[:, end - 1] = np.abs(w[:, end - 1]) + 0.1
    return w


# Relative RMS error of RTN on such data with G = 32 (the same model and measurements as the C++
# tests, tests/support/test_data.hpp): step s = range / maxq gives s / sqrt(12); the worst
# convention (2 * amax / maxq symmetric scales) measured 0.47 / 0.096 / 0.0056 at 2 / 4 / 8 bits.
RTN_RELATIVE_RMS_TOLERANCE = {2: 0.52, 4: 0.105, 8: 0.0062}


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("convention", nibble.CONVENTIONS)
def test_dequantize_quantize_is_within_one_step_and_the_named_tolerance(bits, symmetric, convention, rng):
    w = gaussian_both_signs(rng, 64, 256, 32)
    qt = nibble.quantize(w, bits, 32, symmetric, convention, scale_dtype=np.float32)
    w_hat = nibble.dequantize(qt)
    assert w_hat.dtype == np.float32 and w_hat.shape == w.shape
    step = np.repeat(np.abs(qt.scales), 32, axis=1)[:, :256]
    assert np.all(np.abs(w_hat - w) <= step * (1 + 1e-6))
    relative_rms = np.sqrt(np.sum((w_hat - w) ** 2.0) / np.sum(w.astype(np.float64) ** 2))
    assert relative_rms <= RTN_RELATIVE_RMS_TOLERANCE[bits]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (4, 17), (2, 3, 33), (2, 1, 2, 129)])
def test_unpack_pack_round_trips(bits, shape, rng):
    codes = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
    packed = nibble.pack(codes, bits)
    assert packed.shape == shape[:-1] + (-(-shape[-1] * bits // 8),)
    np.testing.assert_array_equal(nibble.unpack(packed, bits, shape[-1]), codes)


def test_pack_layout_is_low_bits_first():
    np.testing.assert_array_equal(nibble.pack(np.array([1, 2, 3, 4, 5], np.uint8), 4), [0x21, 0x43, 0x05])
    np.testing.assert_array_equal(nibble.pack(np.array([1, 2, 3, 0, 1], np.uint8), 2), [0x39, 0x01])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("convention", nibble.CONVENTIONS)
def test_rank3_experts_quantize_to_the_bytes_of_each_expert(dtype, convention, rng):
    w = rng.standard_normal((3, 5, 37)).astype(dtype)
    whole = nibble.quantize(w, 4, 16, False, convention)
    assert whole.qweight.shape == (3, 5, 24) and whole.scales.shape == (3, 5, 3) and whole.zeros.shape == (3, 5, 2)
    for e in range(3):
        alone = nibble.quantize(np.ascontiguousarray(w[e]), 4, 16, False, convention)
        assert whole[e].qweight.tobytes() == alone.qweight.tobytes()
        assert whole[e].scales.tobytes() == alone.scales.tobytes()
        assert whole[e].zeros.tobytes() == alone.zeros.tobytes()
        np.testing.assert_array_equal(whole[e].dequantize(), alone.dequantize())


@pytest.mark.parametrize("weight_dtype", FLOAT_DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("scale_dtype", [None, np.float32, "float16", ml_dtypes.bfloat16])
def test_scale_dtype_defaults_to_the_weights_and_can_be_chosen(weight_dtype, scale_dtype, rng):
    qt = nibble.quantize(rng.standard_normal((4, 64)).astype(weight_dtype), 4, 32, scale_dtype=scale_dtype)
    expected = np.dtype(weight_dtype if scale_dtype is None else scale_dtype)
    assert qt.scales.dtype == expected
    assert np.all(np.isfinite(nibble.dequantize(qt)))


def test_quant_tensor_wraps_existing_arrays_without_copying(rng):
    qt = nibble.quantize(rng.standard_normal((6, 100)).astype(np.float32), 4, 32, convention="ort")
    again = nibble.QuantTensor(qt.qweight, qt.scales, qt.zeros, qt.shape, qt.config)
    assert np.shares_memory(again.qweight, qt.qweight)
    np.testing.assert_array_equal(again.dequantize(), qt.dequantize())
    assert qt.n_groups == 4 and qt.group_size == 32 and qt.padded_k == 128
    # 100 weights a row: 64 code bytes + 4 scales * 4 bytes + 2 zero bytes.
    assert qt.nbytes == 6 * (64 + 16 + 2)
    assert qt.bits_per_weight == pytest.approx(8 * 6 * 82 / 600)
    mm = nibble.to_matmul_nbits(qt)
    assert np.shares_memory(mm.B, qt.qweight) and np.shares_memory(mm.scales, qt.scales)
    assert "bits=4" in repr(qt)


def test_quant_tensor_rejects_arrays_that_do_not_fit(rng):
    qt = nibble.quantize(rng.standard_normal((6, 100)).astype(np.float32), 4, 32)
    with pytest.raises(ValueError, match="qweight has 383 elements"):
        nibble.QuantTensor(qt.qweight.reshape(-1)[:-1].copy(), qt.scales, qt.zeros, qt.shape, qt.config)
    with pytest.raises(TypeError, match="qweight has dtype int8"):
        nibble.QuantTensor(qt.qweight.view(np.int8), qt.scales, qt.zeros, qt.shape, qt.config)
    symmetric = nibble.QuantConfig(4, 32, True, "olive")
    with pytest.raises(ValueError, match="symmetric tensors carry no zero points"):
        nibble.QuantTensor(qt.qweight, qt.scales, qt.zeros, qt.shape, symmetric)
    with pytest.raises(ValueError, match="zeros is null"):
        nibble.QuantTensor(qt.qweight, qt.scales, None, qt.shape, qt.config)
    with pytest.raises(ValueError, match="convention 'gptq'"):
        nibble.QuantTensor(qt.qweight, qt.scales, qt.zeros, qt.shape, nibble.QuantConfig(4, 32, False, "gptq"))
    with pytest.raises(IndexError):
        qt[6]


def test_bad_inputs_get_clear_errors(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="numpy.ndarray, got list"):
        nibble.quantize([[1.0, 2.0]])
    with pytest.raises(TypeError, match="dtype float64"):
        nibble.quantize(w.astype(np.float64))
    with pytest.raises(ValueError, match="not C-contiguous"):
        nibble.quantize(w.T)
    with pytest.raises(ValueError, match="rank 0"):
        nibble.quantize(np.array(1.0, dtype=np.float32))
    with pytest.raises(ValueError, match="bits = 3 is not supported"):
        nibble.quantize(w, bits=3)
    with pytest.raises(ValueError, match="group_size = 0 is invalid"):
        nibble.quantize(w, group_size=0)
    with pytest.raises(ValueError, match=r"weights has shape \(4, 0\): empty"):
        nibble.quantize(np.zeros((4, 0), np.float32))
    with pytest.raises(ValueError, match="convention 'awq'"):
        nibble.quantize(w, convention="awq")
    with pytest.raises(TypeError, match="scale_dtype"):
        nibble.quantize(w, scale_dtype=np.float64)
    with pytest.raises(ValueError, match="num_threads = -1"):
        nibble.quantize(w, num_threads=-1)
    with pytest.raises(ValueError, match="code 16 at row 0, column 1"):
        nibble.pack(np.array([[1, 16]], np.uint8), 4)
    with pytest.raises(ValueError, match="bits = 5"):
        nibble.pack(np.array([[1, 2]], np.uint8), 5)


def test_non_finite_weights_raise_or_quantize_as_zero(rng):
    w = rng.standard_normal((2, 3, 8)).astype(np.float32)
    w[1, 2, 5] = np.nan
    with pytest.raises(ValueError, match=r"weights\[1, 2, 5\] = nan"):
        nibble.quantize(w, 4, 8)
    cleaned = w.copy()
    cleaned[1, 2, 5] = 0
    replaced = nibble.quantize(w, 4, 8, non_finite="zero")
    assert replaced.qweight.tobytes() == nibble.quantize(cleaned, 4, 8).qweight.tobytes()
    half = rng.standard_normal(16).astype(np.float16)
    half[3] = -np.inf
    with pytest.raises(ValueError, match="= -inf"):
        nibble.quantize(half, 8, 16)


def test_gemm_and_moe_gemm_match_numpy_on_the_dequantized_weights(rng):
    w = rng.standard_normal((3, 12, 40)).astype(np.float32)
    qt = nibble.quantize(w, 8, 16, True, "ort")
    w_hat = nibble.dequantize(qt)
    x = rng.standard_normal((2, 5, 40)).astype(np.float32)
    bias = rng.standard_normal(36).astype(np.float32)
    y = nibble.gemm(x, qt, bias)
    assert y.shape == (2, 5, 36)
    np.testing.assert_allclose(y, x @ w_hat.reshape(36, 40).T + bias, rtol=1e-5, atol=1e-5)

    tokens = rng.standard_normal((4, 40)).astype(np.float32)
    ids = np.array([[0, 2], [1, 1], [2, 0], [0, 1]], np.int32)
    gates = rng.random((4, 2)).astype(np.float32)
    expected = np.stack([sum(g * tokens[t] @ w_hat[e].T for e, g in zip(ids[t], gates[t])) for t in range(4)])
    np.testing.assert_allclose(nibble.moe_gemm(tokens, qt, ids, gates), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected 0 <= id < E = 3"):
        nibble.moe_gemm(tokens, qt, np.array([[0], [3], [1], [1]], np.int32))
    with pytest.raises(ValueError, match="K = 39"):
        nibble.gemm(np.zeros((2, 39), np.float32), qt)
    with pytest.raises(TypeError, match="dtype float64"):
        nibble.gemm(x.astype(np.float64), qt)
    with pytest.raises(TypeError, match="int32"):
        nibble.moe_gemm(tokens, qt, ids.astype(np.int64))


def test_python_dash_m_nibble_prints_version_and_build_info():
    result = subprocess.run([sys.executable, "-m", "nibble", "--help"], capture_output=True, text=True, check=True)
    assert f"nibble {nibble.__version__}" in result.stdout
    for field in ("compiler", "threads", "CPU kernels", "CPU features", "conventions"):
        assert field in result.stdout
    info = nibble.build_info()
    assert info["version"] == nibble.__version__
    assert info["openmp_max_threads"] >= 1
