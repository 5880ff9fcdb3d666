"""AutoClip and AWQ from Python: the searched results lower the calibration output error, and the
Python wrappers return what the C++ tests (tests/test_autoclip.cpp, tests/test_awq.cpp) check in
depth: clipped weights that quantize to the searched result, AWQ's 1 / s pre-quant scale."""

from __future__ import annotations

import numpy as np
import pytest

import nibble


def data(rng, n=32, k=256, tokens=128):
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:, ::31] *= 8.0  # outlier weights on quiet input channels: clipping pays
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    x[:, ::31] *= 0.05
    x[:, 5::29] *= 20.0  # loud channels: scaling pays
    return w, x


def output_error(x, w, w_hat):
    return float(np.sum((x.astype(np.float64) @ (w - w_hat).T.astype(np.float64)) ** 2))


@pytest.mark.parametrize("solver", ["rtn", "k_quant"])
def test_autoclip_lowers_the_output_error(solver, rng):
    w, x = data(rng)

    def quantize(weights):
        if solver == "rtn":
            return nibble.quantize(weights, 4, 32, False, "olive").dequantize().reshape(w.shape)
        return nibble.kquant(weights, 4, 32, convention="olive").dequantize().reshape(w.shape)

    clipped, upper, lower = nibble.autoclip(w, x, 4, 32, solver=solver, return_ratios=True)
    assert clipped.shape == w.shape and upper.shape == (32, 8) and lower.shape == (32, 8)
    assert np.all((upper >= 0.5) & (upper <= 1.0))
    assert output_error(x, w, quantize(clipped)) < 0.8 * output_error(x, w, quantize(w))


def test_awq_scales_and_pre_quant_scale(rng):
    w, x = data(rng)
    scaled, scale, pre_quant_scale, alpha = nibble.awq(w, x, 4, 128)
    assert scale.shape == (1, 256) and alpha.shape == (1,)
    np.testing.assert_allclose(pre_quant_scale * scale, 1.0, rtol=1e-6)
    np.testing.assert_allclose(scaled, w * scale, rtol=1e-6)
    restored = nibble.quantize(scaled, 4, 128).dequantize().reshape(w.shape)
    # At run time: (x * pre_quant_scale) @ Q(W s)^T stands for x @ W^T.
    searched = float(np.sum((x @ w.T - (x * pre_quant_scale) @ restored.T) ** 2))
    plain = output_error(x, w, nibble.quantize(w, 4, 128).dequantize().reshape(w.shape))
    assert searched < plain


def test_bad_calibration_is_refused(rng):
    w, x = data(rng)
    with pytest.raises(ValueError, match="256"):
        nibble.autoclip(w, x[:, :100].copy(), 4, 32)
    with pytest.raises(ValueError, match="solver"):
        nibble.autoclip(w, x, 4, 32, solver="gptq")
    with pytest.raises(TypeError):
        nibble.awq(w, x.astype(np.float64), 4, 32)
