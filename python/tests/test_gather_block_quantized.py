"""nibble against ONNX Runtime's GatherBlockQuantized: its quantizer's bytes, and its kernel
gathering rows of our tables.

1. With convention="ort_gather", nibble's INT4 (symmetric) / UINT4 (asymmetric) data, scales and
   zero points equal, byte for byte, what onnxruntime's quantizer writes for a Gather's table
   (quantize_axis = last), attributes and input names included. Nothing is excluded: the layout
   has no padding but one final pad nibble, which both write as 0.
2. onnxruntime gathers rows of our quantized tables (uint8 data at 4 and 8 bits, and the
   INT4/UINT4 flavour) and returns exactly our dequantized rows.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

import nibble
from conftest import initializers_of, make_model, run


def raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """An initializer's bytes as stored (INT4/UINT4 tensors have no numpy dtype)."""
    return bytes(tensor.raw_data)


def ort_quantized_gather(table: np.ndarray, block_size: int, symmetric: bool):
    rows, k = table.shape
    model = make_model(
        [onnx.helper.make_node("Gather", ["table", "indices"], ["Y"], name="gather", axis=0)],
        [numpy_helper.from_array(table, "table")],
        [("indices", np.int64, [3])],
        [("Y", table.dtype, [3, k])],
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block_size,
        is_symmetric=symmetric,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer.process()
    quantized = quantizer.model.model
    (node,) = [node for node in quantized.graph.node if node.op_type == "GatherBlockQuantized"]
    return node, initializers_of(quantized)


# onnxruntime's numpy quantizer divides by the zero scale of an all-zero block before masking it.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("rows, k", [(11, 128), (7, 45), (3, 301)], ids=["11x128", "7x45", "3x301"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ort_gather_convention_matches_onnxruntime_quantizer_bytes(rows, k, block_size, symmetric, dtype, rng):
    table = rng.standard_normal((rows, k)).astype(dtype)
    table[0, : min(k, block_size)] = 0  # an all-zero block
    table[1] = np.round(table[1] * 4) / 4  # exact rounding ties
    node, initializers = ort_quantized_gather(table, block_size, symmetric)

    kind = "int4" if symmetric else "uint4"
    ours = nibble.to_gather_block_quantized(
        nibble.quantize(table, 4, block_size, symmetric, convention="ort_gather"), kind
    )
    our_node, our_initializers = ours.make_node("indices", "Y", name="table")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == ours.attributes
    assert list(node.input) == list(our_node.input)
    for ours_tensor in our_initializers:
        theirs = initializers[ours_tensor.name]
        assert theirs.data_type == ours_tensor.data_type, ours_tensor.name
        assert list(theirs.dims) == list(ours_tensor.dims), ours_tensor.name
        if theirs.raw_data:
            assert raw_bytes(theirs) == raw_bytes(ours_tensor), ours_tensor.name
        else:  # onnx may store small float tensors as typed fields: compare the values' bytes
            assert numpy_helper.to_array(theirs).tobytes() == numpy_helper.to_array(ours_tensor).tobytes()
    assert len(our_initializers) == len(node.input) - 1  # everything but the indices


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("convention", nibble.CONVENTIONS)
def test_onnxruntime_gathers_our_uint8_tables_exactly(bits, symmetric, convention, rng):
    vocab, hidden, block_size = 50, 96, 32  # uint8 data needs whole blocks per row
    table = nibble.quantize(rng.standard_normal((vocab, hidden)).astype(np.float32), bits, block_size, symmetric, convention)
    node, initializers = nibble.to_gather_block_quantized(table).make_node("indices", "Y", name="embed")
    indices = np.array([[0, 49, 7], [7, 3, 12]], dtype=np.int64)
    model = make_model([node], initializers, [("indices", np.int64, [2, 3])], [("Y", np.float32, [2, 3, hidden])])
    (gathered,) = run(model, {"indices": indices})
    np.testing.assert_array_equal(gathered, nibble.dequantize(table)[indices])


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_onnxruntime_gathers_our_int4_tables_exactly(symmetric, rng):
    vocab, hidden, block_size = 9, 45, 16  # odd row length: nibbles straddle rows
    table = nibble.quantize(rng.standard_normal((vocab, hidden)).astype(np.float32), 4, block_size, symmetric, "ort_gather")
    gbq = nibble.to_gather_block_quantized(table, "int4" if symmetric else "uint4")
    node, initializers = gbq.make_node("indices", "Y", name="embed")
    indices = np.array([8, 0, 5, 5], dtype=np.int64)
    model = make_model([node], initializers, [("indices", np.int64, [4])], [("Y", np.float32, [4, hidden])])
    (gathered,) = run(model, {"indices": indices})
    np.testing.assert_array_equal(gathered, nibble.dequantize(table)[indices])


def test_uint8_tables_need_whole_blocks_and_int4_needs_4_bits(rng):
    table = rng.standard_normal((4, 100)).astype(np.float32)
    with pytest.raises(ValueError, match="not a multiple of block_size 32"):
        nibble.to_gather_block_quantized(nibble.quantize(table, 4, 32))
    with pytest.raises(ValueError, match="4-bit codes only"):
        nibble.to_gather_block_quantized(nibble.quantize(table, 8, 32, True), "int4")
    with pytest.raises(ValueError, match="asymmetric"):
        nibble.to_gather_block_quantized(nibble.quantize(table, 4, 32, False), "int4")
    gbq = nibble.to_gather_block_quantized(nibble.quantize(table[:, :96].copy(), 4, 32))
    assert gbq.data.shape == (4, 48) and gbq.attributes["bits"] == 4
