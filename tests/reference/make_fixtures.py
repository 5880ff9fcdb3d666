#!/usr/bin/env python3
"""Expected outputs of nibble's four RTN conventions, from independent numpy transcriptions.

Each convention is transcribed here from its TOOL's own published code, not from nibble's C++,
so that tests/test_conventions.cpp compares nibble against an independent truth. Every
transcription works on rows [rows, K] (a rank-3 [E, N, K] tensor flattens its leading dims: each
row is quantized on its own in every tool), in groups of G consecutive elements along K
(per-channel: G = K). maxq = 2^bits - 1, mid = 2^(bits-1).

olive -- Microsoft Olive, olive/common/quant/utils.py: WeightQuantizer.find_qparams + quantize,
    pack_to_uint8. torch on CPU, every op in the tensor's own dtype (fp16/bf16 results are rounded
    after each op; numpy float16 and ml_dtypes bfloat16 arithmetic rounds the same way).
    lo = min(min x, 0), hi = max(max x, 0); symmetric: hi = max(|lo|, hi), lo = -hi only where
    lo < 0; lo = hi = 0 -> (-1, 1); scale = (hi - lo) / maxq; zero = mid (symmetric) or
    clamp(round(0 - lo / scale), 0, maxq); q = clamp(round(x / scale + zero), 0, maxq), torch.round
    = half to even. Olive asserts K % G == 0, so only such cases are made.

ort -- ONNX Runtime MatMulNBits quantizer: MLAS BlockwiseQuantizer::quantizeAndTranspose with
    range2scalezp / range2scale (onnxruntime/core/mlas/lib/q4_dq.cpp). float32 arithmetic, block
    statistics over the block's REAL elements only. Asymmetric: lo = min(lo, 0), hi = max(hi, 0),
    scale_f = (hi - lo) / maxq, zero_fp = scale_f != 0 ? 0 - lo / scale_f : lo, zero = 0 / maxq when
    below / above the range, else roundf(zero_fp). Symmetric: m = |hi| > |lo| ? hi : lo (a tie
    picks lo), scale_f = -m / mid, zero = mid. The scale is stored as the weight type; codes use
    MLAS's element-type scale s (fp16 weights: the fp16-rounded scale; fp32 weights, and bf16
    weights, which MatMulNBitsQuantizer converts to fp32 and whose scales it casts to bf16 after
    quantizing: scale_f): r = s != 0 ? 1/s : 0; q = clamp(roundf(float(x * r) + zero), 0, maxq) (roundf
    = half away from zero; the product and the sum are each rounded to float32, no FMA, as the
    onnxruntime 1.32 wheel computes). MLAS takes only block sizes 16, 32, 64, 128, 256 (other
    sizes throw in onnxruntime 1.32); other group sizes here are our generalization. Weights
    float32, float16 and bfloat16 as MatMulNBitsQuantizer takes them.

ort_gather -- ONNX Runtime GatherBlockQuantized quantizer: DefaultWeightOnlyQuantizer
    quant_slice_symmetric / quant_slice_asymmetric in
    onnxruntime/python/tools/quantization/matmul_nbits_quantizer.py. numpy in the data's dtype,
    a partial last block holds only its real elements. Symmetric: m as for ort, scale = m / -mid,
    q = clip(round(scale == 0 ? 0 : x / scale), -mid, mid - 1), stored + mid. Asymmetric: lo, hi
    include 0, scale = (hi - lo) / maxq, zero = clip(round(scale == 0 ? mid : -lo / scale), 0,
    maxq), q = clip(round(scale == 0 ? mid : x / scale + zero), 0, maxq) (np.round: half to
    even). The tool is 4-bit only (8 / 15 in its code); 2- and 8-bit cases are our generalization,
    and so are bfloat16 cases (numpy would promote bf16 / 15.0 to float32; we stay in bf16).

ort_weight_only -- ONNX Runtime neural_compressor weight_only.py: quant_tensor(data, bits, G,
    scheme, dtype="uint") as called by rtn_quantize, which first zero-pads K to whole groups
    (pad_tensor): the pads take part in min / max. rmin, rmax raw (ratio 1). Symmetric:
    amax = max(|rmin|, |rmax|) (weight dtype), scale = amax == 0 ? 1 : float64(amax * 2) / maxq,
    zero = mid. Asymmetric: scale = rmin == rmax ? 1 : float64(rmax - rmin) / maxq (the difference
    in the weight dtype), zero = clip(round((0 - rmin) / scale), 0, maxq). Codes in float64:
    clip(round(x / scale + zero), 0, maxq). The stored scale is the float64 scale rounded once to
    the weight dtype. The tool sends only 4 and 8 bits to MatMulNBits; 2-bit uses the same formula.

Usage: python3 make_fixtures.py --out DIR [--verify-with-onnxruntime]

Writes DIR/cases.txt, one line per case:
    case_name convention bits symmetric(0|1) group_size(-1 = per-channel) dtype d0,d1[,d2]
and DIR/<case_name>/:
    weights.npy  the input [..., K], float32 or float16; bfloat16 is saved as its uint16 bit patterns
    codes.npy    uint8 [rows, K]: the unsigned stored codes of the real elements (a tool's signed
                 symmetric codes q are stored as q + mid, nibble's canonical storage)
    scales.npy   [rows, n_groups] in the weights' dtype (bfloat16 as uint16 bit patterns)
    zeros.npy    uint8 [rows, n_groups], asymmetric cases only
    qweight.npy  olive only: uint8 [rows, ceil(K * bits / 8)], Olive's pack_to_uint8 of the codes
    qzeros.npy   olive asymmetric only: uint8 [rows, ceil(n_groups * bits / 8)], likewise

--verify-with-onnxruntime additionally runs the installed onnxruntime's own quantizers (MLAS via
its pybind functions, quantize_ndarray, quant_tensor) on the cases they accept and checks these
transcriptions against them; it needs onnxruntime, onnx and onnx_ir and is not used by the tests.
Olive needs torch and is not checked this way.
"""

import argparse
import math
import pathlib
import shutil
import sys
import zlib

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16}
CONVENTIONS = ("olive", "ort", "ort_gather", "ort_weight_only")


def limits(bits):
    """(maxq, mid) of unsigned `bits`-bit codes."""
    return (1 << bits) - 1, 1 << (bits - 1)


def group_bounds(k, group_size):
    """(G, [(begin, end), ...]) of the groups of a row of k elements; the last may be partial."""
    group = k if group_size == -1 else group_size
    return group, [(begin, min(begin + group, k)) for begin in range(0, k, group)]


def round_half_away(values):
    """C roundf on float32 values. Done in float64, where |v| + 0.5 is exact for any float32 v
    (float32 floor(v + 0.5) would round 0.49999997 + 0.5 up to 1)."""
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    return np.where(v < 0, -np.floor(-v + 0.5), np.floor(v + 0.5))


def float64_to(values, dtype):
    """float64 -> dtype with ONE rounding to nearest even (numpy's astype does this for float32 and
    float16; ml_dtypes' bfloat16 astype goes through float32 and can round twice)."""
    values = np.asarray(values, dtype=np.float64)
    if dtype is not BF16:
        return values.astype(dtype)
    mantissa, exponent = np.frexp(values)  # values = mantissa * 2^exponent, |mantissa| in [0.5, 1)
    normal = (values == 0) | (np.abs(values) >= 2.0**-126)
    assert np.all(normal), "bfloat16 subnormal scales are not expected in these fixtures"
    rounded = np.ldexp(np.round(np.ldexp(mantissa, 8)), exponent - 8)  # 8 significant bits
    return rounded.astype(np.float32).astype(BF16)  # exact: already a bfloat16 value


# ---- olive ---------------------------------------------------------------------------------------
def olive_quantize(w, bits, symmetric, group_size):
    dt = w.dtype.type
    rows, k = w.shape
    group, _ = group_bounds(k, group_size)
    assert k % group == 0, "Olive asserts in_features % group_size == 0"
    maxq, mid = limits(bits)  # minq = 0 (signed=False), midq = (maxq + minq + 1) // 2 = mid
    x = w.reshape(rows, k // group, group)
    lo = np.minimum(x.min(-1), dt(0))
    hi = np.maximum(x.max(-1), dt(0))
    if symmetric:
        hi = np.maximum(np.abs(lo), hi)
        lo = np.where(lo < 0, -hi, lo)  # GPTQ's rule: a group with no negative keeps lo = 0
    empty = (lo == 0) & (hi == 0)
    lo = np.where(empty, dt(-1), lo)
    hi = np.where(empty, dt(1), hi)
    scale = (hi - lo) / dt(maxq)
    if symmetric:
        zero = np.full(scale.shape, mid, dtype=np.int64)
    else:
        zero = np.clip(np.round(dt(0) - lo / scale).astype(np.float32), 0, maxq).astype(np.int64)
    # int32 zero points promote to the tensor dtype before the add (exact: they are <= 255).
    q = np.round(x / scale[..., None] + zero[..., None].astype(dt))
    assert q.dtype == w.dtype and scale.dtype == w.dtype
    codes = np.clip(q.astype(np.float32), 0, maxq).astype(np.uint8).reshape(rows, k)
    return codes, scale, None if symmetric else zero.astype(np.uint8)


def olive_pack(codes, bits):
    """Olive's pack_to_uint8: pad the last dim with 0 to a multiple of 8/bits; element i of each
    pack goes to bits [bits*i, bits*i + bits)."""
    per_byte = 8 // bits
    padded = np.pad(codes, ((0, 0), (0, -codes.shape[1] % per_byte)))
    packed = np.zeros((codes.shape[0], padded.shape[1] // per_byte), dtype=np.uint8)
    for i in range(per_byte):
        packed |= (padded[:, i::per_byte] << (bits * i)).astype(np.uint8)
    return packed


# ---- ort (MLAS) ----------------------------------------------------------------------------------
def ort_quantize(w, bits, symmetric, group_size):
    f32 = np.float32
    rows, k = w.shape
    maxq, mid = limits(bits)
    _, groups = group_bounds(k, group_size)
    codes = np.zeros((rows, k), dtype=np.uint8)
    scales = np.zeros((rows, len(groups)), dtype=w.dtype)
    zeros = np.zeros((rows, len(groups)), dtype=np.uint8)
    for index, (begin, end) in enumerate(groups):
        x = w[:, begin:end].astype(f32)  # the block's real elements only
        lo, hi = x.min(1), x.max(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if symmetric:
                signed_extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
                scale_f = -signed_extreme / f32(mid)
                zero = np.full(rows, mid, dtype=np.int64)
            else:
                lo, hi = np.minimum(lo, f32(0)), np.maximum(hi, f32(0))
                scale_f = (hi - lo) / f32(maxq)
                zero_fp = np.where(scale_f != 0, f32(0) - lo / scale_f, lo)
                zero = np.where(
                    zero_fp < 0, 0, np.where(zero_fp > maxq, maxq, round_half_away(zero_fp))
                )
                zero = zero.astype(np.int64)
            stored = scale_f.astype(w.dtype)  # ScaleT(scale_f): float32 -> fp16/bf16, nearest even
            # MLAS codes with the scale of its element type: fp16 for fp16 weights; ORT's
            # quantizer runs bf16 weights through fp32 (and casts the scales afterwards).
            s = stored.astype(f32) if w.dtype == np.float16 else scale_f
            reciprocal = np.where(s != 0, f32(1) / s, f32(0))
        product = x * reciprocal[:, None]  # rounded to float32 on its own (no FMA)
        total = product + zero[:, None].astype(f32)  # the float32 add, rounded again
        assert total.dtype == f32
        codes[:, begin:end] = np.clip(round_half_away(total), 0, maxq).astype(np.uint8)
        scales[:, index] = stored
        zeros[:, index] = zero
    return codes, scales, None if symmetric else zeros


# ---- ort_gather ----------------------------------------------------------------------------------
def ort_gather_quantize(w, bits, symmetric, group_size):
    dt = w.dtype.type
    rows, k = w.shape
    maxq, mid = limits(bits)
    _, groups = group_bounds(k, group_size)
    codes = np.zeros((rows, k), dtype=np.uint8)
    scales = np.zeros((rows, len(groups)), dtype=w.dtype)
    zeros = np.zeros((rows, len(groups)), dtype=np.uint8)
    for index, (begin, end) in enumerate(groups):
        x = w[:, begin:end]  # real elements only, in the data's dtype
        with np.errstate(divide="ignore", invalid="ignore"):
            if symmetric:
                hi, lo = x.max(1, keepdims=True), x.min(1, keepdims=True)
                signed_extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
                scale = signed_extreme / dt(-mid)
                q = np.round(np.where(scale == 0, dt(0), x / scale)).astype(np.float32)
                q = np.clip(q, -mid, mid - 1) + mid  # signed code -> unsigned storage
                zero = np.full((rows, 1), mid)
            else:
                lo = np.minimum(x.min(1, keepdims=True), dt(0))
                hi = np.maximum(x.max(1, keepdims=True), dt(0))
                scale = (hi - lo) / dt(maxq)
                zero = np.round(np.where(scale == 0, dt(mid), -lo / scale)).astype(np.float32)
                zero = np.clip(zero, 0, maxq).astype(np.uint8)
                # data / scale + uint8 zero point: numpy adds in the float dtype (exact cast)
                q = np.round(np.where(scale == 0, dt(mid), x / scale + zero.astype(dt)))
                q = np.clip(q.astype(np.float32), 0, maxq)
        assert scale.dtype == w.dtype
        codes[:, begin:end] = q.astype(np.uint8)
        scales[:, index] = scale[:, 0]
        zeros[:, index] = zero[:, 0]
    return codes, scales, None if symmetric else zeros


# ---- ort_weight_only -----------------------------------------------------------------------------
def ort_weight_only_quantize(w, bits, symmetric, group_size):
    dt = w.dtype.type
    rows, k = w.shape
    maxq, mid = limits(bits)
    group, groups = group_bounds(k, group_size)
    padded = np.zeros((rows, len(groups) * group), dtype=w.dtype)  # pad_tensor: zeros
    padded[:, :k] = w
    x = padded.reshape(-1, group)  # one group per row, row-major: [rows * n_groups, G]
    rmin, rmax = x.min(1, keepdims=True), x.max(1, keepdims=True)
    scale = np.ones(rmax.shape, dtype=np.float64)
    if symmetric:
        max_range = np.maximum(np.abs(rmin), np.abs(rmax))
        nonzero = max_range > 0
        scale[nonzero] = (max_range[nonzero] * dt(2)).astype(np.float64) / maxq
        zero = np.full(scale.shape, float(mid))
    else:
        differ = rmin != rmax
        scale[differ] = (rmax - rmin)[differ].astype(np.float64) / maxq  # difference in dtype
        zero = np.clip(np.round((0.0 - rmin.astype(np.float64)) / scale), 0, maxq)
    q = np.clip(np.round(x.astype(np.float64) / scale + zero), 0, maxq)
    codes = q.reshape(rows, -1)[:, :k].astype(np.uint8)
    scales = float64_to(scale.reshape(rows, -1), w.dtype.type)
    return codes, scales, None if symmetric else zero.reshape(rows, -1).astype(np.uint8)


QUANTIZERS = {
    "olive": olive_quantize,
    "ort": ort_quantize,
    "ort_gather": ort_gather_quantize,
    "ort_weight_only": ort_weight_only_quantize,
}

# ---- test data -----------------------------------------------------------------------------------
# (shape, group_size). rows <= 64, K <= 300. MLAS and GatherBlockQuantized take only powers of two
# >= 16 as block sizes: G = 5, G = 48 and per-channel G = K are our generalization there.
SHAPES = [
    ((7, 96), 32),  # whole groups
    ((5, 100), 32),  # K % G != 0: a partial last group
    ((3, 20), 32),  # K < G: one partial group
    ((4, 1), 16),  # K = 1
    ((1, 77), 16),  # one row, partial last group
    ((6, 50), -1),  # per-channel
    ((8, 300), 128),  # G = 128, partial last group
    ((64, 128), 32),  # many rows
    ((5, 23), 5),  # odd G
    ((4, 100), 48),  # G = 48, partial last group
    ((2, 3, 40), 32),  # rank 3 [E, N, K], partial
    ((3, 2, 33), 16),  # rank 3, partial
    ((9, 64), 16),
]
# Olive accepts only K % G == 0.
OLIVE_SHAPES = [
    ((7, 96), 32),
    ((1, 64), 16),  # one row
    ((6, 50), -1),  # per-channel
    ((4, 1), -1),  # K = 1
    ((8, 256), 128),
    ((64, 128), 32),  # many rows
    ((5, 25), 5),  # odd G
    ((3, 96), 48),
    ((2, 3, 64), 32),  # rank 3
    ((4, 7), -1),  # odd K: the packed row ends in a pad slot
    ((3, 15), 5),  # odd K with groups
    ((9, 48), 16),
    ((2, 2, 30), -1),  # rank 3, per-channel
]
SHAPES_PER_COMBINATION = 3

# What each group holds; cycled over the groups of a case so that every kind meets every
# convention, bit width and dtype. "normal" is listed several times to stay the majority.
KINDS = (
    "normal tie positive normal negative zero near_tie constant outlier normal extreme_tie small "
    "large tie"
).split()


def tie_values(rng, n, convention, bits, symmetric):
    """n values on the grid (j + 0.5) * p, p a power of two, with the group's extremes chosen so
    that the convention's scale is exactly +-p: every value is an exact rounding tie."""
    maxq, mid = limits(bits)
    p = 2.0 ** int(rng.integers(-6, 3))
    if symmetric:
        # ort / ort_gather: scale = m / -mid; olive / ort_weight_only: scale = 2 * amax / maxq.
        extreme = mid * p if convention in ("ort", "ort_gather") else maxq * p / 2
        values = (rng.integers(-mid, mid, size=n) + 0.5) * p
        values[rng.integers(n)] = extreme * rng.choice([-1.0, 1.0])
        extremes = [float(extreme)]
    else:
        zero_point = int(rng.integers(1, maxq))  # lo < 0 < hi: every convention's range is [lo, hi]
        lo, hi = -zero_point * p, (maxq - zero_point) * p
        values = (rng.integers(-zero_point, maxq - zero_point, size=n) + 0.5) * p
        positions = rng.permutation(n)[:2]
        values[positions] = [lo, hi][: len(positions)]
        extremes = [lo, hi]
    return values, extremes


def nudge_one_ulp(values, dtype, rng, keep):
    """Each value not in `keep` moves one unit in the last place of `dtype` (up or down in
    magnitude): ties become near-ties that a sloppy rounding gets wrong."""
    cast = np.asarray(values).astype(dtype)
    uint = np.uint32 if dtype is np.float32 else np.uint16
    bits = cast.view(uint).copy()
    movable = (cast.astype(np.float64) != 0) & ~np.isin(values, keep)
    step = rng.choice([-1, 1], size=bits.shape).astype(np.int64)
    bits[movable] = (bits[movable].astype(np.int64) + step[movable]).astype(uint)
    return bits.view(dtype).astype(np.float64)


def group_values(rng, kind, n, dtype, convention, bits, symmetric):
    """float64 values for one group of n elements (exactly representable where it matters)."""
    half = dtype is np.float16  # fp16: keep ranges far from 65504 (hi - lo and 2 * amax)
    sigma = float(rng.choice([0.02, 0.1, 1.0, 3.0]))
    normal = rng.standard_normal(n) * sigma
    if kind == "normal":
        return normal
    if kind == "positive":
        return np.abs(normal) + 0.01 * sigma
    if kind == "negative":
        return -np.abs(normal) - 0.01 * sigma
    if kind == "zero":
        return np.zeros(n)
    if kind == "constant":
        return np.full(n, float(np.round(normal[0], 3)) or 0.25)
    if kind == "outlier":
        normal[rng.integers(n)] *= 40.0
        return normal
    if kind == "small":
        return normal * (1e-3 if half else 10.0 ** -int(rng.integers(3, 20)))
    if kind == "large":
        if half:
            return np.clip(normal / sigma * 3000.0, -15000.0, 15000.0)
        return normal / sigma * 1e6 * 10.0 ** int(rng.integers(0, 25))
    if kind == "extreme_tie":  # +A and -A both present: the signed-extreme rule picks -A
        amax = float(np.max(np.abs(normal))) * 1.25 + 0.5
        values = np.clip(normal, -amax, amax)
        values[: min(n, 2)] = [-amax, amax][: min(n, 2)]
        return rng.permutation(values)
    if kind in ("tie", "near_tie"):
        values, extremes = tie_values(rng, n, convention, bits, symmetric)
        if kind == "near_tie":
            values = nudge_one_ulp(values, dtype, rng, keep=extremes)
        return values
    raise ValueError(kind)


def make_weights(seed, case_index, shape, group_size, dtype, convention, bits, symmetric):
    rng = np.random.default_rng(seed)
    rows, k = math.prod(shape[:-1]), shape[-1]
    _, groups = group_bounds(k, group_size)
    values = np.empty((rows, k))
    for row in range(rows):
        for index, (begin, end) in enumerate(groups):
            kind = KINDS[(case_index + row * len(groups) + index) % len(KINDS)]
            values[row, begin:end] = group_values(
                rng, kind, end - begin, dtype, convention, bits, symmetric
            )
    weights = values.astype(np.float32).astype(dtype)  # exact for the engineered values
    weights[weights == 0] = 0  # no -0.0: tools disagree on which zero a min/max returns
    assert np.all(np.isfinite(weights.astype(np.float32)))
    return weights


def case_list():
    """[(name, convention, bits, symmetric, group_size, dtype_name, shape)] in a fixed order."""
    cases, names = [], set()
    combination = 0
    for convention in CONVENTIONS:
        shapes = OLIVE_SHAPES if convention == "olive" else SHAPES
        for bits in (2, 4, 8):
            for symmetric in (False, True):
                for dtype_name in DTYPES:
                    for pick in range(SHAPES_PER_COMBINATION):
                        shape, group_size = shapes[
                            (combination * SHAPES_PER_COMBINATION + pick) % len(shapes)
                        ]
                        sym = "sym" if symmetric else "asym"
                        group = "ch" if group_size == -1 else group_size
                        dims = "x".join(map(str, shape))
                        name = f"{convention}_b{bits}_{sym}_g{group}_{dtype_name}_{dims}"
                        assert name not in names, name
                        names.add(name)
                        cases.append(
                            (name, convention, bits, symmetric, group_size, dtype_name, shape)
                        )
                    combination += 1
    return cases


def as_saved(array):
    """bfloat16 is saved as its uint16 bit patterns (numpy has no bfloat16)."""
    return array.view(np.uint16) if array.dtype == BF16 else array


def write_fixtures(out):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    lines, results = [], []
    for case_index, (name, convention, bits, symmetric, group_size, dtype_name, shape) in enumerate(
        case_list()
    ):
        dtype = DTYPES[dtype_name]
        weights = make_weights(
            zlib.crc32(name.encode()),
            case_index,
            shape,
            group_size,
            dtype,
            convention,
            bits,
            symmetric,
        )
        codes, scales, zeros = QUANTIZERS[convention](weights, bits, symmetric, group_size)
        directory = out / name
        directory.mkdir()
        np.save(directory / "weights.npy", as_saved(weights.reshape(shape)))
        np.save(directory / "codes.npy", codes)
        np.save(directory / "scales.npy", as_saved(scales))
        if not symmetric:
            np.save(directory / "zeros.npy", zeros)
        if convention == "olive":
            np.save(directory / "qweight.npy", olive_pack(codes, bits))
            if not symmetric:
                np.save(directory / "qzeros.npy", olive_pack(zeros, bits))
        lines.append(
            "{} {} {} {} {} {} {}\n".format(
                name,
                convention,
                bits,
                int(symmetric),
                group_size,
                dtype_name,
                ",".join(map(str, shape)),
            )
        )
        results.append(
            (name, convention, bits, symmetric, group_size, dtype, weights, codes, scales, zeros)
        )
    (out / "cases.txt").write_text("".join(lines))
    return results


# ---- optional: check the transcriptions against the installed onnxruntime -------------------------
def unpack_low_first(packed, bits, count):
    """Codes from bytes packed low bits first along the last axis, trimmed to `count`."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def run_onnxruntime(convention, weights, bits, symmetric, group_size):
    """The installed tool's (codes, scales, zeros) for a 2-D case, or None if it cannot run it."""
    rows, k = weights.shape
    group, groups = group_bounds(k, group_size)
    n_groups = len(groups)
    if weights.dtype == BF16:
        return None
    if convention == "ort":
        from onnxruntime.capi import _pybind_state as ort_c

        if group not in (16, 32, 64, 128, 256):
            return None  # MLAS takes only these block sizes (onnxruntime 1.32 throws otherwise)
        # Like MatMulNBitsQuantizer.qbits_block_quant: W^T [K, N] zero-padded, original K passed.
        padded = np.zeros((n_groups * group, rows), dtype=weights.dtype)
        padded[:k] = weights.T
        packed = np.zeros((rows, n_groups, group * bits // 8), dtype=np.uint8)
        zero_bytes = np.zeros((rows, -(-n_groups * bits // 8)), dtype=np.uint8)
        scales = np.zeros((rows, n_groups), dtype=weights.dtype)
        quantize = getattr(ort_c, f"quantize_matmul_{bits}bits")
        quantize(packed, padded, scales, zero_bytes, group, rows, k, symmetric)
        codes = unpack_low_first(packed.reshape(rows, -1), bits, k)
        zeros = None if symmetric else unpack_low_first(zero_bytes, bits, n_groups)
        return codes, scales, zeros
    if convention == "ort_gather":
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

        if bits != 4:
            return None
        packed, scales, zero_bytes = DefaultWeightOnlyQuantizer.quantize_ndarray(
            weights, 1, group, symmetric
        )
        codes = unpack_low_first(packed, 4, rows * k).reshape(rows, k)
        if symmetric:
            codes = codes ^ 8  # two's-complement int4 nibble of q -> q + 8
        zeros = (
            None
            if symmetric
            else unpack_low_first(zero_bytes, 4, rows * n_groups).reshape(rows, n_groups)
        )
        return codes, scales.reshape(rows, n_groups), zeros
    if convention == "ort_weight_only":
        from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor

        padded = np.zeros((rows, n_groups * group), dtype=weights.dtype)
        padded[:, :k] = weights
        q, scale, zero = quant_tensor(padded, bits, group, "sym" if symmetric else "asym", "uint")
        codes = q.reshape(rows, -1)[:, :k]
        zeros = None if symmetric else zero.reshape(rows, n_groups)
        return codes, scale.reshape(rows, n_groups).astype(weights.dtype), zeros
    return None  # olive: torch is not a dependency here


def verify_with_onnxruntime(results):
    checked, failed = {}, 0
    for (
        name,
        convention,
        bits,
        symmetric,
        group_size,
        dtype,
        weights,
        codes,
        scales,
        zeros,
    ) in results:
        with np.errstate(all="ignore"):  # the tools divide by zero scales, then mask them
            tool = run_onnxruntime(convention, weights, bits, symmetric, group_size)
        if tool is None:
            continue
        checked[convention] = checked.get(convention, 0) + 1
        tool_codes, tool_scales, tool_zeros = tool
        problems = []
        if not np.array_equal(tool_codes.astype(np.uint8), codes):
            where = np.argwhere(tool_codes.astype(np.uint8) != codes)[:3]
            problems += [
                f"code{tuple(i)} ours {codes[tuple(i)]} tool {tool_codes[tuple(i)]} (x = {weights[tuple(i)]})"
                for i in where
            ]
        if not np.array_equal(as_saved(tool_scales), as_saved(scales)):
            where = np.argwhere(as_saved(tool_scales) != as_saved(scales))[:3]
            problems += [
                f"scale{tuple(i)} ours {scales[tuple(i)]!r} tool {tool_scales[tuple(i)]!r}"
                for i in where
            ]
        if zeros is not None and not np.array_equal(tool_zeros.astype(np.uint8), zeros):
            where = np.argwhere(tool_zeros.astype(np.uint8) != zeros)[:3]
            problems += [
                f"zero{tuple(i)} ours {zeros[tuple(i)]} tool {tool_zeros[tuple(i)]}" for i in where
            ]
        if problems:
            failed += 1
            print("MISMATCH {}: {}".format(name, "; ".join(problems)))
    print(f"checked against onnxruntime: {checked} ({failed} mismatching cases)")
    return failed == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, type=pathlib.Path, help="fixture directory (replaced)"
    )
    parser.add_argument(
        "--verify-with-onnxruntime",
        action="store_true",
        help="also check the transcriptions against the installed onnxruntime",
    )
    args = parser.parse_args()
    results = write_fixtures(args.out)
    counts = {}
    for result in results:
        counts[result[1]] = counts.get(result[1], 0) + 1
    print(f"wrote {len(results)} cases to {args.out}: {counts}")
    if args.verify_with_onnxruntime and not verify_with_onnxruntime(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
