"""nibble's tied embeddings against onnxruntime: one quantized table serving the token embedding
(GatherBlockQuantized) and lm_head (MatMulNBits), wired as the ONNX Runtime GenAI builder wires
them for shared_embeddings (builders/base.py make_embedding: GatherBlockQuantized(Reshape(
lm_head.MatMul.weight_Q{bits}G{block}, [vocab, hidden * bits / 8]), input_ids, *_scale[, *_zp])).

1. The initializers equal, byte for byte and by name, what onnxruntime's own quantizer writes for
   the lm_head MatMul: RTNWeightOnlyQuantConfig (the builder's int4_algo_config=rtn) for the
   ort_weight_only convention, KQuantWeightOnlyQuantConfig (k_quant) for nibble.kquant's "ort"
   variant, and the default MLAS quantizer for the ort convention. Nothing is excluded: with hidden
   a multiple of the block there are no pad codes.
2. One model holding ONE set of initializers runs in onnxruntime: its embeddings output equals
   nibble's dequantized rows exactly (the op computes (q - z) * s per element, as nibble does),
   and its logits match x @ W_hat^T within the fp32 dot-product bound (conftest).
3. Tables the builder's Reshape cannot serve (hidden not whole blocks) get the embedding's own
   data: uint8 without pad codes (scales and zero points still shared), or at 4 bits and odd hidden
   ONNX Runtime's INT4 / UINT4 layout, whose bytes equal its Gather quantizer's (ort_gather).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import (
    KQuantWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
    RTNWeightOnlyQuantConfig,
)

import nibble
from conftest import fp32_dot_tolerance, initializers_of, make_model, run
from test_gather_block_quantized import ort_quantized_gather

LM_HEAD = "/lm_head/MatMul"
WEIGHT = "lm_head.MatMul.weight"  # the builder's name of lm_head's float weight [hidden, vocab]


def ort_quantized_lm_head(table: np.ndarray, bits: int, block_size: int, symmetric: bool, algo: str):
    """(MatMulNBits node, initializers) of onnxruntime quantizing the builder's lm_head MatMul
    (weight [hidden, vocab] = table^T) with algo "rtn", "k_quant" or "default" (MLAS)."""
    vocab, hidden = table.shape
    model = make_model(
        [onnx.helper.make_node("MatMul", ["hidden_states", WEIGHT], ["logits"], name=LM_HEAD)],
        [numpy_helper.from_array(np.ascontiguousarray(table.T), WEIGHT)],
        [("hidden_states", np.float32, [1, hidden])],
        [("logits", np.float32, [1, vocab])],
    )
    if algo == "rtn":
        config = RTNWeightOnlyQuantConfig(customized_weight_config={LM_HEAD: {"bits": bits}})
    elif algo == "k_quant":
        scheme = {"bits": bits, "group_size": block_size, "scheme": "asym"}
        config = KQuantWeightOnlyQuantConfig(customized_weight_config={LM_HEAD: scheme})
    else:
        config = None
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    (node,) = [node for node in quantized.graph.node if node.op_type == "MatMulNBits"]
    return node, initializers_of(quantized)


def tied_model(tied: nibble.TiedEmbeddings, naming: str = "rtn", tokens: int = 5):
    vocab, hidden = tied.embedding.shape
    nodes, initializers = tied.make_nodes("input_ids", "hidden_states", "embeddings", "logits", naming=naming)
    model = make_model(
        nodes,
        initializers,
        [("input_ids", np.int64, [2, tokens]), ("hidden_states", np.float32, ["M", hidden])],
        [("embeddings", np.float32, [2, tokens, hidden]), ("logits", np.float32, ["M", vocab])],
    )
    return model, nodes, initializers


def check_runs_as_the_table(tied: nibble.TiedEmbeddings, table: nibble.QuantTensor, rng, naming: str = "rtn"):
    """Both outputs of the one-table model against nibble's dequantized table."""
    vocab, hidden = table.shape
    model, _, _ = tied_model(tied, naming)
    input_ids = np.array([[0, vocab - 1, 7, 7, 3], [vocab // 2, 1, 0, 2, vocab - 2]], dtype=np.int64)
    w_hat = nibble.dequantize(table)
    for m in (1, 4):
        x = rng.standard_normal((m, hidden)).astype(np.float32)
        embeddings, logits = run(model, {"input_ids": input_ids, "hidden_states": x})
        np.testing.assert_array_equal(embeddings, w_hat[input_ids])  # exact: one product per element
        assert np.all(np.abs(logits - nibble.gemm(x, table, reference=True)) <= fp32_dot_tolerance(x, w_hat)), f"M={m}"


def assert_same_initializer(ours: onnx.TensorProto, theirs: onnx.TensorProto):
    assert ours.name == theirs.name
    assert ours.data_type == theirs.data_type, ours.name
    assert list(ours.dims) == list(theirs.dims), ours.name
    assert numpy_helper.to_array(ours).tobytes() == numpy_helper.to_array(theirs).tobytes(), ours.name


QUANTIZER_CASES = [
    pytest.param(bits, symmetric, algo, id=f"b{bits}-{'sym' if symmetric else 'asym'}-{algo}")
    for bits in (4, 8)
    for symmetric in (False, True)
    for algo in ("rtn", "k_quant", "default")
    if not (algo == "k_quant" and symmetric)  # onnxruntime's k_quant is asymmetric only
]


@pytest.mark.parametrize("bits, symmetric, algo", QUANTIZER_CASES)
def test_one_table_equals_onnxruntimes_lm_head_quantizer_and_runs_as_both_ops(bits, symmetric, algo, rng):
    vocab, hidden, block_size = 100, 128, 32  # 4 blocks per row: whole blocks, an even count
    weights = rng.standard_normal((vocab, hidden)).astype(np.float32)
    if algo == "rtn":
        table = nibble.quantize(weights, bits, block_size, symmetric, "ort_weight_only")
    elif algo == "k_quant":
        table = nibble.kquant(weights, bits, block_size, variant="ort")
    else:
        table = nibble.quantize(weights, bits, block_size, symmetric, "ort")
    naming = "default" if algo == "default" else "rtn"
    tied = nibble.to_tied_embeddings(table, allow_copy=False)
    assert tied.data == "reshape" and tied.shares_codes and tied.reshape_shape == (vocab, hidden * bits // 8)
    assert np.shares_memory(tied.embedding.data, tied.lm_head.B)
    assert tied.embedding.scales is tied.lm_head.scales and tied.embedding.zero_points is tied.lm_head.zero_points

    node, theirs = ort_quantized_lm_head(weights, bits, block_size, symmetric, algo)
    model, nodes, initializers = tied_model(tied, naming)
    reshape, gather, lm_head = nodes
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == tied.lm_head.attributes
    assert list(lm_head.input) == list(node.input) and list(lm_head.output) == list(node.output)
    for name in node.input[1:]:
        assert_same_initializer(next(t for t in initializers if t.name == name), theirs[name])
    # The builder's wiring: the Gather reads lm_head's B through the Reshape, and lm_head's scales
    # and zero points themselves; one set of initializers (plus the Reshape's shape constant).
    assert reshape.input[0] == node.input[1] and gather.input[0] == reshape.output[0]
    assert list(gather.input[2:]) == list(node.input[2:])
    gather_attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute}
    assert gather_attributes == {"bits": bits, "block_size": block_size, "gather_axis": 0, "quantize_axis": 1}
    assert len(initializers) == len(node.input) - 1 + 1
    assert sum(len(t.raw_data) for t in initializers) == table.nbytes + 16  # 2 int64s of shape

    check_runs_as_the_table(tied, table, rng, naming)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("convention", nibble.CONVENTIONS)
def test_every_convention_and_width_runs_tied(bits, symmetric, convention, rng):
    table = nibble.quantize(rng.standard_normal((50, 96)).astype(np.float32), bits, 32, symmetric, convention)
    tied = nibble.to_tied_embeddings(table)
    assert tied.data == "reshape"
    try:
        check_runs_as_the_table(tied, table, rng)
    except onnxruntime.capi.onnxruntime_pybind11_state.Fail as error:  # pragma: no cover
        if bits == 2:
            pytest.skip(f"onnxruntime {onnxruntime.__version__} cannot run 2-bit MatMulNBits: {error}")
        raise


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_hidden_not_whole_blocks_copies_only_the_codes(bits, symmetric, rng):
    vocab, hidden, block_size = 30, 40, 32  # B rows hold 64 codes, the Gather's rows 40
    table = nibble.quantize(rng.standard_normal((vocab, hidden)).astype(np.float32), bits, block_size, symmetric, "ort")
    with pytest.raises(ValueError, match="not a multiple of block_size 32"):
        nibble.to_tied_embeddings(table, allow_copy=False)
    tied = nibble.to_tied_embeddings(table)
    assert tied.data == "unpadded_uint8" and not tied.shares_codes and tied.reshape_shape is None
    assert tied.embedding.data.shape == (vocab, hidden * bits // 8)
    assert not np.shares_memory(tied.embedding.data, table.qweight)
    assert np.shares_memory(tied.lm_head.B, table.qweight)  # lm_head is never a copy
    assert tied.embedding.scales is tied.lm_head.scales and tied.embedding.zero_points is tied.lm_head.zero_points
    _, initializers = tied.make_nodes()
    assert len(initializers) == (3 if symmetric else 4)  # B, scales, [zp], the embedding's data
    try:
        check_runs_as_the_table(tied, table, rng)
    except onnxruntime.capi.onnxruntime_pybind11_state.Fail as error:  # pragma: no cover
        if bits == 2:
            pytest.skip(f"onnxruntime {onnxruntime.__version__} cannot run 2-bit MatMulNBits: {error}")
        raise


# onnxruntime's numpy Gather quantizer divides by the zero scale of an all-zero block.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_odd_hidden_at_4_bits_is_onnxruntimes_int4_gather_with_shared_scales(symmetric, rng):
    vocab, hidden, block_size = 9, 45, 16
    weights = rng.standard_normal((vocab, hidden)).astype(np.float32)
    table = nibble.quantize(weights, 4, block_size, symmetric, "ort_gather")
    tied = nibble.to_tied_embeddings(table)
    assert tied.data == "int4" and tied.embedding.data_type == ("int4" if symmetric else "uint4")
    assert tied.embedding.scales is tied.lm_head.scales
    # The embedding's bytes are onnxruntime's own Gather quantizer's (the ort_gather convention).
    node, theirs = ort_quantized_gather(weights, block_size, symmetric)
    nodes, initializers = tied.make_nodes()
    (gather,) = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute} == {
        a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
    }
    ours = {t.name: t for t in initializers}
    for our_name, their_name in zip(
        [gather.input[0]] + list(gather.input[2:]), [node.input[0]] + list(node.input[2:])
    ):
        assert ours[our_name].data_type == theirs[their_name].data_type, our_name
        assert list(ours[our_name].dims) == list(theirs[their_name].dims), our_name
        their_bytes = theirs[their_name].raw_data or numpy_helper.to_array(theirs[their_name]).tobytes()
        assert bytes(ours[our_name].raw_data) == bytes(their_bytes), our_name
    check_runs_as_the_table(tied, table, rng)


def test_what_neither_op_can_hold_is_refused(rng):
    weights = rng.standard_normal((4, 45)).astype(np.float32)
    with pytest.raises(ValueError, match="not whole bytes per row"):
        nibble.to_tied_embeddings(nibble.quantize(weights, 2, 16))
    with pytest.raises(ValueError, match="power of two >= 16"):
        nibble.to_tied_embeddings(nibble.quantize(weights[:, :40].copy(), 4, 20))
    with pytest.raises(ValueError, match="expected \\[N, K\\]|expected \\[vocab, hidden\\]"):
        nibble.to_tied_embeddings(nibble.quantize(rng.standard_normal((2, 3, 64)).astype(np.float32), 4, 32))
    with pytest.raises(ValueError, match="naming"):
        nibble.to_tied_embeddings(nibble.quantize(weights[:, :32].copy(), 4, 32)).make_nodes(naming="olive")
