"""GPTQ against an independent numpy implementation of the published algorithm.

`reference_gptq` below is written from the paper's Algorithm 1 and the authors' code
(IST-DASLab/gptq gptq.py fasterquant, quant.py Quantizer), in float64 numpy, column-major as the
paper states it (W [N, K], columns quantized one at a time), with the three-step inverse
(Cholesky, inverse, Cholesky upper) that the published code uses. nibble runs with fp64=True;
codes, zero points and g_idx must be identical and scales equal after rounding to float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import nibble


def find_params(x: np.ndarray, bits: int, symmetric: bool):
    """quant.py Quantizer.find_params(x [N, columns], weight=True) -> (scale [N], zero [N])."""
    maxq = 2**bits - 1
    lo = np.minimum(x.min(axis=1), 0)
    hi = np.maximum(x.max(axis=1), 0)
    if symmetric:
        hi = np.maximum(np.abs(lo), hi)
        lo = np.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo, hi = np.where(empty, -1, lo), np.where(empty, 1, hi)
    scale = (hi - lo) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2) if symmetric else np.round(-lo / scale)
    return scale, zero


def reference_gptq(w, x, bits, group, symmetric, act_order, static_groups, damp=0.01, block=128):
    """-> (codes [N, K] in original column order, scales [N, groups], zeros [N, groups], g_idx)."""
    w = w.astype(np.float64).copy()
    n, k = w.shape
    group = k if group == -1 else group
    maxq = 2**bits - 1
    h = 2.0 / x.shape[0] * (x.astype(np.float64).T @ x.astype(np.float64))
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    groups = [find_params(w[:, i : i + group], bits, symmetric) for i in range(0, k, group)] if static_groups else None
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    lower = np.linalg.cholesky(h)
    h_inverse = np.linalg.inv(lower).T @ np.linalg.inv(lower)  # cholesky_inverse
    u = np.linalg.cholesky(h_inverse).T  # upper: h_inverse = u.T @ u

    n_groups = -(-k // group)
    codes = np.zeros((n, k), np.int64)
    scales, zeros = np.zeros((n, n_groups)), np.zeros((n, n_groups))
    g_idx = np.zeros(k, np.int64)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            position, column = i1 + i, perm[i1 + i]
            if static_groups:
                g = column // group
                scale, zero = groups[g]
                scales[:, g], zeros[:, g] = scale, zero
            else:
                g = position // group
                if position % group == 0:
                    scale, zero = find_params(w[:, position : position + group], bits, symmetric)
                    scales[:, g], zeros[:, g] = scale, zero
            g_idx[column] = g
            q = np.clip(np.round(w1[:, i] / scale) + zero, 0, maxq)
            codes[:, column] = q
            e = (w1[:, i] - scale * (q - zero)) / u[position, position]
            w1[:, i:] -= np.outer(e, u[position, i1 + i : i2])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes, scales, zeros, g_idx


def activations(rng, tokens, k):
    mixing = rng.standard_normal((max(4, k // 3), k))
    x = rng.standard_normal((tokens, mixing.shape[0])) @ mixing
    x[:, ::7] *= 8.0  # a few large channels
    return x.astype(np.float32)


CASES = [
    pytest.param(bits, symmetric, group, act_order, static, n, k, id=f"b{bits}-{'sym' if symmetric else 'asym'}-g{group}{'-act' if act_order else ''}{'-static' if static else ''}-{n}x{k}")
    for bits in (2, 4, 8)
    for symmetric in (False, True)
    for group, n, k in ((16, 6, 64), (32, 5, 100), (-1, 4, 40))
    for act_order in (False, True)
    for static in (False, True)
    if not (static and not act_order and bits != 4)
]


@pytest.mark.parametrize("bits, symmetric, group, act_order, static, n, k", CASES)
def test_gptq_equals_the_published_algorithm(bits, symmetric, group, act_order, static, n, k, rng):
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = activations(rng, 3 * k, k)
    x[:, 3] = 0  # a dead input column
    codes, scales, zeros, g_idx = reference_gptq(w, x, bits, group, symmetric, act_order, static, block=32)

    tensor, our_g_idx, _ = nibble.gptq(
        w, x, bits, group, symmetric, act_order=act_order, static_groups=static, block_size=32, fp64=True
    )
    padded_k = k if group == -1 else -(-k // group) * group
    our_codes = nibble.unpack(tensor.qweight, bits, padded_k)[:, :k]
    np.testing.assert_array_equal(our_codes, codes)
    np.testing.assert_array_equal(tensor.scales, scales.astype(np.float32))
    if symmetric:
        assert tensor.zeros is None
    else:
        slots = tensor.zeros.shape[-1] * 8 // bits
        np.testing.assert_array_equal(nibble.unpack(tensor.zeros, bits, slots)[:, : scales.shape[1]], zeros)
    membership_changes = act_order and not static and group != -1
    if membership_changes:
        np.testing.assert_array_equal(our_g_idx, g_idx)
    else:
        assert our_g_idx is None
        np.testing.assert_array_equal(g_idx, np.arange(k) // (k if group == -1 else group))


def test_float32_gptq_is_close_to_float64_and_beats_rtn(rng):
    n, k = 64, 256
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = activations(rng, 512, k)
    single, g_single, _ = nibble.gptq(w, x, 4, 32, act_order=True)
    double, g_double, _ = nibble.gptq(w, x, 4, 32, act_order=True, fp64=True)
    np.testing.assert_array_equal(g_single, g_double)
    same = np.mean(single.qweight == double.qweight)
    assert same > 0.95  # float32 rounding moves a few codes across a boundary

    def output_error(w_hat):
        return float(np.sum((x.astype(np.float64) @ (w - w_hat).T.astype(np.float64)) ** 2))

    rtn = nibble.quantize(w, 4, 32).dequantize().reshape(w.shape)
    assert output_error(nibble.dequantize_gptq(single, g_single)) < 0.8 * output_error(rtn)


def test_per_expert_calibration(rng):
    experts = rng.standard_normal((2, 4, 48)).astype(np.float32)
    batches = [activations(rng, 100, 48), activations(rng, 80, 48)]
    together, g_idx, _ = nibble.gptq(experts, batches, 4, 16, act_order=True)
    assert g_idx.shape == (2, 48)
    for e in range(2):
        alone, alone_g_idx, _ = nibble.gptq(np.ascontiguousarray(experts[e]), batches[e], 4, 16, act_order=True)
        assert together.qweight[e].tobytes() == alone.qweight.tobytes()
        np.testing.assert_array_equal(g_idx[e], alone_g_idx)
        np.testing.assert_array_equal(
            nibble.dequantize_gptq(together, g_idx)[e], nibble.dequantize_gptq(alone, alone_g_idx)
        )


def test_bad_input_is_refused(rng):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    x = activations(rng, 20, 32)
    with pytest.raises(ValueError, match="expected K = 32"):
        nibble.gptq(w, x[:, :31].copy(), 4, 16)
    with pytest.raises(ValueError, match="not positive definite"):
        nibble.gptq(w, x[:1].copy(), 4, 16, damp_percent=0.0)
    with pytest.raises(ValueError, match="expected 1, shared, or 1"):
        nibble.gptq(w, [x, x], 4, 16)
    with pytest.raises(TypeError, match="calibration"):
        nibble.gptq(w, x.astype(np.float64), 4, 16)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="must be finite"):
        nibble.gptq(w, bad, 4, 16)
