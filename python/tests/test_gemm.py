"""nibble.gemm / moe_gemm run the dispatched SIMD kernels: held to the reference kernel (double
accumulation, reference=True) with the fp32 dot-product bound, to the int8-activation bound, and
for float16 / bfloat16 x to one rounding of the output on top; over the odd-shape sweep, every
bits / group / symmetry, 1 and 2 threads, and every ISA table this CPU runs (NIBBLE_ISA); bf16 / fp16
activations against the reference on x rounded by ml_dtypes / numpy; the packed layout
(pack_for_cpu) against the same truths and its scalar twin."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import nibble
from conftest import fp32_dot_tolerance

BF16 = np.dtype(ml_dtypes.bfloat16)
#: One rounding of a float32 result to the output dtype (relative).
OUTPUT_ROUNDING = {np.dtype(np.float32): 0.0, np.dtype(np.float16): 2.0**-11, BF16: 2.0**-8}


def _expanded_scales(qt: nibble.QuantTensor) -> np.ndarray:
    """float64 [rows, K]: each element's group scale."""
    rows, k = int(np.prod(qt.shape[:-1])), qt.shape[-1]
    scales = qt.scales.astype(np.float64).reshape(rows, -1)
    return np.repeat(scales, qt.group_size, axis=1)[:, :k]


def int8_tolerance(x: np.ndarray, qt: nibble.QuantTensor) -> np.ndarray:
    """Bound on |int8-activation result - exact fp32 product| per output [M, N]: each x element
    is off by at most half its block's step max|x|_block / 127 (bounded here by the row's max),
    times |w|; plus the fp32 accumulation of the integer sums (codes and zero points up to
    2^bits each) scaled per block and group."""
    x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
    w_hat = nibble.dequantize(qt).astype(np.float64).reshape(-1, x.shape[-1])
    step = np.abs(x64).max(axis=1, keepdims=True) / 127.0
    quantization = (step / 2) * np.abs(w_hat).sum(axis=1)[None, :]
    magnitude = (np.abs(x64) + step) @ (_expanded_scales(qt) * 2.0 ** (qt.bits + 1)).T
    accumulation = (x.shape[-1] + qt.n_groups + 4) * 2.0**-23 * magnitude
    return quantization * (1 + 1e-6) + 2 * accumulation + 1e-30


#: The dtype each rounding precision rounds x to first (ml_dtypes / numpy casts: round to nearest
#: even, the independent truth for nibble's from_float).
ROUNDED_TO = {"bf16": BF16, "fp16": np.dtype(np.float16)}


def multiplied(x: np.ndarray, activations: str) -> np.ndarray:
    """x's values as ``activations`` multiplies them, as float32 (int8 is bounded separately)."""
    x32 = x.astype(np.float32)
    return x32.astype(ROUNDED_TO[activations]).astype(np.float32) if activations in ROUNDED_TO else x32


def check_gemm(x: np.ndarray, qt: nibble.QuantTensor, activations: str, num_threads: int = 0, bias=None,
               weights=None):
    """nibble.gemm over `weights` (default qt; or its PackedTensor) against the reference kernel
    of qt on the values multiplied."""
    weights = qt if weights is None else weights
    y = nibble.gemm(x, weights, bias, activations=activations, num_threads=num_threads)
    assert y.dtype == x.dtype and y.shape == x.shape[:-1] + (int(np.prod(qt.shape[:-1])),)
    x32 = multiplied(x, activations)
    reference = nibble.gemm(x32, qt, reference=True).astype(np.float64)
    if bias is not None:
        reference += bias.astype(np.float64)
    w_hat = nibble.dequantize(qt).reshape(-1, x.shape[-1])
    if activations == "int8":
        bound = int8_tolerance(x32, qt).reshape(reference.shape)
    else:
        bound = fp32_dot_tolerance(x32, w_hat)
    bound = bound + 2.0**-23 * np.abs(reference) + OUTPUT_ROUNDING[x.dtype] * np.abs(reference) * (1 + 2**-8)
    error = np.abs(y.astype(np.float64) - reference)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"{activations}, x {x.dtype} {x.shape}, {qt}: error {error[worst]} > bound {bound[worst]} at {worst}"
    )
    return y


SWEEP = list(itertools.product((2, 4, 8), (False, True), (16, 32, 64, 128, nibble.PER_CHANNEL)))


@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
@pytest.mark.parametrize("bits, symmetric, group_size", SWEEP, ids=lambda v: str(v))
def test_fast_kernels_match_the_reference_over_odd_shapes(rng, bits, symmetric, group_size, activations):
    for n, k in ((1, 1), (3, 31), (17, 64), (33, 129), (5, 401)):
        qt = nibble.quantize(rng.standard_normal((n, k)).astype(np.float32), bits, group_size, symmetric)
        for m in (1, 2, 5, 13):
            check_gemm(rng.standard_normal((m, k)).astype(np.float32), qt, activations)


@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
def test_a_large_odd_shape_with_bias_and_leading_dimensions(rng, activations):
    qt = nibble.quantize(rng.standard_normal((500, 401)).astype(np.float32), 4, 32)
    bias = rng.standard_normal(500).astype(np.float32)
    check_gemm(rng.standard_normal((43, 401)).astype(np.float32), qt, activations, bias=bias)
    check_gemm(rng.standard_normal((2, 3, 401)).astype(np.float32), qt, activations)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
def test_half_precision_activations_in_and_out(rng, dtype, activations):
    for scale_dtype in (np.float32, dtype):
        qt = nibble.quantize(rng.standard_normal((40, 200)).astype(np.float32), 4, 32, scale_dtype=scale_dtype)
        x = rng.standard_normal((3, 200)).astype(dtype)
        bias = rng.standard_normal(40).astype(dtype)
        check_gemm(x, qt, activations, bias=bias)
        check_gemm(x[0].copy(), qt, activations)


@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
def test_thread_counts_give_the_same_bits(rng, activations):
    # Threads split the outputs, never a dot product: any count gives the same result.
    qt = nibble.quantize(rng.standard_normal((257, 300)).astype(np.float32), 4, 64)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    one = check_gemm(x, qt, activations, num_threads=1)
    for threads in (2, 3):
        assert nibble.gemm(x, qt, activations=activations, num_threads=threads).tobytes() == one.tobytes()


@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
def test_moe_gemm_fast_matches_the_reference(rng, activations):
    experts = nibble.quantize(rng.standard_normal((4, 24, 100)).astype(np.float32), 4, 32)
    x = rng.standard_normal((6, 100)).astype(np.float32)
    ids = rng.integers(0, 4, (6, 2)).astype(np.int32)
    gates = rng.random((6, 2)).astype(np.float32)
    y = nibble.moe_gemm(x, experts, ids, gates, activations=activations)
    reference = nibble.moe_gemm(multiplied(x, activations), experts, ids, gates, reference=True).astype(np.float64)
    bound = np.zeros_like(reference)
    for t in range(6):
        for slot in range(2):
            expert = experts[int(ids[t, slot])]
            per_expert = (
                int8_tolerance(x[t : t + 1], expert)
                if activations == "int8"
                else fp32_dot_tolerance(multiplied(x[t : t + 1], activations), expert.dequantize())
            )
            bound[t] += gates[t, slot] * per_expert[0]
    bound += 4 * 2.0**-23 * np.abs(reference) + 1e-30  # the gated sum's own roundings
    assert np.all(np.abs(y - reference) <= bound)
    # bf16 x: the same bound around the reference on the bf16 values, plus the output rounding.
    x_half = x.astype(BF16)
    half = nibble.moe_gemm(x_half, experts, ids, gates, activations=activations)
    reference = nibble.moe_gemm(multiplied(x_half, activations), experts, ids, gates, reference=True).astype(np.float64)
    assert half.dtype == BF16 and np.all(
        np.abs(half.astype(np.float64) - reference) <= 1.01 * bound + 2.0**-8 * np.abs(reference) * 1.01
    )


def test_the_isa_is_reported_and_one_of_the_compiled_tables(rng):
    qt = nibble.quantize(rng.standard_normal((8, 64)).astype(np.float32), 4, 32)
    kernels = nibble.build_info()["kernels"]
    for activations in nibble.ACTIVATIONS:
        isa = nibble.gemm_isa(qt, activations)
        assert isa in kernels or kernels[1] == "generic", (isa, kernels)


def _isas_this_cpu_runs():
    features = set(nibble.build_info()["cpu_features"])
    kernels = nibble.build_info()["kernels"]
    needs = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw"}, "avx512vnni": {"avx512f", "avx512vnni"},
             "avx512bf16": {"avx512f", "avx512bf16"}}
    return ["generic"] + [isa for isa, needed in needs.items() if isa in kernels and needed <= features]


@pytest.mark.parametrize("isa", _isas_this_cpu_runs())
def test_every_isa_table_this_cpu_runs(isa):
    """NIBBLE_ISA picks the table, as in C++: each one the CPU has is held to the bounds above."""
    script = (
        "import numpy as np, nibble, test_gemm\n"
        "rng = np.random.default_rng(5)\n"
        "for bits, group in ((2, 16), (4, 32), (4, 128), (8, 64), (4, -1)):\n"
        "    for symmetric in (False, True):\n"
        "        qt = nibble.quantize(rng.standard_normal((37, 300)).astype(np.float32), bits, group, symmetric)\n"
        "        for activations in nibble.ACTIVATIONS:\n"
        "            for m in (1, 5, 13):\n"
        "                test_gemm.check_gemm(rng.standard_normal((m, 300)).astype(np.float32), qt, activations)\n"
        "print(nibble.gemm_isa(nibble.quantize(np.ones((2, 64), np.float32), 4, 32)))\n"
    )
    environment = dict(os.environ, NIBBLE_ISA=isa, PYTHONPATH=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    reported = result.stdout.strip()
    assert reported == isa or (isa == "generic" and reported not in ("avx2", "avx512", "avx512vnni", "avx512bf16"))


def test_reference_takes_float32_and_fp32_activations_only(rng):
    qt = nibble.quantize(rng.standard_normal((8, 64)).astype(np.float32), 4, 32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="reference=True runs the fp32 reference kernel.*got x float16"):
        nibble.gemm(x.astype(np.float16), qt, reference=True)
    with pytest.raises(ValueError, match="activations 'int8'"):
        nibble.gemm(x, qt, activations="int8", reference=True)
    with pytest.raises(TypeError, match=r"bias has dtype float32 \(expected float16\)"):
        nibble.gemm(x.astype(np.float16), qt, np.zeros(8, np.float32))


def test_rounding_precisions_round_x_first(rng):
    """bf16 / fp16 multiply x rounded to that type: not the fp32 result on x, and (on a CPU without
    the vdpbf16ps kernel, which reorders sums) bit for bit fp32 on the rounded x."""
    qt = nibble.quantize(rng.standard_normal((40, 256)).astype(np.float32), 4, 32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    fp32 = nibble.gemm(x, qt)
    for activations in ROUNDED_TO:
        y = nibble.gemm(x, qt, activations=activations)
        assert not np.array_equal(y, fp32)
        if nibble.gemm_isa(qt, activations) != "avx512bf16":
            assert np.array_equal(y, nibble.gemm(multiplied(x, activations), qt))


# ---- the packed layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("activations", nibble.ACTIVATIONS)
@pytest.mark.parametrize("bits, symmetric, group_size", SWEEP, ids=lambda v: str(v))
def test_packed_kernels_match_the_reference_over_odd_shapes(rng, bits, symmetric, group_size, activations):
    for n, k in ((1, 1), (3, 31), (17, 64), (33, 129), (9, 401)):
        qt = nibble.quantize(rng.standard_normal((n, k)).astype(np.float32), bits, group_size, symmetric)
        packed = nibble.pack_for_cpu(qt)
        assert packed.shape == qt.shape and packed.isa == nibble.gemm_isa(packed)
        for m in (1, 2, 5, 13):
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = check_gemm(x, qt, activations, weights=packed)
            # The scalar twin over the same packed bytes: within the same bound of the reference.
            check_twin = nibble.gemm(x, packed, activations=activations, reference=True)
            assert check_twin.shape == y.shape
            tolerance = (int8_tolerance(x, qt) if activations == "int8" else
                         fp32_dot_tolerance(multiplied(x, activations), nibble.dequantize(qt).reshape(n, k)))
            assert np.all(np.abs(check_twin.astype(np.float64) - y) <= 2 * tolerance + 1e-30)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_packed_half_precision_x_scales_bias_and_leading_dimensions(rng, dtype):
    for scale_dtype in (np.float32, dtype):
        qt = nibble.quantize(rng.standard_normal((2, 20, 200)).astype(np.float32), 4, 32, scale_dtype=scale_dtype)
        flat = nibble.QuantTensor(qt.qweight.reshape(40, -1), qt.scales.reshape(40, -1), qt.zeros.reshape(40, -1),
                                  (40, 200), qt.config)
        packed = nibble.pack_for_cpu(qt)  # rank 3 packs as its 40 rows
        assert packed.scale_dtype == np.dtype(scale_dtype)
        for activations in nibble.ACTIVATIONS:
            x = rng.standard_normal((2, 3, 200)).astype(dtype)
            check_gemm(x, flat, activations, bias=rng.standard_normal(40).astype(dtype), weights=packed)


def test_packed_tensor_outlives_its_quant_tensor_and_threads_agree(rng):
    import gc

    weights = rng.standard_normal((257, 300)).astype(np.float32)
    qt = nibble.quantize(weights, 4, 64, symmetric=False)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    expected = nibble.gemm(x, nibble.pack_for_cpu(qt), activations="int8", num_threads=1)
    packed = nibble.pack_for_cpu(qt, num_threads=2)
    del qt
    gc.collect()
    for threads in (1, 2, 3):
        assert nibble.gemm(x, packed, activations="int8", num_threads=threads).tobytes() == expected.tobytes()
    assert packed.nbytes > 0 and "PackedTensor(shape=(257, 300)" in repr(packed)


def test_packed_bad_input_is_a_clear_error(rng):
    qt = nibble.quantize(rng.standard_normal((8, 64)).astype(np.float32), 4, 32)
    packed = nibble.pack_for_cpu(qt)
    with pytest.raises(TypeError, match="made by nibble.pack_for_cpu"):
        nibble.PackedTensor()
    with pytest.raises(ValueError, match=r"K = 63\) but the packed weights \[8, 64\] have K = 64"):
        nibble.gemm(np.zeros((1, 63), np.float32), packed)
    with pytest.raises(ValueError, match=r"bias has shape \[7\]"):
        nibble.gemm(np.zeros((1, 64), np.float32), packed, np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="scalar twin.*x must be float32"):
        nibble.gemm(np.zeros((1, 64), np.float16), packed, reference=True)
    with pytest.raises(TypeError, match="routing over a PackedTensor is not implemented"):
        nibble.moe_gemm(np.zeros((1, 64), np.float32), packed, np.zeros((1, 1), np.int32))
    with pytest.raises(TypeError, match="or a nibble.PackedTensor"):
        nibble.gemm(np.zeros((1, 64), np.float32), "weights")
    with pytest.raises(TypeError, match="tensor"):
        nibble.pack_for_cpu(packed)


def test_packed_for_one_isa_refuses_another():
    """A PackedTensor made for one kernel table, used where NIBBLE_ISA picks another, is an error
    naming both (never a wrong answer)."""
    if "avx2" not in nibble.build_info()["cpu_features"]:
        pytest.skip("this CPU has no AVX2 table to mismatch against")
    script = (
        "import os, numpy as np, nibble\n"
        "qt = nibble.quantize(np.ones((8, 64), np.float32), 4, 32)\n"
        "packed = nibble.pack_for_cpu(qt)\n"  # for NIBBLE_ISA = generic
        "print(packed.isa, flush=True)\n"
        "os.environ['NIBBLE_ISA'] = 'avx2'\n"
        "nibble.gemm(np.ones((1, 64), np.float32), packed)\n"
    )
    environment = dict(os.environ, NIBBLE_ISA="generic")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.stdout.strip() == "generic" and result.returncode != 0, (result.stdout, result.stderr)
    assert "packed for generic but this call runs avx2" in result.stderr, result.stderr
