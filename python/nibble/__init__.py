"""nibble: low-bit weight quantization, bit-exact with Olive and ONNX Runtime.

A weight tensor of any rank ``[..., N, K]`` is quantized along its last dimension ``K`` in
groups of ``group_size`` (or one group per row), at 2, 4 or 8 bits, into nibble's canonical
layout, which *is* ONNX Runtime's MatMulNBits / GatherBlockQuantized layout::

    import numpy as np, nibble

    w = np.random.randn(768, 3072).astype(np.float32)            # [N, K]; [E, N, K] works too
    qt = nibble.quantize(w, bits=4, group_size=32, convention="ort")
    w_hat = nibble.dequantize(qt)                                # float32 [N, K]
    y = nibble.gemm(x, qt)                                       # x [M, K] float32 -> [M, N]
    node = nibble.to_matmul_nbits(qt)                            # B, scales, zero_points: views

Conventions name the RTN variant of each tool (``CONVENTIONS``): ``"olive"`` (default, Olive's
WeightQuantizer), ``"ort"`` (ONNX Runtime's MatMulNBits quantizer), ``"ort_gather"`` (its
GatherBlockQuantized quantizer) and ``"ort_weight_only"`` (the numpy RTN the ONNX Runtime GenAI
builder runs). Each is bit-exact with its tool; see docs/formats.md.

Arrays go in and out without copies where the layout allows: results of :func:`quantize` own
C++ buffers, and :func:`to_matmul_nbits` / :func:`to_gather_block_quantized` (uint8) return views
of a tensor's arrays. fp16 is ``numpy.float16``, bf16 is ``ml_dtypes.bfloat16``. Errors from the
C++ core arrive as ``ValueError`` (``TypeError`` for wrong types) with the C++ message.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

from . import _nibble

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
    "to_matmul_nbits",
    "to_gather_block_quantized",
    "build_info",
]


# ---- argument checks ----------------------------------------------------------------------------


def _check_array(value: Any, name: str, dtypes: Sequence[np.dtype], min_rank: int = 1) -> np.ndarray:
    """`value` as the numpy array it must already be: right type, C-contiguous, rank >= min_rank."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(dtype) for dtype in dtypes)
        raise TypeError(f"{name} has dtype {value.dtype} (expected {allowed})")
    if value.ndim < min_rank:
        raise ValueError(f"{name} has rank {value.ndim} (expected rank >= {min_rank})")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{name} is not C-contiguous (strides {value.strides}); pass np.ascontiguousarray({name})"
        )
    return value


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


# ---- the tensor ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What a tensor was quantized to: bits (2, 4, 8), group size (> 0, or PER_CHANNEL),
    symmetric (no zero points stored; implied 2^(bits-1)), and the convention that made it."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    convention: str = "olive"


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
        if config.convention not in CONVENTIONS:
            raise ValueError(f"convention {config.convention!r} is unknown (expected one of {', '.join(CONVENTIONS)})")
        self.qweight = qweight
        self.scales = scales
        self.zeros = zeros
        self.shape = tuple(int(dim) for dim in shape)
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
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"QuantTensor index must be an integer, got {type(index).__name__}")
        if not -self.shape[0] <= index < self.shape[0]:
            raise IndexError(f"index {index} is out of range for the first dimension of {self.shape}")
        return QuantTensor(
            self.qweight[index],
            self.scales[index],
            None if self.zeros is None else self.zeros[index],
            self.shape[1:],
            self.config,
        )

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
    _check_array(weights, "weights", list(_FLOAT_DTYPES))
    weight_dtype = _FLOAT_DTYPES[weights.dtype]
    scale_name = weight_dtype if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype")
    if non_finite not in ("error", "zero"):
        raise ValueError(f"non_finite={non_finite!r} (expected 'error' or 'zero')")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is unknown (expected one of {', '.join(CONVENTIONS)})")
    qweight, scales, zeros = _nibble.quantize(
        _bits16(weights),
        weight_dtype,
        int(bits),
        int(group_size),
        bool(symmetric),
        convention,
        scale_name,
        int(num_threads),
        non_finite == "zero",
    )
    if scale_name != "float32":
        scales = scales.view(_NUMPY_DTYPE[scale_name])
    config = QuantConfig(int(bits), int(group_size), bool(symmetric), convention)
    return QuantTensor(qweight, scales, zeros, weights.shape, config)


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
    _check_array(weights, "weights", list(_FLOAT_DTYPES))
    weight_dtype = _FLOAT_DTYPES[weights.dtype]
    scale_name = weight_dtype if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype")
    if non_finite not in ("error", "zero"):
        raise ValueError(f"non_finite={non_finite!r} (expected 'error' or 'zero')")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is unknown (expected one of {', '.join(CONVENTIONS)})")
    if importance is not None:
        _check_array(importance, "importance", [np.dtype(np.float32)])
    qweight, scales, zeros = _nibble.kquant(
        _bits16(weights),
        weight_dtype,
        int(bits),
        int(group_size),
        bool(symmetric),
        convention,
        scale_name,
        int(num_threads),
        non_finite == "zero",
        str(variant),
        importance,
    )
    if scale_name != "float32":
        scales = scales.view(_NUMPY_DTYPE[scale_name])
    config = QuantConfig(int(bits), int(group_size), bool(symmetric), convention)
    return QuantTensor(qweight, scales, zeros, weights.shape, config)


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
    _check_array(weights, "weights", list(_FLOAT_DTYPES))
    weight_dtype = _FLOAT_DTYPES[weights.dtype]
    scale_name = weight_dtype if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is unknown (expected one of {', '.join(CONVENTIONS)})")
    batches = [calibration] if isinstance(calibration, np.ndarray) else list(calibration)
    for batch in batches:
        _check_array(batch, "calibration", [np.dtype(np.float32)])
    qweight, scales, zeros, g_idx, loss = _nibble.gptq(
        _bits16(weights),
        weight_dtype,
        batches,
        int(bits),
        int(group_size),
        bool(symmetric),
        convention,
        scale_name,
        float(damp_percent),
        int(block_size),
        bool(act_order),
        bool(static_groups),
        bool(fp64),
        int(num_threads),
    )
    if scale_name != "float32":
        scales = scales.view(_NUMPY_DTYPE[scale_name])
    config = QuantConfig(int(bits), int(group_size), bool(symmetric), convention)
    return QuantTensor(qweight, scales, zeros, weights.shape, config), g_idx, float(loss)


def dequantize_gptq(tensor: QuantTensor, g_idx: Optional[np.ndarray]) -> np.ndarray:
    """The float32 weights of a GPTQ result: column j of leading index e uses group
    ``g_idx[e, j]`` (or ``j // group_size`` when g_idx is None)."""
    if g_idx is None:
        return tensor.dequantize().reshape(tensor.shape)
    shape, k = tensor.shape, tensor.shape[-1]
    bits, group = tensor.config.bits, tensor.config.group_size
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


def _calibration_list(calibration) -> list:
    batches = [calibration] if isinstance(calibration, np.ndarray) else list(calibration)
    for batch in batches:
        _check_array(batch, "calibration", [np.dtype(np.float32)])
    return batches


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
    if clip_range not in ("abs_max", "min_max"):
        raise ValueError(f"clip_range={clip_range!r} (expected 'abs_max' or 'min_max')")
    clipped, upper, lower = _nibble.autoclip(
        weights, _calibration_list(calibration), int(bits), int(group_size), bool(symmetric),
        convention, str(solver), str(kquant_variant), int(steps), float(min_ratio),
        clip_range == "min_max", int(num_threads),
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
    return _nibble.awq(
        weights, _calibration_list(calibration), int(bits), int(group_size), bool(symmetric),
        convention, str(solver), str(kquant_variant), int(grid), int(num_threads),
    )


def dequantize(tensor: QuantTensor) -> np.ndarray:
    """The float32 weights a :class:`QuantTensor` stands for, ``(q - z) * s`` per element."""
    return tensor.dequantize()


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes ``[..., K]`` (each < 2^bits) -> uint8 ``[..., ceil(K * bits / 8)]``, low bits first."""
    _check_array(codes, "codes", [np.dtype(np.uint8)])
    return _nibble.pack(codes, int(bits))


def unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """uint8 ``[..., ceil(k * bits / 8)]`` -> uint8 codes ``[..., k]``."""
    _check_array(packed, "packed", [np.dtype(np.uint8)])
    return _nibble.unpack(packed, int(bits), int(k))


# ---- kernels ------------------------------------------------------------------------------------


def gemm(x: np.ndarray, tensor: QuantTensor, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """``Y = X @ dequant(W).T (+ bias)``: x float32 ``[..., K]`` -> float32 ``[..., N]``, where N is
    the product of the weights' leading dimensions. Runs the reference kernel (double accumulation)."""
    _check_array(x, "x", [np.dtype(np.float32)])
    if bias is not None:
        _check_array(bias, "bias", [np.dtype(np.float32)])
    return _nibble.gemm(x, tensor._ref, bias)


def moe_gemm(
    x: np.ndarray, tensor: QuantTensor, expert_ids: np.ndarray, gates: Optional[np.ndarray] = None
) -> np.ndarray:
    """Mixture of experts over weights ``[E, N, K]``: token t of x ``[T, K]`` (float32) is routed to
    the experts ``expert_ids[t, :]`` (int32 ``[T, top_k]``), weighted by ``gates[t, :]`` (float32,
    default 1): ``y[t] = sum_j gates[t, j] * x[t] @ dequant(W[expert_ids[t, j]]).T``, y ``[T, N]``."""
    _check_array(x, "x", [np.dtype(np.float32)], min_rank=2)
    _check_array(expert_ids, "expert_ids", [np.dtype(np.int32)], min_rank=2)
    if gates is not None:
        _check_array(gates, "gates", [np.dtype(np.float32)], min_rank=2)
    return _nibble.moe_gemm(x, tensor._ref, expert_ids, gates)


# ---- ONNX Runtime formats -----------------------------------------------------------------------


def _tensor_proto(name: str, array: np.ndarray, data_type: Optional[int] = None, dims=None):
    """An ONNX TensorProto from raw bytes (bf16 and int4 included), as ONNX Runtime writes them."""
    import onnx

    if data_type is None:
        data_type = {
            np.dtype(np.uint8): onnx.TensorProto.UINT8,
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
    info = _nibble.matmul_nbits(tensor._ref)
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
    if data_type == "uint8":
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
    if data_type in ("int4", "uint4"):
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
    raise ValueError(f"data_type={data_type!r} (expected 'uint8', 'int4' or 'uint4')")


def build_info() -> dict:
    """Version, compiler, OpenMP, the CPU kernels compiled in, and the conventions."""
    return dict(_nibble.build_info())
