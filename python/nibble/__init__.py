"""nibble: low-bit weight quantization, bit-exact with Olive and ONNX Runtime.

A weight tensor of any rank ``[..., N, K]`` is quantized along its last dimension ``K`` in
groups of ``group_size`` (or one group per row), at 2, 4 or 8 bits, into nibble's canonical
layout, which *is* ONNX Runtime's MatMulNBits / GatherBlockQuantized layout::

    import numpy as np, nibble

    w = np.random.randn(768, 3072).astype(np.float32)            # [N, K]; [E, N, K] works too
    qt = nibble.quantize(w, bits=4, group_size=32, convention="ort")
    w_hat = nibble.dequantize(qt)                                # float32 [N, K]
    y = nibble.gemm(x, qt)                                       # x [M, K] -> [M, N], SIMD kernels
    node = nibble.to_matmul_nbits(qt)                            # B, scales, zero_points: views

Conventions name the RTN variant of each tool (``CONVENTIONS``): ``"olive"`` (default, Olive's
WeightQuantizer), ``"ort"`` (ONNX Runtime's MatMulNBits quantizer), ``"ort_gather"`` (its
GatherBlockQuantized quantizer) and ``"ort_weight_only"`` (the numpy RTN the ONNX Runtime GenAI
builder runs). Each is bit-exact with its tool; see docs/formats.md.

Converters to and from the other layouts, each a binding of the C++ one: :func:`to_tied_embeddings`
(one table as ONNX Runtime GenAI's tied embedding + lm_head), :func:`to_gptq` / :func:`from_gptq` /
:func:`from_gptq_permuted` (GPTQ v1 / v2 int32 checkpoints), :func:`to_awq` / :func:`from_awq`
(AWQ GEMM), :func:`gguf_quantize` / :func:`gguf_dequantize` (ggml Q4_0, Q4_1, Q8_0, Q4_K, Q6_K
blocks, as gguf-py's ``gguf.quants`` lays them out) and :func:`fused_merge` / :func:`fused_split`
(qkv_proj / gate_up_proj).

Arrays go in and out without copies where the layout allows: results of :func:`quantize` own
C++ buffers, and :func:`to_matmul_nbits` / :func:`to_gather_block_quantized` (uint8) return views
of a tensor's arrays. fp16 is ``numpy.float16``, bf16 is ``ml_dtypes.bfloat16``.

Every argument is checked before anything runs, by the same rules everywhere (``nibble._checks``):
integers are ``int`` or numpy integers (a float such as ``4.5`` -- or even ``4.0`` -- or a bool is a
``TypeError``, never truncated), flags are bools, names are strings among the listed ones, arrays
are numpy arrays of the listed dtypes, C-contiguous, aligned and non-empty (refused, never
copied), tensors are :class:`QuantTensor` s. A wrong type is a ``TypeError``, a wrong value a
``ValueError``; errors from the C++ core arrive as ``ValueError`` with the C++ message.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

from . import _checks, _nibble

__version__: str = _nibble.__version__

#: The quantization conventions (see the module docstring).
CONVENTIONS: Tuple[str, ...] = tuple(_nibble.build_info()["conventions"])
#: ``group_size`` meaning one group per row (G = K).
PER_CHANNEL: int = -1

_BF16 = np.dtype(ml_dtypes.bfloat16)
_FLOAT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", _BF16: "bfloat16"}
_NUMPY_DTYPE = {name: dtype for dtype, name in _FLOAT_DTYPES.items()}

DTypeLike = Union[str, np.dtype, type, None]

__all__ = [
    "CONVENTIONS",
    "PER_CHANNEL",
    "QuantConfig",
    "QuantTensor",
    "MatMulNBits",
    "GatherBlockQuantized",
    "quantize",
    "kquant",
    "gptq",
    "autoclip",
    "awq",
    "dequantize_gptq",
    "KQUANT_VARIANTS",
    "dequantize",
    "pack",
    "unpack",
    "gemm",
    "moe_gemm",
    "gemm_isa",
    "ACTIVATIONS",
    "PackedTensor",
    "pack_for_cpu",
    "to_matmul_nbits",
    "to_gather_block_quantized",
    "TiedEmbeddings",
    "to_tied_embeddings",
    "GPTQ_ZERO_FORMATS",
    "SYMMETRIES",
    "GptqCheckpoint",
    "AwqCheckpoint",
    "to_gptq",
    "from_gptq",
    "from_gptq_permuted",
    "to_awq",
    "from_awq",
    "GgufType",
    "GGUF_TYPES",
    "gguf_quantize",
    "gguf_dequantize",
    "fused_merge",
    "fused_split",
    "to_modelopt",
    "fp8_e4m3_encode",
    "fp8_e4m3_decode",
    "build_info",
]


# ---- argument checks ----------------------------------------------------------------------------


_check_array = _checks.array

#: What each integer parameter takes (see _checks.integer); one place, so every entry point
#: says the same.
_BITS = dict(choices=(2, 4, 8))
_THREADS = dict(minimum=0, maximum=_checks.INT32_MAX, expected=">= 0; 0: OpenMP's default")
_POSITIVE_INT32 = dict(minimum=1, maximum=_checks.INT32_MAX)


def _group_size(value: Any, name: str = "group_size") -> int:
    """A group size: > 0, or PER_CHANNEL (-1)."""
    size = _checks.integer(value, name, minimum=-1, expected="> 0, or PER_CHANNEL (-1)")
    if size == 0:
        raise ValueError(f"{name} = 0 is invalid (expected > 0, or PER_CHANNEL (-1))")
    return size


_TENSOR = "a nibble.QuantTensor (from nibble.quantize, kquant, gptq, a from_* importer or QuantTensor(...))"


def _tensor(value: Any, name: str = "tensor") -> "QuantTensor":
    return _checks.instance(value, name, (QuantTensor,), _TENSOR)


def _bits16(array: np.ndarray) -> np.ndarray:
    """fp16 / bf16 arrays cross into C++ as their uint16 bit patterns (a view, no copy)."""
    return array.view(np.uint16) if array.dtype in (np.dtype(np.float16), _BF16) else array


def _dtype_name(dtype: DTypeLike, what: str) -> str:
    if isinstance(dtype, str) and dtype in _NUMPY_DTYPE:
        return dtype
    try:
        return _FLOAT_DTYPES[np.dtype(dtype)]
    except (TypeError, KeyError):
        raise TypeError(f"{what} {dtype!r} is not supported (expected float32, float16 or bfloat16)") from None


def _check_convention(convention: str) -> None:
    _checks.choice(convention, "convention", CONVENTIONS)


def _quantize_dtypes(weights: np.ndarray, scale_dtype: DTypeLike, convention: str) -> Tuple[str, str]:
    """(weight dtype name, scale dtype name) of the float weights a quantizer takes (scales default
    to the weights' dtype, as the tools do); checks the weights and the convention."""
    _check_array(weights, "weights", list(_FLOAT_DTYPES))
    weight_dtype = _FLOAT_DTYPES[weights.dtype]
    _check_convention(convention)
    return weight_dtype, weight_dtype if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype")


def _replace_non_finite(non_finite: str) -> bool:
    return _checks.choice(non_finite, "non_finite", ("error", "zero")) == "zero"


def _calibration_list(calibration) -> list:
    """One float32 calibration array, or a list or tuple of them, as a list of checked arrays."""
    f32 = [np.dtype(np.float32)]
    if isinstance(calibration, np.ndarray):
        return [_check_array(calibration, "calibration", f32)]
    if not isinstance(calibration, (list, tuple)):
        raise TypeError(
            "calibration must be a float32 numpy.ndarray or a list or tuple of them, "
            f"got {_checks.type_name(calibration)}"
        )
    if not calibration:
        raise ValueError("calibration is an empty list (expected at least one float32 [tokens, K] array)")
    return [_check_array(batch, f"calibration[{index}]", f32) for index, batch in enumerate(calibration)]


# ---- the tensor ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What a tensor was quantized to: bits (2, 4, 8), group size (> 0, or PER_CHANNEL),
    symmetric (no zero points stored; implied 2^(bits-1)), and the convention that made it."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    convention: str = "olive"

    def __post_init__(self) -> None:
        # Checked and normalized once here (numpy integers become ints), so every function that
        # takes a config can trust it. Frozen: the fields are set through object.__setattr__.
        object.__setattr__(self, "bits", _checks.integer(self.bits, "bits", **_BITS))
        object.__setattr__(self, "group_size", _group_size(self.group_size))
        object.__setattr__(self, "symmetric", _checks.flag(self.symmetric, "symmetric"))
        _check_convention(self.convention)


class QuantTensor:
    """A weight tensor in nibble's canonical layout.

    Attributes:
        qweight: uint8 ``[..., N, packed_row_bytes]``, codes packed along K (low bits first),
            each row padded to whole groups; pad codes hold the zero point (dequantize to 0).
        scales: ``[..., N, n_groups]`` float32, float16 or bfloat16 (may be negative).
        zeros: uint8 ``[..., N, ceil(n_groups * bits / 8)]`` packed zero points, or None when
            symmetric.
        shape: the logical shape ``(..., N, K)``.
        config: the :class:`QuantConfig`.

    Construct one from arrays (e.g. ONNX initializers) to use them without copying; the arrays
    are validated against the shape and config.
    """

    __slots__ = ("qweight", "scales", "zeros", "shape", "config", "_ref", "_layout")

    def __init__(
        self,
        qweight: np.ndarray,
        scales: np.ndarray,
        zeros: Optional[np.ndarray],
        shape: Sequence[int],
        config: QuantConfig,
    ) -> None:
        _check_array(qweight, "qweight", [np.dtype(np.uint8)])
        _check_array(scales, "scales", list(_FLOAT_DTYPES))
        if zeros is not None:
            _check_array(zeros, "zeros", [np.dtype(np.uint8)])
        _checks.instance(config, "config", (QuantConfig,), "a nibble.QuantConfig")
        self.qweight = qweight
        self.scales = scales
        self.zeros = zeros
        self.shape = tuple(_checks.integers(shape, "shape", minimum=1))
        self.config = config
        self._ref = _nibble.TensorRef(
            qweight,
            _bits16(scales),
            zeros,
            list(self.shape),
            config.bits,
            config.group_size,
            config.symmetric,
            config.convention,
            _FLOAT_DTYPES[scales.dtype],
        )
        self._layout = _nibble.layout(self._ref)

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def group_size(self) -> int:
        """The effective group size G (K when per-channel)."""
        return self._layout["group_size"]

    @property
    def n_groups(self) -> int:
        return self._layout["n_groups"]

    @property
    def padded_k(self) -> int:
        """K rounded up to whole groups: the codes per row of qweight."""
        return self._layout["padded_k"]

    @property
    def nbytes(self) -> int:
        """Bytes of qweight + scales + zeros."""
        return self.qweight.nbytes + self.scales.nbytes + (0 if self.zeros is None else self.zeros.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / float(np.prod(self.shape))

    def dequantize(self) -> np.ndarray:
        """The float32 weights this tensor stands for, in its logical shape."""
        return _nibble.dequantize(self._ref)

    def __getitem__(self, index: int) -> "QuantTensor":
        """Sub-tensor `index` along the first dimension (expert e of [E, N, K]): views, no copy."""
        if len(self.shape) < 2:
            raise ValueError(f"cannot index a rank-1 QuantTensor of shape {self.shape}")
        index = _checks.integer(index, "QuantTensor index")
        if not -self.shape[0] <= index < self.shape[0]:
            raise IndexError(f"index {index} is out of range for the first dimension of {self.shape}")
        return QuantTensor(
            self.qweight[index],
            self.scales[index],
            None if self.zeros is None else self.zeros[index],
            self.shape[1:],
            self.config,
        )

    @classmethod
    def _from_arrays(cls, arrays, shape: Sequence[int], config: QuantConfig, scale_dtype: str) -> "QuantTensor":
        """A tensor over (qweight, scales, zeros) from the C++ core (fp16 / bf16 scales arrive as
        uint16 bit patterns and are viewed as their dtype)."""
        qweight, scales, zeros = arrays
        if scale_dtype != "float32":
            scales = scales.view(_NUMPY_DTYPE[scale_dtype])
        return cls(qweight, scales, zeros, shape, config)

    def __repr__(self) -> str:
        return (
            f"QuantTensor(shape={self.shape}, bits={self.config.bits}, group_size={self.config.group_size}, "
            f"symmetric={self.config.symmetric}, convention={self.config.convention!r}, "
            f"scales={self.scales.dtype}, {self.bits_per_weight:.3f} bits/weight)"
        )


# ---- quantization -------------------------------------------------------------------------------


def quantize(
    weights: np.ndarray,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    convention: str = "olive",
    scale_dtype: DTypeLike = None,
    num_threads: int = 0,
    non_finite: str = "error",
) -> QuantTensor:
    """Quantize ``weights [..., K]`` (float32, float16 or bfloat16) along the last dimension.

    Args:
        bits: 2, 4 or 8.
        group_size: elements per group along K (> 0), or ``PER_CHANNEL`` (-1). K need not be a
            multiple: rows are padded to whole groups.
        symmetric: store no zero points (the implied zero point is 2^(bits-1)).
        convention: one of ``CONVENTIONS``; the tool whose RTN to reproduce bit for bit.
        scale_dtype: float32, float16 or bfloat16; default: the weights' dtype (as the tools do).
        num_threads: OpenMP threads over rows (0: OpenMP's default).
        non_finite: ``"error"`` (NaN/Inf raise ValueError naming the element) or ``"zero"``
            (quantize them as 0).

    Returns:
        A :class:`QuantTensor` whose arrays own the quantizer's output (no copies).
    """
    weight_dtype, scale_name = _quantize_dtypes(weights, scale_dtype, convention)
    config = QuantConfig(bits, group_size, symmetric, convention)
    arrays = _nibble.quantize(
        _bits16(weights),
        weight_dtype,
        config.bits,
        config.group_size,
        config.symmetric,
        convention,
        scale_name,
        _checks.integer(num_threads, "num_threads", **_THREADS),
        _replace_non_finite(non_finite),
    )
    return QuantTensor._from_arrays(arrays, weights.shape, config, scale_name)


KQUANT_VARIANTS = ("ort", "llama_cpp")


def kquant(
    weights: np.ndarray,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    variant: str = "ort",
    importance: Optional[np.ndarray] = None,
    convention: str = "ort_weight_only",
    scale_dtype: DTypeLike = None,
    num_threads: int = 0,
    non_finite: str = "error",
) -> QuantTensor:
    """Quantize ``weights [..., K]`` with a k-quant scale search per group (not min / max).

    Args:
        variant: ``"ort"``: onnxruntime's ``k_quant`` (the ONNX Runtime GenAI builder's
            ``int4_algo_config=k_quant``), byte for byte; asymmetric only. ``"llama_cpp"``:
            llama.cpp's make_qkx2_quants (asymmetric) / make_qx_quants (symmetric).
        importance: optional float32 per-column importance (``[K]``, or ``[leading..., K]`` for a
            rank >= 3 tensor, e.g. mean x^2 of calibration activations); it multiplies each
            element's search weight (all ones: the plain search).
        convention: recorded in the tensor's config; its zero-point pad rule fills unused
            zero-point slots (``ort_weight_only``: 0x8 nibbles, as onnxruntime writes them).
        The other arguments are :func:`quantize`'s.
    """
    weight_dtype, scale_name = _quantize_dtypes(weights, scale_dtype, convention)
    replace_non_finite = _replace_non_finite(non_finite)
    _checks.choice(variant, "variant", KQUANT_VARIANTS)
    if importance is not None:
        _check_array(importance, "importance", [np.dtype(np.float32)])
    config = QuantConfig(bits, group_size, symmetric, convention)
    arrays = _nibble.kquant(
        _bits16(weights),
        weight_dtype,
        config.bits,
        config.group_size,
        config.symmetric,
        convention,
        scale_name,
        _checks.integer(num_threads, "num_threads", **_THREADS),
        replace_non_finite,
        variant,
        importance,
    )
    return QuantTensor._from_arrays(arrays, weights.shape, config, scale_name)


def gptq(
    weights: np.ndarray,
    calibration: Union[np.ndarray, Sequence[np.ndarray]],
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp_percent: float = 0.01,
    block_size: int = 128,
    fp64: bool = False,
    convention: str = "olive",
    scale_dtype: DTypeLike = None,
    num_threads: int = 0,
) -> Tuple[QuantTensor, Optional[np.ndarray], float]:
    """GPTQ-quantize ``weights [..., N, K]`` given the layer's calibration inputs.

    Args:
        calibration: float32 ``[tokens, K]`` shared by every row, or a sequence of them, one per
            leading index of the weights (e.g. per expert of ``[E, N, K]``).
        act_order: quantize columns by descending Hessian diagonal; static_groups: group
            parameters from the original weights (groups stay contiguous).
        damp_percent: added to the Hessian's diagonal, times its mean.
        fp64: double precision throughout (default: float32, as the published code).

    Returns:
        ``(tensor, g_idx, loss)``: g_idx (int32 ``[leading..., K]``, the group of each input
        column) is None unless act_order without static_groups changes group membership;
        :func:`dequantize_gptq` applies it. loss is the published code's error sum.
    """
    weight_dtype, scale_name = _quantize_dtypes(weights, scale_dtype, convention)
    config = QuantConfig(bits, group_size, symmetric, convention)
    damp_percent = _checks.real(damp_percent, "damp_percent")
    if not damp_percent >= 0 or not np.isfinite(damp_percent):  # NaN fails both comparisons
        raise ValueError(f"damp_percent = {damp_percent} is invalid (expected a finite value >= 0)")
    qweight, scales, zeros, g_idx, loss = _nibble.gptq(
        _bits16(weights),
        weight_dtype,
        _calibration_list(calibration),
        config.bits,
        config.group_size,
        config.symmetric,
        convention,
        scale_name,
        damp_percent,
        _checks.integer(block_size, "block_size", **_POSITIVE_INT32),
        _checks.flag(act_order, "act_order"),
        _checks.flag(static_groups, "static_groups"),
        _checks.flag(fp64, "fp64"),
        _checks.integer(num_threads, "num_threads", **_THREADS),
    )
    tensor = QuantTensor._from_arrays((qweight, scales, zeros), weights.shape, config, scale_name)
    return tensor, g_idx, float(loss)


def _check_g_idx(g_idx: Any, shape: Tuple[int, ...], n_groups: int) -> None:
    """g_idx int32 ``[K]`` (shared) or ``[leading..., K]`` (one per leading index), each entry a
    group of the tensor."""
    _check_array(g_idx, "g_idx", _INT32)
    shared, own = shape[-1:], shape[:-2] + shape[-1:]
    if g_idx.shape != shared and (len(shape) < 3 or g_idx.shape != own):
        expected = f"{shared}" if len(shape) < 3 else f"{shared} or {own}"
        raise ValueError(f"g_idx has shape {g_idx.shape} (expected {expected}: the group of each input column)")
    bad = np.flatnonzero((g_idx < 0) | (g_idx >= n_groups))
    if bad.size:
        where = np.unravel_index(bad[0], g_idx.shape)
        raise ValueError(
            f"g_idx[{', '.join(str(int(i)) for i in where)}] = {int(g_idx[where])} "
            f"(expected 0 <= group < n_groups = {n_groups})"
        )


def dequantize_gptq(tensor: QuantTensor, g_idx: Optional[np.ndarray]) -> np.ndarray:
    """The float32 weights of a GPTQ result: column j of leading index e uses group
    ``g_idx[e, j]`` (or ``j // group_size`` when g_idx is None)."""
    _tensor(tensor)
    if g_idx is None:
        return tensor.dequantize().reshape(tensor.shape)
    shape, k = tensor.shape, tensor.shape[-1]
    bits, group = tensor.config.bits, tensor.config.group_size
    _check_g_idx(g_idx, shape, tensor.n_groups)
    rows = int(np.prod(shape[:-1]))
    padded_k = k if group == PER_CHANNEL else -(-k // group) * group
    codes = unpack(np.ascontiguousarray(tensor.qweight.reshape(rows, -1)), bits, padded_k)[:, :k].astype(np.float32)
    scales = tensor.scales.reshape(rows, -1).astype(np.float32)
    if tensor.zeros is None:
        zeros = np.full(scales.shape, 1 << (bits - 1), np.float32)
    else:
        slots = tensor.zeros.shape[-1] * 8 // bits
        zeros = unpack(np.ascontiguousarray(tensor.zeros.reshape(rows, -1)), bits, slots).astype(np.float32)
    groups = np.repeat(g_idx.reshape(-1, k), rows // g_idx.reshape(-1, k).shape[0], axis=0)
    row_index = np.arange(rows)[:, None]
    restored = (codes - zeros[row_index, groups]) * scales[row_index, groups]
    return restored.reshape(shape)


def _solver(solver: Any, kquant_variant: Any) -> Tuple[str, str]:
    """The (solver, k-quant variant) names AutoClip and AWQ search with."""
    return _checks.choice(solver, "solver", ("rtn", "k_quant")), _checks.choice(
        kquant_variant, "kquant_variant", KQUANT_VARIANTS
    )


def autoclip(
    weights: np.ndarray,
    calibration: Union[np.ndarray, Sequence[np.ndarray]],
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    solver: str = "rtn",
    convention: str = "olive",
    kquant_variant: str = "ort",
    steps: int = 10,
    min_ratio: float = 0.5,
    clip_range: str = "abs_max",
    num_threads: int = 0,
    return_ratios: bool = False,
):
    """AutoClip (AWQ's auto_clip, Olive's pass): per group, the clipping ratio of the weight range
    that minimizes the group's output error on the calibration inputs, for the given solver.

    Returns the clipped float32 weights (quantize them with the same solver and config to get
    the searched result); with return_ratios, also (upper, lower) ratios ``[..., N, groups]``.
    clip_range: ``"abs_max"`` (AWQ: [-r amax, r amax]) or ``"min_max"`` (Olive: min and max apart).
    """
    _check_array(weights, "weights", [np.dtype(np.float32)])
    config = QuantConfig(bits, group_size, symmetric, convention)
    _checks.choice(clip_range, "clip_range", ("abs_max", "min_max"))
    min_ratio = _checks.real(min_ratio, "min_ratio")
    if not 0 < min_ratio <= 1:
        raise ValueError(f"min_ratio = {min_ratio} is invalid (expected 0 < min_ratio <= 1)")
    return_ratios = _checks.flag(return_ratios, "return_ratios")
    clipped, upper, lower = _nibble.autoclip(
        weights, _calibration_list(calibration), config.bits, config.group_size, config.symmetric,
        convention, *_solver(solver, kquant_variant), _checks.integer(steps, "steps", **_POSITIVE_INT32),
        min_ratio, clip_range == "min_max", _checks.integer(num_threads, "num_threads", **_THREADS),
    )
    return (clipped, upper, lower) if return_ratios else clipped


def awq(
    weights: np.ndarray,
    calibration: Union[np.ndarray, Sequence[np.ndarray]],
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    solver: str = "rtn",
    convention: str = "olive",
    kquant_variant: str = "ort",
    grid: int = 20,
    num_threads: int = 0,
):
    """AWQ's activation-aware per-input-channel scale search.

    Returns ``(scaled_weights, scale, pre_quant_scale, alpha)``: quantize ``scaled_weights``
    (W * s); at run time multiply the activations by ``pre_quant_scale`` (1 / s, TensorRT-LLM's
    prequant_scaling_factor). scale and pre_quant_scale are ``[n_scales, K]``.
    """
    _check_array(weights, "weights", [np.dtype(np.float32)])
    config = QuantConfig(bits, group_size, symmetric, convention)
    return _nibble.awq(
        weights, _calibration_list(calibration), config.bits, config.group_size, config.symmetric,
        convention, *_solver(solver, kquant_variant), _checks.integer(grid, "grid", **_POSITIVE_INT32),
        _checks.integer(num_threads, "num_threads", **_THREADS),
    )


def dequantize(tensor: QuantTensor) -> np.ndarray:
    """The float32 weights a :class:`QuantTensor` stands for, ``(q - z) * s`` per element."""
    return _tensor(tensor).dequantize()


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes ``[..., K]`` (each < 2^bits) -> uint8 ``[..., ceil(K * bits / 8)]``, low bits first."""
    _check_array(codes, "codes", [np.dtype(np.uint8)])
    return _nibble.pack(codes, _checks.integer(bits, "bits", **_BITS))


def unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """uint8 ``[..., ceil(k * bits / 8)]`` -> uint8 codes ``[..., k]``."""
    _check_array(packed, "packed", [np.dtype(np.uint8)])
    return _nibble.unpack(packed, _checks.integer(bits, "bits", **_BITS), _checks.integer(k, "k", minimum=1))


# ---- kernels ------------------------------------------------------------------------------------


#: What ``activations=`` of :func:`gemm` / :func:`moe_gemm` takes, as ``GemmOptions::activations``
#: in C++ (every one accumulates in float32):
#: ``"fp32"``: x's values as they are; ``"int8"``: each row of x quantized per block to int8,
#: integer dot products (ONNX Runtime's accuracy_level 4, llama.cpp's Q8 activations);
#: ``"bf16"`` / ``"fp16"``: each value of x rounded to that type (round to nearest even) first,
#: then multiplied as fp32 does: the result of a model run in that type (for bfloat16 x, ``"bf16"``
#: is ``"fp32"``; on AVX512_BF16 CPUs ``"bf16"`` runs the vdpbf16ps kernel for float32 x too).
ACTIVATIONS: Tuple[str, ...] = ("fp32", "int8", "bf16", "fp16")


def _gemm_arguments(x, activations, num_threads, reference, *, rank=None, hint="", packed=False):
    """(x's dtype name, activations, threads, reference) of a gemm call, every argument checked."""
    _check_array(x, "x", list(_FLOAT_DTYPES), min_rank=1, rank=rank, shape_hint=hint)
    activations = _checks.choice(activations, "activations", ACTIVATIONS)
    num_threads = _checks.integer(num_threads, "num_threads", **_THREADS)
    reference = _checks.flag(reference, "reference")
    if reference and packed and x.dtype != np.float32:
        raise ValueError(
            f"reference=True on a PackedTensor runs its scalar twin (gemm_packed_ref): x must be float32 "
            f"(got x {x.dtype})"
        )
    if reference and not packed and (x.dtype != np.float32 or activations != "fp32"):
        raise ValueError(
            f"reference=True runs the fp32 reference kernel (double accumulation): x must be float32 and "
            f"activations 'fp32' (got x {x.dtype}, activations {activations!r})"
        )
    return _FLOAT_DTYPES[x.dtype], activations, num_threads, reference


class PackedTensor:
    """A :class:`QuantTensor` rearranged once, at load time, for this CPU's kernels
    (:func:`pack_for_cpu`): output columns in tiles of 8 so that one scale load serves a tile,
    K in the int8 path's activation blocks, scales in the tensor's dtype, zero points as int8.
    It owns its bytes (the QuantTensor may be dropped) and is meant for :func:`gemm`, not for
    storage: the canonical QuantTensor stays the interchange format. Layout byte by byte:
    docs/packed-layout.md.

    Attributes:
        shape: the logical shape ``(..., N, K)`` (leading dimensions flatten into N).
        config: the source tensor's :class:`QuantConfig`.
        scale_dtype: the scales' numpy dtype.
        isa: the kernel table it was packed for (``"avx2"``, ``"avx512vnni"``, ...); a gemm
            that would run another (``NIBBLE_ISA``) is an error, never a wrong answer.
        nbytes: bytes held (codes, scales and zero points).
    """

    __slots__ = ("shape", "config", "scale_dtype", "_ref")

    def __init__(self, *_args, **_kwargs) -> None:
        raise TypeError("a PackedTensor is made by nibble.pack_for_cpu(tensor)")

    @classmethod
    def _from_ref(cls, ref, config: "QuantConfig", scale_dtype) -> "PackedTensor":
        packed = object.__new__(cls)
        packed.shape = tuple(ref.shape)
        packed.config = config
        packed.scale_dtype = scale_dtype
        packed._ref = ref
        return packed

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def isa(self) -> str:
        return self._ref.isa

    @property
    def nbytes(self) -> int:
        return self._ref.nbytes

    def __repr__(self) -> str:
        return (
            f"PackedTensor(shape={self.shape}, bits={self.config.bits}, group_size={self.config.group_size}, "
            f"symmetric={self.config.symmetric}, scales={self.scale_dtype}, isa={self.isa!r}, "
            f"nbytes={self.nbytes})"
        )


def pack_for_cpu(tensor: QuantTensor, *, num_threads: int = 0) -> PackedTensor:
    """`tensor` (any rank ``[..., N, K]``; any bits, group size, symmetry and scale dtype) packed
    for the kernel table :func:`gemm` runs on this CPU (``NIBBLE_ISA`` picks another), in
    parallel (``num_threads``, 0: OpenMP's default), without the GIL. Pack once when a model
    loads, then pass the :class:`PackedTensor` to :func:`gemm` in place of the tensor."""
    _tensor(tensor)
    num_threads = _checks.integer(num_threads, "num_threads", **_THREADS)
    return PackedTensor._from_ref(_nibble.pack_for_cpu(tensor._ref, num_threads), tensor.config, tensor.scales.dtype)


_WEIGHTS = _TENSOR + " or a nibble.PackedTensor (from nibble.pack_for_cpu)"


def gemm(
    x: np.ndarray,
    tensor: Union[QuantTensor, PackedTensor],
    bias: Optional[np.ndarray] = None,
    *,
    activations: str = "fp32",
    num_threads: int = 0,
    reference: bool = False,
) -> np.ndarray:
    """``Y = X @ dequant(W).T (+ bias)``: x ``[..., K]`` -> ``[..., N]``, where N is the product of
    the weights' leading dimensions.

    x is float32, float16 or bfloat16; bias (``[N]``) and the result have x's dtype. Runs nibble's
    SIMD kernels on the best ISA this CPU has (:func:`gemm_isa` says which; ``NIBBLE_ISA`` picks
    another), threaded over N (``num_threads``, 0: OpenMP's default), without the GIL.
    ``activations``: see :data:`ACTIVATIONS`. ``reference=True`` runs the scalar reference kernel
    instead (float32 x, fp32 activations; double accumulation): the truth the fast kernels are
    tested against.

    ``tensor`` may be a :class:`PackedTensor` (:func:`pack_for_cpu`): the same product from the
    load-time packed layout, without per-call rearranging (the fastest path for M = 1 to 8).
    There ``reference=True`` runs the packed layout's scalar twin (float32 x, no bias, any
    ``activations``)."""
    packed = isinstance(tensor, PackedTensor)
    dtype, activations, num_threads, reference = _gemm_arguments(
        x, activations, num_threads, reference, packed=packed
    )
    if not packed:
        _checks.instance(tensor, "tensor", (QuantTensor,), _WEIGHTS)
    if bias is not None:
        _check_array(bias, "bias", [x.dtype])
    if packed:
        return _view_activations(
            _nibble.gemm_packed(_bits16(x), dtype, tensor._ref, None if bias is None else _bits16(bias),
                                activations, num_threads, reference),
            dtype,
        )
    return _view_activations(
        _nibble.gemm(_bits16(x), dtype, tensor._ref, None if bias is None else _bits16(bias), activations,
                     num_threads, reference),
        dtype,
    )


def moe_gemm(
    x: np.ndarray,
    tensor: QuantTensor,
    expert_ids: np.ndarray,
    gates: Optional[np.ndarray] = None,
    *,
    activations: str = "fp32",
    num_threads: int = 0,
    reference: bool = False,
) -> np.ndarray:
    """Mixture of experts over weights ``[E, N, K]``: token t of x ``[T, K]`` is routed to the experts
    ``expert_ids[t, :]`` (int32 ``[T, top_k]``), weighted by ``gates[t, :]`` (float32, default 1):
    ``y[t] = sum_j gates[t, j] * x[t] @ dequant(W[expert_ids[t, j]]).T``, y ``[T, N]`` of x's dtype
    (float32, float16 or bfloat16). ``activations``, ``num_threads`` and ``reference`` as in
    :func:`gemm`."""
    dtype, activations, num_threads, reference = _gemm_arguments(
        x, activations, num_threads, reference, rank=2, hint="[T, K]"
    )
    if isinstance(tensor, PackedTensor):
        raise TypeError(
            "moe_gemm takes the experts' QuantTensor [E, N, K]; routing over a PackedTensor is not "
            "implemented (gemm takes a packed rank-3 tensor as one [E * N, K] matrix)"
        )
    _tensor(tensor)
    if len(tensor.shape) != 3:  # [N, K] would be read as N experts of one output each
        raise ValueError(
            f"tensor has shape {tensor.shape}, rank {len(tensor.shape)} (expected rank 3 [E, N, K]: "
            "one weight per expert; for one [N, K] weight use gemm)"
        )
    _check_array(expert_ids, "expert_ids", [np.dtype(np.int32)], rank=2, shape_hint="[T, top_k]")
    if gates is not None:
        _check_array(gates, "gates", [np.dtype(np.float32)], rank=2, shape_hint="[T, top_k]")
    return _view_activations(
        _nibble.moe_gemm(_bits16(x), dtype, tensor._ref, expert_ids, gates, activations, num_threads, reference),
        dtype,
    )


def _view_activations(y: np.ndarray, dtype: str) -> np.ndarray:
    """A kernel's output (fp16 / bf16 as uint16 bit patterns) as its dtype."""
    return y if dtype == "float32" else y.view(_NUMPY_DTYPE[dtype])


def gemm_isa(tensor: Union[QuantTensor, PackedTensor], activations: str = "fp32") -> str:
    """The ISA whose kernels :func:`gemm` runs for `tensor` (``"avx512vnni"``, ``"avx2"``, ... or the
    portable xsimd architecture's name, e.g. ``"sse2"``): what a measured time came from. For a
    :class:`PackedTensor`, the ISA it was packed for."""
    if isinstance(tensor, PackedTensor):
        _checks.choice(activations, "activations", ACTIVATIONS)
        return tensor.isa
    return _nibble.gemm_isa(_tensor(tensor)._ref, _checks.choice(activations, "activations", ACTIVATIONS))


# ---- ONNX Runtime formats -----------------------------------------------------------------------


def _accuracy_level(level: Any) -> Optional[int]:
    """MatMulNBits' accuracy_level attribute: None / 0 (unset), 1 to 4."""
    return _checks.optional_integer(level, "accuracy_level", choices=range(5), expected="0 to 4; 0 or None: unset")


def _tensor_proto(name: str, array: np.ndarray, data_type: Optional[int] = None, dims=None):
    """An ONNX TensorProto from raw bytes (bf16 and int4 included), as ONNX Runtime writes them."""
    import onnx

    if data_type is None:
        data_type = {
            np.dtype(np.uint8): onnx.TensorProto.UINT8,
            np.dtype(np.int64): onnx.TensorProto.INT64,
            np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.float16): onnx.TensorProto.FLOAT16,
            _BF16: onnx.TensorProto.BFLOAT16,
        }[array.dtype]
    dims = list(array.shape) if dims is None else list(dims)
    return onnx.helper.make_tensor(name, data_type, dims, np.ascontiguousarray(array).tobytes(), raw=True)


@dataclasses.dataclass
class MatMulNBits:
    """Inputs and attributes of ONNX Runtime's ``com.microsoft.MatMulNBits`` for a weight [N, K].

    ``B`` (uint8 ``[N, n_blocks, blob]``), ``scales`` (``[N, n_blocks]``) and ``zero_points``
    (uint8 ``[N, ceil(n_blocks * bits / 8)]``, or None when symmetric) are views of the tensor's
    arrays. ``attributes`` holds K, N, bits and block_size.
    """

    B: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    attributes: dict

    def make_node(
        self,
        input_name: str = "A",
        output_name: str = "Y",
        name: str = "W",
        accuracy_level: Optional[int] = None,
        bias_name: Optional[str] = None,
    ):
        """(onnx.NodeProto, [initializer TensorProtos]) named as ONNX Runtime's quantizer names them:
        ``{name}_Q{bits}``, ``{name}_scales``, ``{name}_zero_points``. Needs the ``onnx`` package."""
        import onnx

        initializers = [
            _tensor_proto(f"{name}_Q{self.attributes['bits']}", self.B),
            _tensor_proto(f"{name}_scales", self.scales),
        ]
        inputs = [input_name, initializers[0].name, initializers[1].name]
        if self.zero_points is not None:
            initializers.append(_tensor_proto(f"{name}_zero_points", self.zero_points))
            inputs.append(initializers[2].name)
        if bias_name is not None:
            inputs += [""] * (5 - len(inputs)) + [bias_name]  # inputs 3 (zero_points), 4 (g_idx), 5
        accuracy_level = _accuracy_level(accuracy_level)
        attributes = dict(self.attributes)
        if accuracy_level:
            attributes["accuracy_level"] = accuracy_level
        node = onnx.helper.make_node(
            "MatMulNBits", inputs, [output_name], name=f"{name}_Q{self.attributes['bits']}",
            domain="com.microsoft", **attributes
        )
        return node, initializers


def to_matmul_nbits(tensor: QuantTensor) -> MatMulNBits:
    """The MatMulNBits inputs of a weight ``[N, K]`` (rank 2; take expert e of [E, N, K] as
    ``tensor[e]``). Zero-copy. Raises ValueError when the op cannot express the tensor (block
    size not a power of two >= 16)."""
    info = _nibble.matmul_nbits(_tensor(tensor)._ref)
    zero_points = None
    if tensor.zeros is not None:
        zero_points = tensor.zeros.reshape(info["zero_points_shape"])
    return MatMulNBits(
        B=tensor.qweight.reshape(info["B_shape"]),
        scales=tensor.scales.reshape(info["scales_shape"]),
        zero_points=zero_points,
        attributes={key: info[key] for key in ("K", "N", "bits", "block_size")},
    )


@dataclasses.dataclass
class GatherBlockQuantized:
    """Inputs and attributes of ONNX Runtime's ``com.microsoft.GatherBlockQuantized`` for a
    quantized table ``[..., K]`` gathered along axis 0 and quantized along the last axis.

    ``data_type`` is ``"uint8"`` (``data`` uint8 ``[..., K * bits / 8]``, per-row zero points,
    views of the tensor's arrays), or ``"int4"`` / ``"uint4"`` (ORT's own quantizer's layout:
    ``data`` holds the flat-packed nibbles of the logical ``shape``; INT4 is symmetric with no zero
    points; UINT4 zero points are flat-packed over the scales' shape).
    """

    data: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    attributes: dict
    data_type: str
    shape: Tuple[int, ...]

    def make_node(self, indices_name: str = "indices", output_name: str = "Y", name: str = "table"):
        """(onnx.NodeProto, [initializer TensorProtos]); names as ONNX Runtime's quantizer uses them
        (``{name}_Q4``, ``{name}_scales``, ``{name}_zero_points``). Needs the ``onnx`` package."""
        import onnx

        if self.data_type == "uint8":
            data = _tensor_proto(f"{name}_Q{self.attributes['bits']}", self.data)
            zero_points = None if self.zero_points is None else _tensor_proto(f"{name}_zero_points", self.zero_points)
        else:
            kind = onnx.TensorProto.INT4 if self.data_type == "int4" else onnx.TensorProto.UINT4
            data = _tensor_proto(f"{name}_Q4", self.data, kind, self.shape)
            zero_points = None
            if self.zero_points is not None:
                zero_points = _tensor_proto(f"{name}_zero_points", self.zero_points, kind, self.scales.shape)
        scales = _tensor_proto(f"{name}_scales", self.scales)
        inputs = [data.name, indices_name, scales.name]
        initializers = [data, scales]
        if zero_points is not None:
            inputs.append(zero_points.name)
            initializers.append(zero_points)
        node = onnx.helper.make_node(
            "GatherBlockQuantized", inputs, [output_name], name=f"{name}_Q4", domain="com.microsoft",
            **self.attributes
        )
        return node, initializers


def to_gather_block_quantized(tensor: QuantTensor, data_type: str = "uint8") -> GatherBlockQuantized:
    """The GatherBlockQuantized inputs of a quantized table ``[..., K]``.

    ``data_type="uint8"``: zero-copy views; needs K to be a multiple of the group size.
    ``data_type="int4"``: a copy in ONNX Runtime's own Gather-quantizer layout (4 bits only):
    INT4 when symmetric, UINT4 otherwise (byte for byte what its quantizer writes for the
    ``ort_gather`` convention).
    """
    _tensor(tensor)
    if _checks.choice(data_type, "data_type", ("uint8", "int4", "uint4")) == "uint8":
        info = _nibble.gather_block_quantized(tensor._ref)
        zero_points = None if tensor.zeros is None else tensor.zeros.reshape(info["zero_points_shape"])
        return GatherBlockQuantized(
            data=tensor.qweight.reshape(info["data_shape"]),
            scales=tensor.scales.reshape(info["scales_shape"]),
            zero_points=zero_points,
            attributes={key: info[key] for key in ("gather_axis", "quantize_axis", "block_size", "bits")},
            data_type="uint8",
            shape=tensor.shape,
        )
    data, zero_points, signed, block_size = _nibble.gather_block_quantized_int4(tensor._ref)
    actual = "int4" if signed else "uint4"
    if data_type != actual:
        raise ValueError(
            f"data_type={data_type!r} but this tensor is {'symmetric' if signed else 'asymmetric'}: "
            f"ONNX Runtime stores it as {actual}"
        )
    return GatherBlockQuantized(
        data=data,
        scales=tensor.scales,
        zero_points=zero_points,
        attributes={"gather_axis": 0, "quantize_axis": len(tensor.shape) - 1, "block_size": block_size},
        data_type=actual,
        shape=tensor.shape,
    )


@dataclasses.dataclass
class TiedEmbeddings:
    """One quantized table ``[vocab, hidden]`` as both ``lm_head``'s MatMulNBits (logits =
    hidden_states @ W^T) and the token embedding's GatherBlockQuantized, as the ONNX Runtime
    GenAI builder ties them (``shared_embeddings``): one set of initializers, the Gather's uint8
    data being lm_head's ``B`` through a Reshape to ``reshape_shape = [vocab, hidden * bits / 8]``,
    its scales and zero points lm_head's.

    ``data`` says how much is shared:

    - ``"reshape"`` (hidden a multiple of the block size): everything; ``embedding.data`` is a
      view of the same bytes as ``lm_head.B``.
    - ``"unpadded_uint8"``: lm_head's rows carry pad codes, so the embedding has its own uint8
      data without them (a copy; the builder's Reshape could not work here); scales and zero
      points are still shared.
    - ``"int4"`` (4 bits, odd hidden): INT4 / UINT4 typed data and UINT4 zero points of the
      embedding's own (copies, ONNX Runtime's Gather-quantizer layout); scales shared.
    """

    lm_head: MatMulNBits
    embedding: GatherBlockQuantized
    data: str
    reshape_shape: Optional[Tuple[int, int]]

    @property
    def shares_codes(self) -> bool:
        """Whether the embedding reads lm_head's B itself (no copy of the codes)."""
        return self.data == "reshape"

    def make_nodes(
        self,
        input_ids: str = "input_ids",
        hidden_states: str = "hidden_states",
        embeddings: str = "embeddings",
        logits: str = "logits",
        name: str = "lm_head.MatMul.weight",
        naming: str = "rtn",
        accuracy_level: Optional[int] = None,
    ):
        """([Reshape,] GatherBlockQuantized, MatMulNBits nodes, [initializers]) named as the GenAI
        builder names them (``/model/embed_tokens/Reshape``, ``/model/embed_tokens/GatherBlockQuantized``,
        ``/model/constants/INT64/[vocab, flat]``, ``/lm_head/MatMul_Q{bits}``). Initializer names:
        ``naming="rtn"`` as ONNX Runtime's RTN / k_quant quantizer writes them (what the builder
        ties: ``{name}_Q{bits}G{block_size}``, ``{name}_scale``, ``{name}_zp``), ``"default"`` as
        its MLAS quantizer does (``{name}_Q{bits}``, ``{name}_scales``, ``{name}_zero_points``).
        Needs the ``onnx`` package."""
        import onnx

        accuracy_level = _accuracy_level(accuracy_level)
        attributes = self.lm_head.attributes
        bits, block_size = attributes["bits"], attributes["block_size"]
        if _checks.choice(naming, "naming", ("rtn", "default")) == "rtn":
            b_name, scales_name, zp_name = f"{name}_Q{bits}G{block_size}", f"{name}_scale", f"{name}_zp"
        else:
            b_name, scales_name, zp_name = f"{name}_Q{bits}", f"{name}_scales", f"{name}_zero_points"
        initializers = [_tensor_proto(b_name, self.lm_head.B), _tensor_proto(scales_name, self.lm_head.scales)]
        lm_inputs = [hidden_states, b_name, scales_name]
        if self.lm_head.zero_points is not None:
            initializers.append(_tensor_proto(zp_name, self.lm_head.zero_points))
            lm_inputs.append(zp_name)
        lm_attributes = dict(attributes)
        if accuracy_level:
            lm_attributes["accuracy_level"] = accuracy_level
        lm_head = onnx.helper.make_node(
            "MatMulNBits", lm_inputs, [logits], name=f"/lm_head/MatMul_Q{bits}", domain="com.microsoft", **lm_attributes
        )

        nodes = []
        embed = "/model/embed_tokens"
        zero_points_name = zp_name if self.lm_head.zero_points is not None else None
        if self.data == "reshape":
            vocab, flat = self.reshape_shape
            shape_name = f"/model/constants/INT64/[{vocab}, {flat}]"
            initializers.append(_tensor_proto(shape_name, np.array([vocab, flat], dtype=np.int64)))
            data_name = f"{embed}/Reshape/output_0"
            nodes.append(onnx.helper.make_node("Reshape", [b_name, shape_name], [data_name], name=f"{embed}/Reshape"))
        elif self.data == "unpadded_uint8":
            data_name = "model.embed_tokens.weight_Q{}".format(bits)
            initializers.append(_tensor_proto(data_name, self.embedding.data))
        else:
            kind = onnx.TensorProto.INT4 if self.embedding.data_type == "int4" else onnx.TensorProto.UINT4
            data_name = "model.embed_tokens.weight_Q4"
            initializers.append(_tensor_proto(data_name, self.embedding.data, kind, self.embedding.shape))
            zero_points_name = None
            if self.embedding.zero_points is not None:
                zero_points_name = "model.embed_tokens.weight_zero_points"
                initializers.append(
                    _tensor_proto(zero_points_name, self.embedding.zero_points, kind, self.embedding.scales.shape)
                )
        gather_inputs = [data_name, input_ids, scales_name] + ([zero_points_name] if zero_points_name else [])
        nodes.append(
            onnx.helper.make_node(
                "GatherBlockQuantized", gather_inputs, [embeddings], name=f"{embed}/GatherBlockQuantized",
                domain="com.microsoft", **self.embedding.attributes
            )
        )
        return nodes + [lm_head], initializers


def to_tied_embeddings(tensor: QuantTensor, allow_copy: bool = True) -> TiedEmbeddings:
    """A quantized table ``[vocab, hidden]`` as tied lm_head (MatMulNBits) and embedding
    (GatherBlockQuantized) inputs sharing its arrays (see :class:`TiedEmbeddings`).

    ``allow_copy=False`` accepts only the GenAI builder's own form (``data == "reshape"``: hidden a
    multiple of the block size) and raises ValueError saying why otherwise. Raises ValueError for
    what neither op can express (block size not a power of two >= 16, rank != 2, 2 bits with
    hidden % 4 != 0)."""
    info = _nibble.tied_embedding(_tensor(tensor)._ref, _checks.flag(allow_copy, "allow_copy"))
    lm, gathered = info["lm_head"], info["embedding"]
    lm_head = MatMulNBits(
        B=tensor.qweight.reshape(lm["B_shape"]),
        scales=tensor.scales.reshape(lm["scales_shape"]),
        zero_points=None if tensor.zeros is None else tensor.zeros.reshape(lm["zero_points_shape"]),
        attributes={key: lm[key] for key in ("K", "N", "bits", "block_size")},
    )
    attributes = {key: gathered[key] for key in ("gather_axis", "quantize_axis", "block_size", "bits")}
    if info["data"] == "reshape":
        data, zero_points, data_type = tensor.qweight.reshape(gathered["data_shape"]), lm_head.zero_points, "uint8"
    elif info["data"] == "unpadded_uint8":
        data, zero_points, data_type = info["data_copy"], lm_head.zero_points, "uint8"
    else:
        data, zero_points = info["data_copy"], info["zero_points_copy"]
        data_type = "int4" if info["signed_data"] else "uint4"
        del attributes["bits"]  # typed data: as ONNX Runtime's Gather quantizer writes the node
    embedding = GatherBlockQuantized(
        data=data, scales=lm_head.scales, zero_points=zero_points, attributes=attributes,
        data_type=data_type, shape=tensor.shape,
    )
    reshape_shape = None if info["reshape_shape"] is None else tuple(info["reshape_shape"])
    return TiedEmbeddings(lm_head=lm_head, embedding=embedding, data=info["data"], reshape_shape=reshape_shape)


# ---- GPTQ / AWQ checkpoints ---------------------------------------------------------------------

#: How GPTQ's qzeros store a zero point z: ``"v1"`` (AutoGPTQ, ``checkpoint_format "gptq"``) z - 1,
#: ``"v2"`` (GPTQModel's ``"gptq_v2"``) z.
GPTQ_ZERO_FORMATS: Tuple[str, ...] = ("v1", "v2")
#: How an imported checkpoint's symmetry is decided: ``"detect"`` (symmetric exactly when every zero
#: point is 2^(bits-1)), ``"symmetric"`` (the same, any other zero point is an error),
#: ``"asymmetric"`` (keep the zero points).
SYMMETRIES: Tuple[str, ...] = ("detect", "symmetric", "asymmetric")

_INT32 = [np.dtype(np.int32)]


@dataclasses.dataclass
class GptqCheckpoint:
    """One linear layer's GPTQ tensors (AutoGPTQ / GPTQModel), K = in_features, N = out_features,
    pack = 32 / bits codes per int32:

    ``qweight`` int32 ``[K / pack, N]`` (packed along K, LSB first); ``qzeros`` int32
    ``[n_groups, N / pack]`` (packed along N; ``zero_format`` "v1" stores z - 1); ``scales``
    ``[n_groups, N]`` float16 (float32 / bfloat16 also); ``g_idx`` int32 ``[K]`` (None: trivial
    ``k // group_size``). ``sym`` / ``desc_act`` are quantize_config.json's flags (set by
    :func:`to_gptq`; on import pass ``symmetry`` instead).
    """

    qweight: np.ndarray
    qzeros: np.ndarray
    scales: np.ndarray
    g_idx: Optional[np.ndarray] = None
    bits: int = 4
    group_size: int = 128
    zero_format: str = "v1"
    sym: bool = False
    desc_act: bool = False

    @property
    def in_features(self) -> int:
        return int(self.qweight.shape[0]) * (32 // self.bits if self.bits in (2, 4, 8) else 0)

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[1])


@dataclasses.dataclass
class AwqCheckpoint:
    """One linear layer's AWQ GEMM tensors (AutoAWQ ``WQLinear_GEMM``), 4-bit: ``qweight`` int32
    ``[K, N / 8]`` (packed along N, nibble order 0 2 4 6 1 3 5 7), ``qzeros`` int32
    ``[n_groups, N / 8]`` (true zero points, same order), ``scales`` ``[n_groups, N]`` float16
    (float32 / bfloat16 also)."""

    qweight: np.ndarray
    qzeros: np.ndarray
    scales: np.ndarray
    group_size: int = 128

    @property
    def in_features(self) -> int:
        return int(self.qweight.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[1]) * 8


_GPTQ = "a nibble.GptqCheckpoint (from nibble.to_gptq, or GptqCheckpoint(qweight, qzeros, scales, ...))"
_AWQ = "a nibble.AwqCheckpoint (from nibble.to_awq, or AwqCheckpoint(qweight, qzeros, scales, ...))"
_FUSABLE = "a nibble.QuantTensor, GptqCheckpoint or AwqCheckpoint"


def _checkpoint_fields(checkpoint) -> tuple:
    """A GPTQ / AWQ checkpoint's arrays and layout as the C++ core takes them, every field checked
    (the dataclasses are mutable: fields are checked where they are used, not at construction).
    GPTQ: (qweight, qzeros, scales, g_idx, K, N, bits, group_size, zero_format, sym, desc_act);
    AWQ: (qweight, qzeros, scales, K, N, group_size); fp16 / bf16 scales as uint16 bit patterns."""
    _check_array(checkpoint.qweight, "qweight", _INT32, min_rank=2)
    _check_array(checkpoint.qzeros, "qzeros", _INT32)
    _check_array(checkpoint.scales, "scales", list(_FLOAT_DTYPES))
    group_size = _group_size(checkpoint.group_size)
    scales = _bits16(checkpoint.scales)
    if isinstance(checkpoint, GptqCheckpoint):
        bits = _checks.integer(checkpoint.bits, "bits", **_BITS)  # before in_features, which uses it
        if checkpoint.g_idx is not None:
            _check_array(checkpoint.g_idx, "g_idx", _INT32)
        return (
            checkpoint.qweight, checkpoint.qzeros, scales, checkpoint.g_idx, checkpoint.in_features,
            checkpoint.out_features, bits, group_size,
            _checks.choice(checkpoint.zero_format, "zero_format", GPTQ_ZERO_FORMATS),
            _checks.flag(checkpoint.sym, "sym"), _checks.flag(checkpoint.desc_act, "desc_act"),
        )
    return checkpoint.qweight, checkpoint.qzeros, scales, checkpoint.in_features, checkpoint.out_features, group_size


def _check_import(symmetry: Any, convention: Any) -> None:
    _checks.choice(symmetry, "symmetry", SYMMETRIES)
    _check_convention(convention)


def _checkpoint_scales(scales: np.ndarray, scale_dtype: str) -> np.ndarray:
    return scales if scale_dtype == "float32" else scales.view(_NUMPY_DTYPE[scale_dtype])


def to_gptq(tensor: QuantTensor, zero_format: str = "v1", g_idx: Optional[np.ndarray] = None) -> GptqCheckpoint:
    """A canonical ``[N, K]`` tensor as GPTQ checkpoint tensors (a re-pack; every bit survives).

    ``g_idx`` (int32 ``[K]``): the group of each input column, e.g. the one :func:`gptq` returns
    for act-order; default trivial. Needs K and N multiples of 32 / bits and K of the group size.
    ``zero_format="v1"`` cannot store zero point 0 (GPTQ gives it to groups without negative
    weights): export GPTQ results as ``"v2"``."""
    _tensor(tensor)
    _checks.choice(zero_format, "zero_format", GPTQ_ZERO_FORMATS)
    if g_idx is not None:
        _check_array(g_idx, "g_idx", _INT32, rank=1, shape_hint="[K]")
    qweight, qzeros, scales, full_g_idx, sym, desc_act = _nibble.to_gptq(tensor._ref, zero_format, g_idx)
    return GptqCheckpoint(
        qweight=qweight, qzeros=qzeros, scales=_checkpoint_scales(scales, _FLOAT_DTYPES[tensor.scales.dtype]),
        g_idx=full_g_idx, bits=tensor.bits, group_size=tensor.config.group_size, zero_format=zero_format,
        sym=bool(sym), desc_act=bool(desc_act),
    )


def _from_gptq(checkpoint: GptqCheckpoint, symmetry: str, convention: str, permuted: bool):
    _checks.instance(checkpoint, "checkpoint", (GptqCheckpoint,), _GPTQ)
    _check_import(symmetry, convention)
    fields = _checkpoint_fields(checkpoint)
    scale_dtype = _FLOAT_DTYPES[checkpoint.scales.dtype]
    result = _nibble.from_gptq(*fields[:4], scale_dtype, *fields[4:9], symmetry, convention, permuted)
    in_features, out_features, bits, group_size = fields[4:8]
    config = QuantConfig(bits, group_size, result[2] is None, convention)
    shape = (out_features, in_features)
    return QuantTensor._from_arrays(result[:3], shape, config, scale_dtype), result[3:]


def from_gptq(checkpoint: GptqCheckpoint, symmetry: str = "detect", convention: str = "olive") -> QuantTensor:
    """GPTQ checkpoint tensors as a canonical ``[N, K]`` tensor. A non-trivial g_idx (act-order /
    desc_act) raises ValueError: use :func:`from_gptq_permuted`. ``convention`` is recorded in the
    config; set ``symmetry`` from quantize_config.json's ``"sym"`` for exact round trips."""
    return _from_gptq(checkpoint, symmetry, convention, False)[0]


def from_gptq_permuted(
    checkpoint: GptqCheckpoint, symmetry: str = "detect", convention: str = "olive"
) -> Tuple[QuantTensor, np.ndarray]:
    """GPTQ checkpoint tensors with any g_idx as ``(tensor, permutation)``: the canonical tensor's
    column j is the checkpoint's input column ``permutation[j]`` (int64 ``[K]``, K sorted by group),
    so the layer is ``x[:, permutation] @ dequantize(tensor).T``."""
    tensor, (permutation,) = _from_gptq(checkpoint, symmetry, convention, True)
    return tensor, permutation


def to_awq(tensor: QuantTensor) -> AwqCheckpoint:
    """A canonical 4-bit ``[N, K]`` tensor as AWQ GEMM checkpoint tensors (N % 8 == 0, K % group
    size == 0). Symmetric tensors export zero points 8."""
    qweight, qzeros, scales = _nibble.to_awq(_tensor(tensor)._ref)
    return AwqCheckpoint(
        qweight=qweight, qzeros=qzeros, scales=_checkpoint_scales(scales, _FLOAT_DTYPES[tensor.scales.dtype]),
        group_size=tensor.config.group_size,
    )


def from_awq(checkpoint: AwqCheckpoint, symmetry: str = "asymmetric", convention: str = "olive") -> QuantTensor:
    """AWQ GEMM checkpoint tensors as a canonical 4-bit ``[N, K]`` tensor (AWQ is asymmetric by
    definition; ``symmetry="detect"`` makes it symmetric when every zero point is 8)."""
    _checks.instance(checkpoint, "checkpoint", (AwqCheckpoint,), _AWQ)
    _check_import(symmetry, convention)
    fields = _checkpoint_fields(checkpoint)
    scale_dtype = _FLOAT_DTYPES[checkpoint.scales.dtype]
    arrays = _nibble.from_awq(*fields[:3], scale_dtype, *fields[3:], symmetry, convention)
    in_features, out_features, group_size = fields[3:]
    config = QuantConfig(4, group_size, arrays[2] is None, convention)
    return QuantTensor._from_arrays(arrays, (out_features, in_features), config, scale_dtype)


# ---- TensorRT-LLM / ModelOpt, FP8 -----------------------------------------------------------------


def to_modelopt(tensor: QuantTensor) -> Tuple[np.ndarray, np.ndarray]:
    """A canonical 4-bit symmetric ``[..., N, K]`` tensor as NVIDIA ModelOpt's INT4 checkpoint
    tensors for TensorRT-LLM: ``(weight uint8 [..., N/2, K], weights_scaling_factor float32
    [..., N, K/G])``; ``weight`` packs the signed codes ``q = code - 8`` of outputs 2i (low
    nibble) and 2i+1 (high nibble), and ``w = q * weights_scaling_factor``."""
    weight, scales = _nibble.to_modelopt(_tensor(tensor)._ref)
    return weight, scales


def fp8_e4m3_encode(x: np.ndarray, saturate: bool = True) -> np.ndarray:
    """float32 -> FP8 e4m3fn bit patterns (uint8), round to nearest even. Overflow saturates to
    +-448 (TensorRT-LLM, CUDA ``__NV_SATFINITE``) or, with ``saturate=False``, gives NaN like
    ``ml_dtypes.float8_e4m3fn`` casts. View the result with ``.view(ml_dtypes.float8_e4m3fn)``."""
    x = _check_array(x, "x", [np.dtype(np.float32)], min_rank=0, allow_empty=True)
    return _nibble.fp8_e4m3_encode(x, _checks.flag(saturate, "saturate"))


def fp8_e4m3_decode(codes: np.ndarray) -> np.ndarray:
    """FP8 e4m3fn bit patterns (uint8) -> float32, exactly."""
    codes = _check_array(codes, "codes", [np.dtype(np.uint8)], min_rank=0, allow_empty=True)
    return _nibble.fp8_e4m3_decode(codes)


# ---- GGUF blocks --------------------------------------------------------------------------------


class GgufType(NamedTuple):
    """A ggml block type: its name (ggml_type_name), type id, weights and bytes per block."""

    name: str
    type_id: int
    block_size: int
    type_size: int


#: The ggml block types nibble implements, by name: q4_0, q4_1, q8_0, q2_K, q4_K, q6_K.
GGUF_TYPES: Dict[str, GgufType] = {row[0]: GgufType(*row) for row in _nibble.gguf_types()}


def _gguf_type(qtype: Union[str, int]) -> GgufType:
    """A GgufType from its name (any case) or its ggml type id (e.g. gguf.GGMLQuantizationType.Q4_K)."""
    if isinstance(qtype, str):
        for name, info in GGUF_TYPES.items():
            if name.lower() == qtype.lower():
                return info
    else:
        type_id = _checks.integer(qtype, "qtype", expected="a ggml type id")  # gguf-py's enum members too
        for info in GGUF_TYPES.values():
            if info.type_id == type_id:
                return info
    known = ", ".join(f"{info.name} ({info.type_id})" for info in GGUF_TYPES.values())
    raise ValueError(f"ggml type {qtype!r} is not implemented (expected one of {known})")


def gguf_quantize(x: np.ndarray, qtype: Union[str, int]) -> np.ndarray:
    """float32 ``[..., K]`` -> uint8 ``[..., K / block_size * type_size]``: each row as ggml blocks of
    ``qtype``, byte for byte llama.cpp's ``quantize_row_*_ref`` (a no-FMA build; Q4_K / Q6_K
    without an imatrix). K must be a multiple of the block size (32, or 256 for K-quants); NaN /
    Inf raise ValueError. The layout of gguf-py's ``gguf.quants.quantize``."""
    _check_array(x, "x", [np.dtype(np.float32)])
    return _nibble.gguf_quantize(x, _gguf_type(qtype).type_id)


def gguf_dequantize(blocks: np.ndarray, qtype: Union[str, int]) -> np.ndarray:
    """uint8 ``[..., n_blocks * type_size]`` ggml blocks of ``qtype`` -> float32
    ``[..., n_blocks * block_size]`` (llama.cpp's ``dequantize_row_*``)."""
    _check_array(blocks, "blocks", [np.dtype(np.uint8)])
    return _nibble.gguf_dequantize(blocks, _gguf_type(qtype).type_id)


# ---- fused projections --------------------------------------------------------------------------


_Fusable = Union[QuantTensor, GptqCheckpoint, AwqCheckpoint]


def _checkpoint_like(template, arrays: tuple):
    """A checkpoint of `template`'s kind and format over arrays from the C++ core."""
    scale_dtype = _FLOAT_DTYPES[template.scales.dtype]
    if isinstance(template, GptqCheckpoint):
        qweight, qzeros, scales, g_idx, sym, desc_act = arrays
        return GptqCheckpoint(
            qweight, qzeros, _checkpoint_scales(scales, scale_dtype), g_idx, template.bits, template.group_size,
            template.zero_format, bool(sym), bool(desc_act),
        )
    qweight, qzeros, scales = arrays
    return AwqCheckpoint(qweight, qzeros, _checkpoint_scales(scales, scale_dtype), template.group_size)


def fused_merge(parts: Sequence[_Fusable]) -> _Fusable:
    """Parts of a fused projection (q, k, v of qkv_proj; gate, up of gate_up_proj), all of one
    kind, merged along their outputs by byte copies (no code is unpacked):

    - :class:`QuantTensor` ``[N_p, K]`` -> ``[sum N_p, K]`` (rows in order; any K);
    - :class:`GptqCheckpoint` / :class:`AwqCheckpoint` -> one checkpoint of ``sum N_p`` outputs
      (columns in order; each N_p a multiple of 32 / bits, resp. 8, so no int32 word straddles
      two parts; GPTQ parts share one g_idx).

    The parts must agree on K, bits, group size, symmetry / zero format, convention and scale
    dtype (ValueError naming the part and the field otherwise)."""
    if not isinstance(parts, (list, tuple)):
        raise TypeError(
            f"parts must be a list or tuple of nibble.QuantTensor, GptqCheckpoint or AwqCheckpoint, "
            f"got {_checks.type_name(parts)}"
        )
    parts = list(parts)
    if not parts:
        raise ValueError("fused_merge: no parts (expected at least one)")
    kind = type(_checks.instance(parts[0], "part 0", (QuantTensor, GptqCheckpoint, AwqCheckpoint), _FUSABLE))
    for index, part in enumerate(parts):
        if type(part) is not kind:
            raise TypeError(
                f"part {index} is a {_checks.type_name(part)} (expected a nibble.{kind.__name__}, as part 0)"
            )
    first = parts[0]
    scale_dtype = _FLOAT_DTYPES.get(first.scales.dtype, "float32")
    if kind is QuantTensor:
        arrays = _nibble.fused_merge([part._ref for part in parts])
        shape = (sum(part.shape[0] for part in parts),) + first.shape[1:]
        return QuantTensor._from_arrays(arrays, shape, first.config, scale_dtype)
    for index, part in enumerate(parts):
        if part.scales.dtype != first.scales.dtype:
            raise TypeError(f"part {index} has {part.scales.dtype} scales (expected {first.scales.dtype}, as part 0)")
    fields = [_checkpoint_fields(part) for part in parts]
    arrays = _nibble.fused_merge_checkpoints("gptq" if kind is GptqCheckpoint else "awq", fields, scale_dtype)
    return _checkpoint_like(first, arrays)


def fused_split(fused: _Fusable, counts: Sequence[int]) -> List[_Fusable]:
    """A fused tensor or checkpoint -> its parts, ``counts[p]`` rows (outputs) each (>= 1, summing
    to N; for checkpoints multiples of the int32 word's outputs), byte copies: ``fused_split(
    fused_merge(parts), [each part's N])`` gives the parts back bit for bit. GPTQ parts keep the
    fused g_idx, sym and desc_act."""
    _checks.instance(fused, "fused", (QuantTensor, GptqCheckpoint, AwqCheckpoint), _FUSABLE)
    counts = _checks.integers(counts, "counts", minimum=1)
    if isinstance(fused, QuantTensor):
        scale_dtype = _FLOAT_DTYPES[fused.scales.dtype]
        return [
            QuantTensor._from_arrays(arrays, (count,) + fused.shape[1:], fused.config, scale_dtype)
            for arrays, count in zip(_nibble.fused_split(fused._ref, counts), counts)
        ]
    fields = _checkpoint_fields(fused)
    scale_dtype = _FLOAT_DTYPES[fused.scales.dtype]
    kind = "gptq" if isinstance(fused, GptqCheckpoint) else "awq"
    return [_checkpoint_like(fused, arrays) for arrays in _nibble.fused_split_checkpoint(kind, fields, scale_dtype, counts)]


def build_info() -> dict:
    """Version, compiler, OpenMP, the CPU kernels compiled in, and the conventions."""
    return dict(_nibble.build_info())
