"""nibble.gemm / moe_gemm run the dispatched SIMD kernels: held to the reference kernel (double
accumulation, reference=True) with the fp32 dot-product bound, to the int8-activation bound, and
for float16 / bfloat16 x to one rounding of the output on top; over the odd-shape sweep, every
bits / group / symmetry, 1 and 2 threads, and every ISA table this CPU runs (NIBBLE_ISA)."""

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


def check_gemm(x: np.ndarray, qt: nibble.QuantTensor, activations: str, num_threads: int = 0, bias=None):
    y = nibble.gemm(x, qt, bias, activations=activations, num_threads=num_threads)
    assert y.dtype == x.dtype and y.shape == x.shape[:-1] + (int(np.prod(qt.shape[:-1])),)
    x32 = x.astype(np.float32)
    reference = nibble.gemm(x32, qt, reference=True).astype(np.float64)
    if bias is not None:
        reference += bias.astype(np.float64)
    w_hat = nibble.dequantize(qt).reshape(-1, x.shape[-1])
    if activations == "fp32":
        bound = fp32_dot_tolerance(x32, w_hat)
    else:
        bound = int8_tolerance(x32, qt).reshape(reference.shape)
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
    reference = nibble.moe_gemm(x, experts, ids, gates, reference=True).astype(np.float64)
    bound = np.zeros_like(reference)
    for t in range(6):
        for slot in range(2):
            expert = experts[int(ids[t, slot])]
            per_expert = (
                fp32_dot_tolerance(x[t : t + 1], expert.dequantize())
                if activations == "fp32"
                else int8_tolerance(x[t : t + 1], expert)
            )
            bound[t] += gates[t, slot] * per_expert[0]
    bound += 4 * 2.0**-23 * np.abs(reference) + 1e-30  # the gated sum's own roundings
    assert np.all(np.abs(y - reference) <= bound)
    # bf16 x: the same bound around the reference on the bf16 values, plus the output rounding.
    x_half = x.astype(BF16)
    half = nibble.moe_gemm(x_half, experts, ids, gates, activations=activations)
    reference = nibble.moe_gemm(x_half.astype(np.float32), experts, ids, gates, reference=True).astype(np.float64)
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
