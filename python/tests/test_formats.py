"""The checkpoint and block formats from Python: GPTQ, AWQ, GGUF blocks and fused projections.

1. GPTQ (v1 / v2) and AWQ: canonical -> checkpoint -> canonical gives every byte back; the
   checkpoint's int32 words, unpacked here in numpy the way AutoGPTQ's / AutoAWQ's own code does
   (qlinear_cuda_old.py forward; packing_utils.py unpack_awq + reverse_awq_order), dequantize to
   nibble's values; act-order g_idx goes through from_gptq_permuted.
2. GGUF blocks against gguf-py 0.19 (gguf.quants): bytes identical for the types it quantizes
   (Q4_0, Q4_1, Q8_0), except the sign of a zero d / m in all-zero blocks of -0 inputs, where
   nibble follows llama.cpp's C reference (tests/test_gguf.cpp says why); dequantized values
   identical for all five types (Q4_K and Q6_K blocks are nibble's: gguf-py cannot make them).
3. Fused projections: merge then split gives the parts back bit for bit, the merged tensor
   dequantizes to the parts' rows, and merging GPTQ / AWQ checkpoints on their output columns
   equals exporting the merged canonical tensor.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import nibble

# ---- GPTQ ---------------------------------------------------------------------------------------

AUTO_GPTQ_V1_OFFSET = {"v1": 1, "v2": 0}  # v1 stores zero - 1 (AutoGPTQ adds the 1 back)


def gptq_spec_dequantize(checkpoint: nibble.GptqCheckpoint) -> np.ndarray:
    """W [N, K] from GPTQ words as AutoGPTQ's forward unpacks them (LSB first, natural order)."""
    bits, pack = checkpoint.bits, 32 // checkpoint.bits
    mask = (1 << bits) - 1
    words = checkpoint.qweight.view(np.uint32)
    shifts = (np.arange(pack, dtype=np.uint32) * bits)[None, :, None]
    codes = ((words[:, None, :] >> shifts) & mask).reshape(-1, words.shape[1])  # [K, N]
    zero_words = checkpoint.qzeros.view(np.uint32)
    zeros = ((zero_words[:, :, None] >> shifts.reshape(1, 1, -1)) & mask).reshape(zero_words.shape[0], -1)
    zeros = zeros.astype(np.int64) + AUTO_GPTQ_V1_OFFSET[checkpoint.zero_format]  # [n_groups, N]
    groups = checkpoint.g_idx
    scales = checkpoint.scales.astype(np.float32)
    w_kn = (codes.astype(np.float32) - zeros[groups].astype(np.float32)) * scales[groups]
    return w_kn.T


def assert_same_tensor(a: nibble.QuantTensor, b: nibble.QuantTensor):
    assert a.shape == b.shape and a.config == b.config
    assert a.scales.dtype == b.scales.dtype
    for ours, theirs in ((a.qweight, b.qweight), (a.scales, b.scales), (a.zeros, b.zeros)):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours.shape == theirs.shape and ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("zero_format", nibble.GPTQ_ZERO_FORMATS)
@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_gptq_round_trip_and_autogptq_unpacking(bits, symmetric, zero_format, scale_dtype, rng):
    n, k, group = 48, 256, 64
    weights = rng.standard_normal((n, k)).astype(np.float32)
    tensor = nibble.quantize(weights, bits, group, symmetric, "olive", scale_dtype=scale_dtype)
    checkpoint = nibble.to_gptq(tensor, zero_format)
    pack = 32 // bits
    assert checkpoint.qweight.dtype == np.int32 and checkpoint.qweight.shape == (k // pack, n)
    assert checkpoint.qzeros.shape == (k // group, n // pack) and checkpoint.scales.shape == (k // group, n)
    assert checkpoint.scales.dtype == scale_dtype and checkpoint.sym == symmetric and not checkpoint.desc_act
    np.testing.assert_array_equal(checkpoint.g_idx, np.arange(k, dtype=np.int32) // group)
    np.testing.assert_array_equal(gptq_spec_dequantize(checkpoint), nibble.dequantize(tensor))
    back = nibble.from_gptq(checkpoint, symmetry="symmetric" if symmetric else "asymmetric")
    assert_same_tensor(back, tensor)
    if symmetric:  # detect recovers symmetry from the midpoint zeros
        assert nibble.from_gptq(checkpoint).config.symmetric


def test_gptq_act_order_imports_permuted(rng):
    n, k, group = 32, 128, 32
    weights = rng.standard_normal((n, k)).astype(np.float32)
    calibration = (rng.standard_normal((64, k)) * np.linspace(0.1, 3, k)).astype(np.float32)
    tensor, g_idx, _ = nibble.gptq(weights, calibration, 4, group, act_order=True)
    assert g_idx is not None
    checkpoint = nibble.to_gptq(tensor, "v2", g_idx)  # GPTQ gives zero 0 to all-positive groups: v2
    assert checkpoint.desc_act
    np.testing.assert_array_equal(checkpoint.g_idx, g_idx)
    np.testing.assert_array_equal(gptq_spec_dequantize(checkpoint), nibble.dequantize_gptq(tensor, g_idx))
    with pytest.raises(ValueError, match="from_gptq_permuted"):
        nibble.from_gptq(checkpoint)
    permuted, permutation = nibble.from_gptq_permuted(checkpoint, symmetry="asymmetric")
    assert permutation.dtype == np.int64 and sorted(permutation) == list(range(k))
    np.testing.assert_array_equal(nibble.dequantize(permuted), nibble.dequantize_gptq(tensor, g_idx)[:, permutation])


def test_gptq_refusals_carry_the_cpp_message(rng):
    weights = rng.standard_normal((16, 100)).astype(np.float32)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        nibble.to_gptq(nibble.quantize(weights, 4, 32))
    with pytest.raises(ValueError, match="zero_format"):
        nibble.to_gptq(nibble.quantize(weights[:, :64].copy(), 4, 32), "v3")
    checkpoint = nibble.to_gptq(nibble.quantize(weights[:, :64].copy(), 4, 32))
    with pytest.raises(ValueError, match="bits = 3 is not supported"):
        nibble.from_gptq(nibble.GptqCheckpoint(checkpoint.qweight, checkpoint.qzeros, checkpoint.scales, bits=3, group_size=32))
    with pytest.raises(ValueError, match="qzeros has shape"):
        nibble.from_gptq(nibble.GptqCheckpoint(checkpoint.qweight, checkpoint.qzeros[:1].copy(), checkpoint.scales, group_size=32))
    with pytest.raises(TypeError, match="int32"):
        nibble.from_gptq(nibble.GptqCheckpoint(checkpoint.qweight.view(np.float32), checkpoint.qzeros, checkpoint.scales, group_size=32))


# ---- AWQ ----------------------------------------------------------------------------------------

AWQ_REVERSE_ORDER = np.array([0, 4, 1, 5, 2, 6, 3, 7])  # AutoAWQ packing_utils.py


def awq_spec_dequantize(checkpoint: nibble.AwqCheckpoint) -> np.ndarray:
    """W [N, K] as AutoAWQ's unpack_awq + reverse_awq_order + dequantize_gemm compute it."""

    def unpack(words: np.ndarray) -> np.ndarray:  # [rows, N / 8] int32 -> [rows, N]
        shifts = np.arange(0, 32, 4, dtype=np.uint32)
        nibbles = (words.view(np.uint32)[:, :, None] >> shifts) & 0xF  # nibble i of each word
        return nibbles[:, :, AWQ_REVERSE_ORDER].reshape(words.shape[0], -1)

    codes, zeros = unpack(checkpoint.qweight), unpack(checkpoint.qzeros)
    groups = np.arange(codes.shape[0]) // checkpoint.group_size
    scales = checkpoint.scales.astype(np.float32)
    return ((codes.astype(np.float32) - zeros[groups].astype(np.float32)) * scales[groups]).T


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_awq_round_trip_and_autoawq_unpacking(symmetric, scale_dtype, rng):
    n, k, group = 40, 192, 64
    tensor = nibble.quantize(rng.standard_normal((n, k)).astype(np.float32), 4, group, symmetric, scale_dtype=scale_dtype)
    checkpoint = nibble.to_awq(tensor)
    assert checkpoint.qweight.shape == (k, n // 8) and checkpoint.qzeros.shape == (k // group, n // 8)
    assert checkpoint.scales.dtype == scale_dtype and checkpoint.in_features == k and checkpoint.out_features == n
    np.testing.assert_array_equal(awq_spec_dequantize(checkpoint), nibble.dequantize(tensor))
    back = nibble.from_awq(checkpoint, symmetry="detect" if symmetric else "asymmetric")
    assert_same_tensor(back, tensor)
    if symmetric:
        assert int(checkpoint.qzeros.view(np.uint32)[0, 0]) == 0x88888888
        assert not nibble.from_awq(checkpoint).config.symmetric  # AWQ's own meaning: asymmetric


def test_awq_codes_of_outputs_0_to_7_pack_as_autoawq_documents():
    # One word of codes q(n) = n for outputs n = 0..7: nibbles 0 2 4 6 1 3 5 7 -> 0x75316420.
    k, n = 32, 8
    codes = np.tile(np.arange(8, dtype=np.uint8)[:, None], (1, k))
    tensor = nibble.QuantTensor(
        nibble.pack(codes, 4), np.ones((n, 1), np.float32), nibble.pack(np.zeros((n, 1), np.uint8), 4),
        (n, k), nibble.QuantConfig(4, 32, False),
    )
    assert int(nibble.to_awq(tensor).qweight.view(np.uint32)[0, 0]) == 0x75316420


def test_awq_refusals(rng):
    weights = rng.standard_normal((12, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="4-bit codes only"):
        nibble.to_awq(nibble.quantize(weights, 8, 32))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        nibble.to_awq(nibble.quantize(weights, 4, 32))
    with pytest.raises(ValueError, match="symmetry"):
        nibble.from_awq(nibble.to_awq(nibble.quantize(weights[:8].copy(), 4, 32)), symmetry="maybe")


# ---- GGUF blocks vs gguf-py ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf():
    return pytest.importorskip("gguf", reason="gguf-py (pip install 'gguf==0.19.*') compares the GGUF blocks")


def gguf_inputs(rng, k: int = 512) -> np.ndarray:
    """Rows of [.., k] float32: Gaussian at several per-block scales, exact rounding ties, an
    all-+0 block, constant and one-signed blocks, fp16-subnormal-sized values."""
    rows = [rng.standard_normal(k) * scale for scale in (1e-4, 1.0, 1e3)]
    ties = np.round(rng.standard_normal(k) * 8) / 8
    special = rng.standard_normal(k)
    special[:32] = 0.0
    special[32:64] = 0.75
    special[64:96] = np.abs(special[64:96])
    special[96:128] *= 1e-6
    return np.stack(rows + [ties, special]).astype(np.float32)


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q8_0"])
def test_gguf_bytes_equal_gguf_py_where_it_quantizes(name, gguf, rng):
    qtype = gguf.GGMLQuantizationType[name.upper()]
    x = gguf_inputs(rng)
    ours = nibble.gguf_quantize(x, name)
    theirs = gguf.quants.quantize(x, qtype)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    assert np.array_equal(nibble.gguf_quantize(x, qtype), ours)  # a ggml type id works as well
    # Values too: nibble dequantizes gguf-py's blocks and gguf-py nibble's, identically.
    np.testing.assert_array_equal(nibble.gguf_dequantize(theirs, name), gguf.quants.dequantize(ours, qtype))


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q8_0"])
def test_gguf_signed_zero_blocks_differ_only_in_the_known_sign_bit(name, gguf):
    # An all-zero block whose x[0] is -0: llama.cpp's C code stores Q4_0 d = -0 whatever the signs
    # and Q4_1 m with x[0]'s sign; gguf-py derives them from x[0] / np.min. nibble follows C.
    qtype = gguf.GGMLQuantizationType[name.upper()]
    x = np.zeros((1, 64), np.float32)
    x[0, :32] = -0.0
    ours, theirs = nibble.gguf_quantize(x, name), gguf.quants.quantize(x, qtype)
    differing = np.flatnonzero(ours != theirs)
    sign_bytes = {"q4_0": [1], "q4_1": [1, 3], "q8_0": [1]}[name]  # the fp16 high bytes of d, m
    assert set(differing) <= set(sign_bytes)
    assert np.all((ours[0, differing] ^ theirs[0, differing]) == 0x80)  # the sign bit alone
    if name == "q4_0":  # d = -0 (fp16 0x8000) as quantize_row_q4_0_ref; gguf-py: -(-0) / 8 = +0
        assert list(differing) == [1] and ours[0, 1] == 0x80
    if name == "q8_0":  # both take d = max |x| / 127 = +0
        assert differing.size == 0
    # Q4_1's m: gguf-py's np.min picks among +-0 by numpy's SIMD path, so either may agree.
    np.testing.assert_array_equal(nibble.gguf_dequantize(ours, name), gguf.quants.dequantize(ours, qtype))


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q8_0", "q2_K", "q4_K", "q6_K"])
def test_gguf_dequantized_values_equal_gguf_py(name, gguf, rng):
    qtype = gguf.GGMLQuantizationType[name.upper()]
    x = gguf_inputs(rng).reshape(5, 2, 256)  # leading dimensions are kept
    blocks = nibble.gguf_quantize(x, name)
    info = nibble.GGUF_TYPES[name]
    assert blocks.shape == (5, 2, 256 // info.block_size * info.type_size) and info.type_id == int(qtype)
    ours = nibble.gguf_dequantize(blocks, name)
    theirs = gguf.quants.dequantize(blocks, qtype)
    assert ours.shape == theirs.shape == x.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_gguf_refusals(rng):
    with pytest.raises(ValueError, match="not a positive multiple of the q4_K block size 256"):
        nibble.gguf_quantize(rng.standard_normal((2, 128)).astype(np.float32), "q4_K")
    with pytest.raises(ValueError, match="not implemented"):
        nibble.gguf_quantize(rng.standard_normal((2, 256)).astype(np.float32), "q5_K")
    with pytest.raises(ValueError, match="not implemented"):
        nibble.gguf_dequantize(np.zeros((1, 18), np.uint8), 13)  # ggml's Q5_K id
    with pytest.raises(ValueError, match="whole q4_0 blocks"):
        nibble.gguf_dequantize(np.zeros((1, 20), np.uint8), "q4_0")
    x = np.ones((1, 32), np.float32)
    x[0, 5] = np.nan
    with pytest.raises(ValueError):
        nibble.gguf_quantize(x, "q8_0")


# ---- fused projections --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_fused_merge_then_split_is_the_parts(bits, symmetric, rng):
    k, group = 100, 32  # K not whole groups: pad codes travel with their rows
    rows = (64, 16, 16)  # GQA q / k / v
    parts = [
        nibble.quantize(rng.standard_normal((n, k)).astype(np.float16), bits, group, symmetric, "ort")
        for n in rows
    ]
    fused = nibble.fused_merge(parts)
    assert fused.shape == (sum(rows), k) and fused.scales.dtype == np.float16
    np.testing.assert_array_equal(nibble.dequantize(fused), np.concatenate([nibble.dequantize(p) for p in parts]))
    for ours, theirs in zip(nibble.fused_split(fused, rows), parts):
        assert_same_tensor(ours, theirs)


def test_fused_refusals(rng):
    a = nibble.quantize(rng.standard_normal((8, 64)).astype(np.float32), 4, 32)
    b = nibble.quantize(rng.standard_normal((8, 64)).astype(np.float32), 8, 32)
    with pytest.raises(ValueError, match="bits"):
        nibble.fused_merge([a, b])
    with pytest.raises(TypeError, match="float16"):
        nibble.fused_merge([a, nibble.quantize(rng.standard_normal((8, 64)).astype(np.float16), 4, 32)])
    with pytest.raises(ValueError):
        nibble.fused_split(a, [4, 5])
    with pytest.raises(TypeError, match="QuantTensor"):
        nibble.fused_merge([a, a.qweight])


def assert_same_checkpoint(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        ours, theirs = getattr(a, field.name), getattr(b, field.name)
        if isinstance(ours, np.ndarray):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, field.name
            assert ours.tobytes() == theirs.tobytes(), field.name
        else:
            assert ours == theirs, field.name


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fused_gptq_checkpoints_merge_on_columns_as_the_canonical_rows(bits, rng):
    # Merging canonical parts then exporting equals exporting each part then merging checkpoints.
    k, group, rows = 128, 32, (32, 16, 16)
    parts = [nibble.quantize(rng.standard_normal((n, k)).astype(np.float16), bits, group) for n in rows]
    checkpoints = [nibble.to_gptq(part, "v2") for part in parts]
    merged = nibble.fused_merge(checkpoints)
    assert_same_checkpoint(merged, nibble.to_gptq(nibble.fused_merge(parts), "v2"))
    for ours, theirs in zip(nibble.fused_split(merged, rows), checkpoints):
        assert_same_checkpoint(ours, theirs)
    with pytest.raises(ValueError, match="multiple of"):
        nibble.fused_split(merged, [30, 34])  # not whole qzeros words


def test_fused_awq_checkpoints_merge_on_word_columns(rng):
    k, group, rows = 64, 32, (24, 8)
    parts = [nibble.quantize(rng.standard_normal((n, k)).astype(np.float32), 4, group) for n in rows]
    checkpoints = [nibble.to_awq(part) for part in parts]
    merged = nibble.fused_merge(checkpoints)
    assert_same_checkpoint(merged, nibble.to_awq(nibble.fused_merge(parts)))
    for ours, theirs in zip(nibble.fused_split(merged, rows), checkpoints):
        assert_same_checkpoint(ours, theirs)
    with pytest.raises(TypeError, match="AwqCheckpoint"):
        nibble.fused_merge([checkpoints[0], parts[1]])
