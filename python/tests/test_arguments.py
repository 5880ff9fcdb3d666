"""Argument checking at every public entry point (issue 17, item 9): what each refuses, with
which exception and message, and the valid edge cases that must keep working.

Each table row names an entry point and one of its parameters; every bad-argument class is
applied to every row. Integers take int and numpy integers only (not floats, not even 4.0; not
bools), flags take bools only, names take str only; arrays are refused, never copied, when
they cannot be viewed in place."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

import nibble

RNG = np.random.default_rng(20261117)
W = RNG.standard_normal((8, 64)).astype(np.float32)  # [N, K]
X = RNG.standard_normal((2, 64)).astype(np.float32)  # [M, K]
CAL = RNG.standard_normal((16, 64)).astype(np.float32)  # [tokens, K]
QT = nibble.quantize(W, 4, 32, convention="ort")
EXPERTS = nibble.quantize(RNG.standard_normal((3, 8, 64)).astype(np.float32), 4, 32)  # [E, N, K]
IDS = np.array([[0, 2], [1, 1]], np.int32)  # [T, top_k]
GATES = np.ones((2, 2), np.float32)
GPTQ = nibble.to_gptq(QT, "v2")
AWQ = nibble.to_awq(QT)
TABLE = nibble.quantize(RNG.standard_normal((16, 32)).astype(np.float32), 4, 32, convention="ort_gather")
F32, F64, U8, I32, I64 = (np.dtype(t) for t in (np.float32, np.float64, np.uint8, np.int32, np.int64))


def _tied():
    return nibble.to_tied_embeddings(TABLE)


# Each entry point with valid defaults for every argument; keyword overrides replace one.
ENTRIES = {
    "quantize": lambda **kw: nibble.quantize(**{"weights": W, "bits": 4, "group_size": 32, **kw}),
    "kquant": lambda **kw: nibble.kquant(**{"weights": W, "bits": 4, "group_size": 32, **kw}),
    "gptq": lambda **kw: nibble.gptq(**{"weights": W, "calibration": CAL, "bits": 4, "group_size": 32, **kw}),
    "autoclip": lambda **kw: nibble.autoclip(
        **{"weights": W, "calibration": CAL, "bits": 4, "group_size": 32, "steps": 2, **kw}
    ),
    "awq": lambda **kw: nibble.awq(**{"weights": W, "calibration": CAL, "bits": 4, "group_size": 32, "grid": 2, **kw}),
    "dequantize": lambda **kw: nibble.dequantize(**{"tensor": QT, **kw}),
    "dequantize_gptq": lambda **kw: nibble.dequantize_gptq(**{"tensor": QT, "g_idx": np.arange(64, dtype=np.int32) // 32, **kw}),
    "pack": lambda **kw: nibble.pack(**{"codes": np.ones((2, 5), np.uint8), "bits": 4, **kw}),
    "unpack": lambda **kw: nibble.unpack(**{"packed": np.ones((2, 3), np.uint8), "bits": 4, "k": 5, **kw}),
    "gemm": lambda **kw: nibble.gemm(**{"x": X, "tensor": QT, "bias": np.zeros(8, np.float32), **kw}),
    "moe_gemm": lambda **kw: nibble.moe_gemm(**{"x": X, "tensor": EXPERTS, "expert_ids": IDS, "gates": GATES, **kw}),
    "gemm_isa": lambda **kw: nibble.gemm_isa(**{"tensor": QT, **kw}),
    "pack_for_cpu": lambda **kw: nibble.pack_for_cpu(**{"tensor": QT, **kw}),
    "to_matmul_nbits": lambda **kw: nibble.to_matmul_nbits(**{"tensor": QT, **kw}),
    "to_gather_block_quantized": lambda **kw: nibble.to_gather_block_quantized(**{"tensor": TABLE, **kw}),
    "to_tied_embeddings": lambda **kw: nibble.to_tied_embeddings(**{"tensor": TABLE, **kw}),
    "to_gptq": lambda **kw: nibble.to_gptq(**{"tensor": QT, "zero_format": "v2", **kw}),
    "from_gptq": lambda **kw: nibble.from_gptq(**{"checkpoint": GPTQ, **kw}),
    "from_gptq_permuted": lambda **kw: nibble.from_gptq_permuted(**{"checkpoint": GPTQ, **kw}),
    "to_awq": lambda **kw: nibble.to_awq(**{"tensor": QT, **kw}),
    "from_awq": lambda **kw: nibble.from_awq(**{"checkpoint": AWQ, **kw}),
    "to_modelopt": lambda **kw: nibble.to_modelopt(**{"tensor": nibble.quantize(W, 4, 32, True), **kw}),
    "fp8_e4m3_encode": lambda **kw: nibble.fp8_e4m3_encode(**{"x": X, **kw}),
    "fp8_e4m3_decode": lambda **kw: nibble.fp8_e4m3_decode(**{"codes": np.arange(16, dtype=np.uint8), **kw}),
    "gguf_quantize": lambda **kw: nibble.gguf_quantize(**{"x": X, "qtype": "q4_0", **kw}),
    "gguf_dequantize": lambda **kw: nibble.gguf_dequantize(**{"blocks": np.zeros((2, 18), np.uint8), "qtype": "q4_0", **kw}),
    "fused_merge": lambda **kw: nibble.fused_merge(**{"parts": [QT, QT], **kw}),
    "fused_split": lambda **kw: nibble.fused_split(**{"fused": QT, "counts": [3, 5], **kw}),
    # Constructors, checkpoint fields and methods of the returned objects.
    "QuantConfig": lambda **kw: nibble.QuantConfig(**{"bits": 4, "group_size": 32, **kw}),
    "QuantTensor": lambda **kw: nibble.QuantTensor(
        **{"qweight": QT.qweight, "scales": QT.scales, "zeros": QT.zeros, "shape": QT.shape, "config": QT.config, **kw}
    ),
    "GptqCheckpoint": lambda **kw: nibble.from_gptq(dataclasses.replace(GPTQ, **kw)),
    "AwqCheckpoint": lambda **kw: nibble.from_awq(dataclasses.replace(AWQ, **kw)),
    "fused_merge(GptqCheckpoint)": lambda **kw: nibble.fused_merge([dataclasses.replace(GPTQ, **kw), GPTQ]),
    "MatMulNBits.make_node": lambda **kw: nibble.to_matmul_nbits(QT).make_node(**kw),
    "TiedEmbeddings.make_nodes": lambda **kw: _tied().make_nodes(**kw),
}


def test_every_public_function_is_in_a_table():
    """A new entry point must join these tables (or be a constant, class or build_info)."""
    tested = {name.split("(")[0].split(".")[0] for name in ENTRIES}
    not_functions = {"CONVENTIONS", "PER_CHANNEL", "KQUANT_VARIANTS", "GPTQ_ZERO_FORMATS", "SYMMETRIES", "GGUF_TYPES",
                     "ACTIVATIONS", "PackedTensor", "GgufType", "MatMulNBits", "GatherBlockQuantized", "TiedEmbeddings", "build_info"}
    assert set(nibble.__all__) - not_functions <= tested


def test_the_valid_defaults_of_every_entry_work():
    for name, entry in ENTRIES.items():
        entry()  # raises if a default above is wrong, which would make the tables below vacuous


# ---- the three defects of the issue -------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"bits": 4.5}, {"group_size": 32.7}], ids=["bits=4.5", "group_size=32.7"])
def test_defect_non_integer_bits_or_group_size_is_refused_not_truncated(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(TypeError, match=f"{name} must be an integer .*got float {value}"):
        nibble.quantize(W, **kwargs)


def test_defect_moe_gemm_refuses_a_rank_2_weight():
    """[N, K] used to be read as N one-row experts: y had one column."""
    with pytest.raises(ValueError, match=r"tensor has shape \(8, 64\).*expected rank 3.*\[E, N, K\]"):
        nibble.moe_gemm(X, QT, np.zeros((2, 1), np.int32))


@pytest.mark.parametrize("entry", ["dequantize", "gemm", "moe_gemm", "to_matmul_nbits", "to_awq", "pack_for_cpu"])
def test_defect_a_numpy_array_for_a_tensor_is_a_type_error(entry):
    with pytest.raises(TypeError, match=r"expected a nibble\.QuantTensor \(from nibble\.quantize.*got numpy\.ndarray"):
        ENTRIES[entry](tensor=np.zeros((8, 64), np.float32))


# ---- integers -----------------------------------------------------------------------------------

INTEGER_PARAMS = [
    ("quantize", "bits"), ("quantize", "group_size"), ("quantize", "num_threads"),
    ("kquant", "bits"), ("kquant", "group_size"), ("kquant", "num_threads"),
    ("gptq", "bits"), ("gptq", "group_size"), ("gptq", "block_size"), ("gptq", "num_threads"),
    ("autoclip", "bits"), ("autoclip", "group_size"), ("autoclip", "steps"), ("autoclip", "num_threads"),
    ("awq", "bits"), ("awq", "group_size"), ("awq", "grid"), ("awq", "num_threads"),
    ("gemm", "num_threads"), ("moe_gemm", "num_threads"), ("pack_for_cpu", "num_threads"),
    ("pack", "bits"), ("unpack", "bits"), ("unpack", "k"),
    ("QuantConfig", "bits"), ("QuantConfig", "group_size"),
    ("GptqCheckpoint", "bits"), ("GptqCheckpoint", "group_size"), ("AwqCheckpoint", "group_size"),
    ("gguf_quantize", "qtype"), ("gguf_dequantize", "qtype"),
    ("MatMulNBits.make_node", "accuracy_level"), ("TiedEmbeddings.make_nodes", "accuracy_level"),
]
OPTIONAL_INTEGERS = {"accuracy_level"}
NOT_INTEGERS = [4.5, 32.7, 4.0, np.float64(4.0), True, np.bool_(False), "4", None, [4]]


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize("entry, param", INTEGER_PARAMS, ids="-".join)
def test_integer_parameters_refuse_other_types(entry, param, value):
    if value is None and param in OPTIONAL_INTEGERS:
        pytest.skip("None is this parameter's default")
    if isinstance(value, str) and param == "qtype":
        pytest.skip("a str qtype is a type name (tested with the names)")
    with pytest.raises(TypeError, match=f"{param} must be an integer"):
        ENTRIES[entry](**{param: value})


INTEGER_VALUES = [  # (entry, param, bad value, message fragment)
    *[(entry, "bits", bits, f"bits = {bits} is not supported") for entry in ("quantize", "kquant", "gptq", "autoclip",
                                                                            "awq", "pack", "unpack", "QuantConfig",
                                                                            "GptqCheckpoint") for bits in (3, 0, 2**40)],
    *[(entry, "group_size", size, f"group_size = {size} is invalid") for entry in ("quantize", "kquant", "gptq",
                                                                                   "autoclip", "awq", "QuantConfig")
      for size in (0, -2)],
    *[(entry, "group_size", 2**70, "group_size = .* is too large") for entry in ("quantize", "QuantConfig")],
    *[(entry, "num_threads", threads, f"num_threads = {threads} is ") for entry in ("quantize", "kquant", "gptq",
                                                                                    "autoclip", "awq", "pack_for_cpu")
      for threads in (-1, 2**40)],
    ("gptq", "block_size", 0, "block_size = 0 is invalid"),
    ("autoclip", "steps", 0, "steps = 0 is invalid"),
    ("autoclip", "steps", 2**31, "steps = .* is too large"),
    ("awq", "grid", -3, "grid = -3 is invalid"),
    ("unpack", "k", 0, "k = 0 is invalid"),
    ("unpack", "k", -5, "k = -5 is invalid"),
    ("unpack", "k", 6, "need"),  # 6 codes do not fit in 3 bytes... of 4 bits: they do not, [2, 3] holds 6
    ("gguf_quantize", "qtype", 13, "not implemented"),
    ("gguf_dequantize", "qtype", -1, "not implemented"),
    ("MatMulNBits.make_node", "accuracy_level", 5, "accuracy_level = 5 is not supported"),
    ("TiedEmbeddings.make_nodes", "accuracy_level", -1, "accuracy_level = -1 is not supported"),
]


@pytest.mark.parametrize("entry, param, value, message", INTEGER_VALUES, ids=lambda v: str(v)[:20])
def test_integer_parameters_refuse_bad_values(entry, param, value, message):
    if (entry, param, value) == ("unpack", "k", 6):
        value = 7  # [2, 3] packed bytes hold 6 four-bit codes: 7 do not fit
    with pytest.raises(ValueError, match=message):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize("entry, param", INTEGER_PARAMS, ids="-".join)
def test_integer_parameters_take_numpy_integers(entry, param):
    valid = {"bits": 4, "group_size": 32, "num_threads": 1, "block_size": 16, "steps": 2, "grid": 2, "k": 5,
             "qtype": 2, "accuracy_level": 4}[param]
    for kind in (np.int64, np.int32, np.uint8):
        ENTRIES[entry](**{param: kind(valid)})


def test_numpy_integers_give_what_ints_give():
    with_ints = nibble.quantize(W, 4, 32, num_threads=1)
    with_numpy = nibble.quantize(W, np.int64(4), np.int32(32), num_threads=np.uint8(1))
    assert with_numpy.config == with_ints.config and type(with_numpy.config.bits) is int
    assert with_numpy.qweight.tobytes() == with_ints.qweight.tobytes()


def test_gguf_qtype_takes_gguf_py_enum_members():
    gguf = pytest.importorskip("gguf")
    np.testing.assert_array_equal(
        nibble.gguf_quantize(X, gguf.GGMLQuantizationType.Q4_0), nibble.gguf_quantize(X, "q4_0")
    )


# ---- flags and reals ----------------------------------------------------------------------------

FLAG_PARAMS = [
    ("quantize", "symmetric"), ("kquant", "symmetric"),
    ("gptq", "symmetric"), ("gptq", "act_order"), ("gptq", "static_groups"), ("gptq", "fp64"),
    ("autoclip", "symmetric"), ("autoclip", "return_ratios"), ("awq", "symmetric"),
    ("gemm", "reference"), ("moe_gemm", "reference"),
    ("fp8_e4m3_encode", "saturate"), ("to_tied_embeddings", "allow_copy"), ("QuantConfig", "symmetric"),
    ("fused_merge(GptqCheckpoint)", "sym"), ("fused_merge(GptqCheckpoint)", "desc_act"),
]


@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, 1.0], ids=repr)
@pytest.mark.parametrize("entry, param", FLAG_PARAMS, ids="-".join)
def test_flags_take_bools_only(entry, param, value):
    with pytest.raises(TypeError, match=f"{param} must be a bool"):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize("entry, param", FLAG_PARAMS, ids="-".join)
def test_flags_take_numpy_bools(entry, param):
    ENTRIES[entry](**{param: np.bool_(False)})


REAL_PARAMS = [("gptq", "damp_percent", 0.01), ("autoclip", "min_ratio", 0.5)]


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5]], ids=repr)
@pytest.mark.parametrize("entry, param, valid", REAL_PARAMS, ids=lambda v: str(v))
def test_real_parameters_refuse_other_types(entry, param, valid, value):
    with pytest.raises(TypeError, match=f"{param} must be a real number"):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize(
    "entry, param, value, message",
    [("gptq", "damp_percent", -1.0, "damp_percent = -1"), ("gptq", "damp_percent", float("nan"), "damp_percent = nan"),
     ("autoclip", "min_ratio", 0.0, "min_ratio = 0"), ("autoclip", "min_ratio", 1.5, "min_ratio = 1.5")],
)
def test_real_parameters_refuse_bad_values(entry, param, value, message):
    with pytest.raises(ValueError, match=message):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize("entry, param, valid", REAL_PARAMS, ids=lambda v: str(v))
def test_real_parameters_take_ints_and_numpy_floats(entry, param, valid):
    ENTRIES[entry](**{param: np.float32(valid)})
    ENTRIES[entry](**{param: 1})


# ---- names --------------------------------------------------------------------------------------

CHOICE_PARAMS = [  # (entry, param, one allowed value the message lists)
    ("quantize", "convention", "ort_gather"), ("quantize", "non_finite", "zero"),
    ("kquant", "variant", "llama_cpp"), ("kquant", "convention", "olive"), ("kquant", "non_finite", "error"),
    ("gptq", "convention", "ort"),
    ("autoclip", "solver", "k_quant"), ("autoclip", "convention", "olive"), ("autoclip", "kquant_variant", "llama_cpp"),
    ("autoclip", "clip_range", "min_max"),
    ("awq", "solver", "rtn"), ("awq", "convention", "ort"), ("awq", "kquant_variant", "ort"),
    ("to_gather_block_quantized", "data_type", "uint4"), ("to_gptq", "zero_format", "v1"),
    ("from_gptq", "symmetry", "detect"), ("from_gptq", "convention", "olive"),
    ("from_gptq_permuted", "symmetry", "asymmetric"), ("from_gptq_permuted", "convention", "ort"),
    ("from_awq", "symmetry", "symmetric"), ("from_awq", "convention", "ort_weight_only"),
    ("GptqCheckpoint", "zero_format", "v2"), ("QuantConfig", "convention", "ort"),
    ("TiedEmbeddings.make_nodes", "naming", "default"),
    ("gemm", "activations", "int8"), ("moe_gemm", "activations", "fp32"), ("gemm_isa", "activations", "int8"),
]


@pytest.mark.parametrize("entry, param, allowed", CHOICE_PARAMS, ids=lambda v: str(v))
def test_unknown_names_are_value_errors_listing_the_allowed_ones(entry, param, allowed):
    with pytest.raises(ValueError, match=f"{param} 'bogus' is unknown \\(expected one of .*'{allowed}'"):
        ENTRIES[entry](**{param: "bogus"})


@pytest.mark.parametrize("value", [None, 3, b"ort", ["ort"]], ids=repr)
@pytest.mark.parametrize("entry, param, allowed", CHOICE_PARAMS, ids=lambda v: str(v))
def test_names_must_be_strings(entry, param, allowed, value):
    with pytest.raises(TypeError, match=f"{param} must be a str \\(one of .*'{allowed}'.*got "):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize("entry", ["gguf_quantize", "gguf_dequantize"])
def test_unknown_ggml_types_are_value_errors_listing_the_implemented_ones(entry):
    with pytest.raises(ValueError, match=r"ggml type 'q5_K' is not implemented \(expected one of q4_0 \(2\)"):
        ENTRIES[entry](qtype="q5_K")


# ---- tensors and checkpoints --------------------------------------------------------------------

TENSOR_PARAMS = [
    ("dequantize", "tensor"), ("dequantize_gptq", "tensor"), ("gemm", "tensor"), ("moe_gemm", "tensor"),
    ("to_matmul_nbits", "tensor"), ("to_gather_block_quantized", "tensor"), ("to_tied_embeddings", "tensor"),
    ("to_gptq", "tensor"), ("to_awq", "tensor"), ("to_modelopt", "tensor"), ("gemm_isa", "tensor"),
    ("fused_split", "fused"),
]
NOT_TENSORS = {
    "ndarray": (np.zeros((8, 64), np.float32), "numpy.ndarray"),
    "dict": ({"qweight": QT.qweight}, "dict"),
    "None": (None, "None"),
    "int": (3, "int"),
    "config": (QT.config, "nibble.QuantConfig"),
    "MatMulNBits": (nibble.to_matmul_nbits(QT), "nibble.MatMulNBits"),
}


@pytest.mark.parametrize("bad", NOT_TENSORS)
@pytest.mark.parametrize("entry, param", TENSOR_PARAMS, ids="-".join)
def test_tensor_parameters_refuse_other_objects(entry, param, bad):
    value, shown = NOT_TENSORS[bad]
    with pytest.raises(TypeError, match=f"{param}: expected a nibble\\.QuantTensor.*, got {shown}$"):
        ENTRIES[entry](**{param: value})


@pytest.mark.parametrize("entry", [e for e, _ in TENSOR_PARAMS if e != "fused_split"])
def test_a_checkpoint_is_not_a_tensor(entry):
    with pytest.raises(TypeError, match="expected a nibble.QuantTensor.*got nibble.GptqCheckpoint"):
        ENTRIES[entry](**{dict(TENSOR_PARAMS)[entry]: GPTQ})


CHECKPOINT_PARAMS = [("from_gptq", "GptqCheckpoint"), ("from_gptq_permuted", "GptqCheckpoint"),
                     ("from_awq", "AwqCheckpoint")]


@pytest.mark.parametrize("value, shown", [(np.zeros((8, 8), np.int32), "numpy.ndarray"), ({}, "dict"), (None, "None"),
                                          (QT, "nibble.QuantTensor")], ids=["ndarray", "dict", "None", "tensor"])
@pytest.mark.parametrize("entry, kind", CHECKPOINT_PARAMS, ids="-".join)
def test_checkpoint_parameters_refuse_other_objects(entry, kind, value, shown):
    with pytest.raises(TypeError, match=f"checkpoint: expected a nibble\\.{kind} .*got {shown}$"):
        ENTRIES[entry](checkpoint=value)


def test_a_checkpoint_of_the_other_format_is_refused():
    with pytest.raises(TypeError, match="expected a nibble.GptqCheckpoint .*got nibble.AwqCheckpoint"):
        nibble.from_gptq(AWQ)
    with pytest.raises(TypeError, match="expected a nibble.AwqCheckpoint .*got nibble.GptqCheckpoint"):
        nibble.from_awq(GPTQ)


@pytest.mark.parametrize("parts, message", [
    (QT, "parts must be a list or tuple .*got nibble.QuantTensor"),
    (None, "parts must be a list or tuple .*got None"),
    ("ab", "parts must be a list or tuple .*got str"),
    ([QT.qweight], "part 0: expected a nibble.QuantTensor, GptqCheckpoint or AwqCheckpoint, got numpy.ndarray"),
    ([QT, None], "part 1 is a None"),
])
def test_fused_merge_refuses_what_is_not_a_list_of_parts(parts, message):
    with pytest.raises(TypeError, match=message):
        nibble.fused_merge(parts)


@pytest.mark.parametrize("counts, error, message", [
    (8, TypeError, "counts must be a sequence of integers, got int"),
    ("35", TypeError, "counts must be a sequence of integers, got str"),
    ([3.5, 4.5], TypeError, r"counts\[0\] must be an integer"),
    ([True, 7], TypeError, r"counts\[0\] must be an integer, got bool"),
    ([0, 8], ValueError, r"counts\[0\] = 0 is invalid \(expected >= 1\)"),
    ([3, 4], ValueError, "sum to 7 but the fused tensor has 8 rows"),
])
def test_fused_split_counts(counts, error, message):
    with pytest.raises(error, match=message):
        nibble.fused_split(QT, counts)


def test_fused_split_takes_numpy_counts():
    parts = nibble.fused_split(QT, np.array([3, 5]))
    assert [part.shape for part in parts] == [(3, 64), (5, 64)]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"config": {"bits": 4}}, TypeError, "config: expected a nibble.QuantConfig, got dict"),
    ({"config": None}, TypeError, "config: expected a nibble.QuantConfig, got None"),
    ({"shape": (8, 64.5)}, TypeError, r"shape\[1\] must be an integer"),
    ({"shape": (8, 0)}, ValueError, r"shape\[1\] = 0 is invalid"),
    ({"shape": 512}, TypeError, "shape must be a sequence of integers"),
    ({"zeros": QT.zeros.tolist()}, TypeError, "zeros must be a numpy.ndarray, got list"),
])
def test_quant_tensor_constructor(kwargs, error, message):
    with pytest.raises(error, match=message):
        ENTRIES["QuantTensor"](**kwargs)


@pytest.mark.parametrize("index, error", [(True, TypeError), (1.0, TypeError), ("0", TypeError), (None, TypeError),
                                          (3, IndexError), (-4, IndexError)], ids=repr)
def test_quant_tensor_index(index, error):
    with pytest.raises(error, match="index"):
        EXPERTS[index]


def test_quant_tensor_index_takes_numpy_integers():
    assert EXPERTS[np.int64(2)].qweight.tobytes() == EXPERTS[-1].qweight.tobytes()


# ---- arrays -------------------------------------------------------------------------------------


def _noncontiguous(array: np.ndarray) -> np.ndarray:
    """The same values and shape, every other element of a buffer twice as long."""
    return np.stack([array, array], axis=-1)[..., 0]


def _misaligned(array: np.ndarray) -> np.ndarray:
    """The same values, C-contiguous, one byte off the element alignment."""
    buffer = np.zeros(array.nbytes + 1, np.uint8)
    buffer[1:] = np.frombuffer(array.tobytes(), np.uint8)
    return np.frombuffer(buffer.data, dtype=array.dtype, count=array.size, offset=1).reshape(array.shape)


ARRAY_PARAMS = [  # (entry, param, a valid array, a wrong dtype, elementwise: empty arrays allowed)
    ("quantize", "weights", W, F64, False),
    ("kquant", "weights", W, I32, False),
    ("kquant", "importance", np.ones(64, np.float32), F64, False),
    ("gptq", "weights", W, F64, False),
    ("gptq", "calibration", CAL, F64, False),
    ("autoclip", "weights", W, np.dtype(np.float16), False),
    ("autoclip", "calibration", CAL, F64, False),
    ("awq", "weights", W, F64, False),
    ("awq", "calibration", CAL, np.dtype(ml_dtypes.bfloat16), False),
    ("dequantize_gptq", "g_idx", np.zeros(64, np.int32), I64, False),
    ("pack", "codes", np.ones((2, 5), np.uint8), np.dtype(np.int8), False),
    ("unpack", "packed", np.ones((2, 3), np.uint8), np.dtype(np.uint16), False),
    ("gemm", "x", X, F64, False),
    ("gemm", "bias", np.zeros(8, np.float32), F64, False),
    ("moe_gemm", "x", X, F64, False),
    ("moe_gemm", "expert_ids", IDS, I64, False),
    ("moe_gemm", "gates", GATES, F64, False),
    ("to_gptq", "g_idx", np.zeros(64, np.int32), np.dtype(np.uint32), False),
    ("fp8_e4m3_encode", "x", X, F64, True),
    ("fp8_e4m3_decode", "codes", np.arange(16, dtype=np.uint8), np.dtype(np.int8), True),
    ("gguf_quantize", "x", X, F64, False),
    ("gguf_dequantize", "blocks", np.zeros((2, 18), np.uint8), np.dtype(np.int8), False),
    ("QuantTensor", "qweight", QT.qweight, np.dtype(np.int8), False),
    ("QuantTensor", "scales", QT.scales, F64, False),
    ("QuantTensor", "zeros", QT.zeros, np.dtype(np.int8), False),
    ("GptqCheckpoint", "qweight", GPTQ.qweight, np.dtype(np.uint32), False),
    ("GptqCheckpoint", "qzeros", GPTQ.qzeros, I64, False),
    ("GptqCheckpoint", "scales", GPTQ.scales, F64, False),
    ("GptqCheckpoint", "g_idx", GPTQ.g_idx, I64, False),
    ("AwqCheckpoint", "qweight", AWQ.qweight, np.dtype(np.uint32), False),
    ("AwqCheckpoint", "qzeros", AWQ.qzeros, I64, False),
    ("AwqCheckpoint", "scales", AWQ.scales, F64, False),
]
ARRAY_IDS = [f"{entry}-{param}" for entry, param, *_ in ARRAY_PARAMS]


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise", ARRAY_PARAMS, ids=ARRAY_IDS)
def test_arrays_must_be_numpy_arrays(entry, param, valid, wrong_dtype, elementwise):
    with pytest.raises(TypeError, match=f"{param}.* must be a numpy.ndarray, got list"):
        ENTRIES[entry](**{param: valid.astype(np.float64).tolist() if valid.dtype == F32 else valid.tolist()})


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise", ARRAY_PARAMS, ids=ARRAY_IDS)
def test_arrays_of_a_wrong_dtype_are_type_errors(entry, param, valid, wrong_dtype, elementwise):
    with pytest.raises(TypeError, match=f"{param} has dtype {wrong_dtype} \\(expected "):
        ENTRIES[entry](**{param: valid.astype(wrong_dtype)})


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise", ARRAY_PARAMS, ids=ARRAY_IDS)
def test_non_contiguous_arrays_are_refused_not_copied(entry, param, valid, wrong_dtype, elementwise):
    with pytest.raises(ValueError, match=f"{param} is not C-contiguous .*np.ascontiguousarray"):
        ENTRIES[entry](**{param: _noncontiguous(valid)})


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise",
                         [row for row in ARRAY_PARAMS if row[2].dtype.itemsize > 1],
                         ids=[i for i, row in zip(ARRAY_IDS, ARRAY_PARAMS) if row[2].dtype.itemsize > 1])
def test_misaligned_arrays_are_refused(entry, param, valid, wrong_dtype, elementwise):
    misaligned = _misaligned(valid)
    assert not misaligned.flags.aligned and misaligned.flags.c_contiguous
    np.testing.assert_array_equal(misaligned, valid)
    with pytest.raises(ValueError, match=f"{param} is not aligned .*{param}.copy\\(\\)"):
        ENTRIES[entry](**{param: misaligned})


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise", ARRAY_PARAMS, ids=ARRAY_IDS)
def test_empty_arrays(entry, param, valid, wrong_dtype, elementwise):
    empty = np.zeros((0,) + valid.shape[1:], valid.dtype)
    if elementwise:
        assert ENTRIES[entry](**{param: empty}).shape == empty.shape
        return
    with pytest.raises(ValueError, match=f"{param} has shape \\(0,.*\\): empty"):
        ENTRIES[entry](**{param: empty})


@pytest.mark.parametrize("entry, param, valid, wrong_dtype, elementwise", ARRAY_PARAMS, ids=ARRAY_IDS)
def test_read_only_arrays_are_taken(entry, param, valid, wrong_dtype, elementwise):
    read_only = valid.copy()
    read_only.flags.writeable = False
    ENTRIES[entry](**{param: read_only})


@pytest.mark.parametrize("entry", ["gptq", "autoclip", "awq"])
@pytest.mark.parametrize("calibration, message", [
    (None, "calibration must be a float32 numpy.ndarray or a list or tuple of them, got None"),
    (CAL.tolist(), r"calibration\[0\] must be a numpy.ndarray, got list"),
    ([CAL, CAL.astype(np.float64)], r"calibration\[1\] has dtype float64"),
])
def test_calibration_lists(entry, calibration, message):
    with pytest.raises(TypeError, match=message):
        ENTRIES[entry](calibration=calibration)


@pytest.mark.parametrize("entry", ["gptq", "autoclip", "awq"])
def test_calibration_takes_tuples(entry):
    ENTRIES[entry](calibration=(CAL,))


# ---- ranks and shapes against each other --------------------------------------------------------

SHAPE_ERRORS = [  # (entry, overrides, message fragment): each a ValueError
    ("moe_gemm", {"tensor": QT, "expert_ids": np.zeros((2, 1), np.int32), "gates": None}, r"expected rank 3"),
    ("moe_gemm", {"tensor": nibble.quantize(W[0].copy(), 4, 32), "expert_ids": np.zeros((2, 1), np.int32),
                  "gates": None}, r"tensor has shape \(64,\).*expected rank 3"),
    ("moe_gemm", {"tensor": nibble.quantize(np.ones((2, 2, 2, 64), np.float32), 4, 32)},
     r"tensor has shape \(2, 2, 2, 64\).*expected rank 3"),
    ("moe_gemm", {"x": X[0].copy()}, r"x has shape \(64,\), rank 1 \(expected rank 2 \[T, K\]\)"),
    ("moe_gemm", {"x": X[None].copy()}, r"x has shape \(1, 2, 64\), rank 3 \(expected rank 2"),
    ("moe_gemm", {"expert_ids": IDS[:, 0].copy(), "gates": None}, r"expert_ids has shape \(2,\), rank 1"),
    ("moe_gemm", {"gates": GATES[:, 0].copy()}, r"gates has shape \(2,\), rank 1"),
    ("moe_gemm", {"x": X[:, :63].copy()}, "K = 63"),
    ("moe_gemm", {"expert_ids": np.zeros((3, 2), np.int32), "gates": None},
     "expected x \\[T, K\\] and expert_ids \\[T, top_k\\]"),
    ("moe_gemm", {"gates": np.ones((2, 1), np.float32)}, "gates have shape"),
    ("moe_gemm", {"expert_ids": np.array([[0, 3], [1, 1]], np.int32)}, r"expert_ids\[0, 1\] = 3 \(expected 0 <= id < E = 3\)"),
    ("moe_gemm", {"expert_ids": np.array([[0, 1], [-1, 1]], np.int32)}, r"expert_ids\[1, 0\] = -1"),
    ("gemm", {"x": X[:, :63].copy()}, "K = 63"),
    ("gemm", {"bias": np.zeros(7, np.float32)}, r"bias has shape \[7\] \(expected \[N\] = \[8\]\)"),
    ("gemm", {"bias": np.zeros((1, 8), np.float32)}, r"bias has shape"),
    ("gptq", {"calibration": CAL[:, :63].copy()}, "expected K = 64"),
    ("autoclip", {"calibration": CAL[:, :63].copy()}, "not the weights' K = 64"),
    ("awq", {"calibration": CAL[:, :63].copy()}, "not the weights' K = 64"),
    ("kquant", {"importance": np.ones(63, np.float32)}, "importance has 63 values"),
    ("to_gptq", {"g_idx": np.zeros(63, np.int32)}, "g_idx holds 63 entries"),
    ("to_gptq", {"g_idx": np.zeros((2, 32), np.int32)}, r"g_idx has shape \(2, 32\), rank 2 \(expected rank 1 \[K\]\)"),
    ("dequantize_gptq", {"g_idx": np.zeros(63, np.int32)}, r"g_idx has shape \(63,\) \(expected \(64,\)"),
    ("dequantize_gptq", {"g_idx": np.full(64, 2, np.int32)}, r"g_idx\[0\] = 2 \(expected 0 <= group < n_groups = 2\)"),
    ("dequantize_gptq", {"g_idx": np.full(64, -1, np.int32)}, r"g_idx\[0\] = -1"),
    ("unpack", {"packed": np.array(3, np.uint8)}, r"packed has shape \(\), rank 0"),
    ("gguf_quantize", {"x": X[:, :31].copy()}, "not a positive multiple of the q4_0 block size 32"),
    ("gguf_dequantize", {"blocks": np.zeros((2, 17), np.uint8)}, "whole q4_0 blocks"),
    # K = 63 has the same layout as 64 (two groups of 32, the last code a pad): valid. 65 needs three.
    ("QuantTensor", {"shape": (8, 65)}, r"qweight has 256 elements \(expected 384 for this shape and config\)"),
    ("GptqCheckpoint", {"qzeros": GPTQ.qzeros[:1].copy()}, "qzeros has shape"),
    ("AwqCheckpoint", {"scales": AWQ.scales[:, :4].copy()}, "scales has shape"),
]


@pytest.mark.parametrize("entry, overrides, message", SHAPE_ERRORS, ids=lambda v: str(v)[:30])
def test_ranks_and_shapes_that_do_not_fit(entry, overrides, message):
    with pytest.raises(ValueError, match=message):
        ENTRIES[entry](**overrides)


def test_dequantize_gptq_takes_one_g_idx_per_expert():
    g_idx = np.stack([np.arange(64, dtype=np.int32) // 32, 1 - np.arange(64, dtype=np.int32) // 32, np.zeros(64, np.int32)])
    restored = nibble.dequantize_gptq(EXPERTS, g_idx)
    assert restored.shape == (3, 8, 64)
    np.testing.assert_array_equal(restored[0], EXPERTS[0].dequantize())
    with pytest.raises(ValueError, match=r"g_idx has shape \(2, 64\) \(expected \(64,\) or \(3, 64\)"):
        nibble.dequantize_gptq(EXPERTS, g_idx[:2].copy())


# ---- valid edge cases ---------------------------------------------------------------------------


def test_per_channel_group_size():
    qt = nibble.quantize(W, np.int64(4), nibble.PER_CHANNEL, convention="ort")
    assert qt.group_size == 64 and qt.n_groups == 1 and qt.config.group_size == -1
    np.testing.assert_allclose(nibble.gemm(X, qt), X @ nibble.dequantize(qt).T, rtol=1e-5, atol=1e-5)
    assert nibble.kquant(W, 4, np.int32(-1)).n_groups == 1


@pytest.mark.parametrize("n, k", [(1, 64), (8, 1), (1, 1)], ids=lambda v: str(v))
def test_one_output_or_one_input(n, k):
    w = RNG.standard_normal((n, k)).astype(np.float32)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    for group_size in (32, nibble.PER_CHANNEL):
        qt = nibble.quantize(w, 8, group_size, symmetric=True)
        w_hat = nibble.dequantize(qt)
        assert w_hat.shape == (n, k)
        np.testing.assert_allclose(nibble.gemm(x, qt), x @ w_hat.T, rtol=1e-5, atol=1e-5)
    experts = nibble.quantize(np.stack([w, -w]), 8, 32, symmetric=True)
    ids = np.array([[1], [0], [1]], np.int32)
    expected = np.stack([x[t] @ nibble.dequantize(experts[int(ids[t, 0])]).T for t in range(3)])
    np.testing.assert_allclose(nibble.moe_gemm(x, experts, ids), expected, rtol=1e-5, atol=1e-5)


def test_a_single_token_gemv_and_rank_3_activations():
    assert nibble.gemm(X[0].copy(), QT).shape == (8,)
    assert nibble.gemm(np.stack([X, X]), QT).shape == (2, 2, 8)
