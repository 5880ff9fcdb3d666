"""TensorRT-LLM pieces against independent truths.

1. FP8 e4m3fn encoding equals ml_dtypes.float8_e4m3fn casts bit for bit (overflow -> NaN), and
   the saturating mode equals ml_dtypes after np.clip(x, -448, 448) (what TensorRT-LLM's
   __NV_SATFINITE conversion does), over every fp8 value, every midpoint and its float32
   neighbours, and a million random float32 bit patterns; decoding equals ml_dtypes for all 256.
2. nibble.to_modelopt equals a numpy transcription of NVIDIA ModelOpt's export of an INT4 weight
   (modelopt/torch/export/quant_utils.py: q = round(w / s) as int8, pack_int4_in_uint8 packs
   rows 2i and 2i+1 of q into the low and high nibbles); the C++ side was also checked once
   against ModelOpt 0.47.0's own functions (docs/formats.md).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import nibble

FP8 = ml_dtypes.float8_e4m3fn


def fp8_probe_inputs(rng) -> np.ndarray:
    values = np.arange(256, dtype=np.uint8).view(FP8).astype(np.float32)
    finite = np.unique(values[np.isfinite(values)])
    midpoints = (finite[:-1].astype(np.float64) + finite[1:]) / 2
    mid32 = midpoints.astype(np.float32)
    around = np.concatenate([mid32, np.nextafter(mid32, np.float32(np.inf)), np.nextafter(mid32, np.float32(-np.inf))])
    random_bits = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, 448.0, -448.0, 464.0, 464.00003, 480.0, 1e30, np.inf, -np.inf, np.nan, 2.0**-10, 2.0**-9, 2.0**-6], np.float32)
    return np.ascontiguousarray(np.concatenate([finite, around, random_bits, special]).astype(np.float32))


def test_fp8_encode_matches_ml_dtypes(rng):
    x = fp8_probe_inputs(rng)
    ours = nibble.fp8_e4m3_encode(x, saturate=False)
    theirs = x.astype(FP8).view(np.uint8)
    nan = np.isnan(theirs.view(FP8).astype(np.float32))
    # NaN has two encodings (0x7F, 0xFF): compare NaN-ness there, bits elsewhere.
    assert np.array_equal(np.isnan(ours.view(FP8).astype(np.float32)), nan)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])


def test_fp8_saturating_encode_is_clip_then_round(rng):
    x = fp8_probe_inputs(rng)
    finite = ~np.isnan(x)
    ours = nibble.fp8_e4m3_encode(x[finite], saturate=True)
    theirs = np.clip(x[finite], -448, 448).astype(FP8).view(np.uint8)
    np.testing.assert_array_equal(ours, theirs)


def test_fp8_decode_matches_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    ours = nibble.fp8_e4m3_decode(codes)
    theirs = codes.view(FP8).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)])


def modelopt_export(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy transcription of ModelOpt's INT4 weight export for one [N, K] weight given per-group
    scales s = amax / 7 (get_weight_scaling_factor) and pack_int4_in_uint8."""
    n, k = w.shape
    amax = np.abs(w.reshape(n, k // group, group)).max(axis=-1)
    scales = (amax / 7).astype(np.float32)
    q = np.clip(np.round(w / np.repeat(scales, group, axis=1)), -8, 7).astype(np.int8)
    packed = ((q[1::2].astype(np.uint8) & 0xF) << 4) | (q[0::2].astype(np.uint8) & 0xF)
    return packed.astype(np.uint8), scales


@pytest.mark.parametrize("n, k, group", [(8, 64, 32), (6, 40, 8), (64, 256, 128)])
def test_to_modelopt_equals_modelopts_packing(n, k, group, rng):
    w = rng.standard_normal((n, k)).astype(np.float32)
    weight, scales = modelopt_export(w, group)
    # The same codes and scales as a canonical tensor: code = q + 8, scale = s.
    q = (weight[:, None, :] >> np.array([0, 4], np.uint8)[None, :, None]) & 0xF  # [N/2, 2, K]
    codes = ((q.reshape(n, k).astype(np.int16) ^ 8)).astype(np.uint8)  # two's complement -> code
    qweight = nibble.pack(np.ascontiguousarray(codes), 4)
    tensor = nibble.QuantTensor(
        qweight=qweight, scales=np.ascontiguousarray(scales), zeros=None, shape=(n, k),
        config=nibble.QuantConfig(4, group, True, "olive"),
    )
    ours_weight, ours_scales = nibble.to_modelopt(tensor)
    np.testing.assert_array_equal(ours_weight, weight)
    np.testing.assert_array_equal(ours_scales, scales)
    # And the dequantized weights are ModelOpt's q * s.
    expected = (np.repeat(scales, group, axis=1) * (codes.astype(np.float32) - 8)).astype(np.float32)
    np.testing.assert_array_equal(nibble.dequantize(tensor), expected)


def test_to_modelopt_refuses_asymmetric(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="symmetric"):
        nibble.to_modelopt(nibble.quantize(w, 4, 32, symmetric=False))
