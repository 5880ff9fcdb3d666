"""onnxruntime's side of the peer benchmark (peers.py): times com.microsoft.MatMulNBits the way
nibble_peer and ggml_peer time their kernels, and prints one JSON line.

    python3 bench/peers/ort_peer.py --bits 4 --group 32 --sym 1 --accuracy-level 4 \
        --n 4096 --k 4096 --m 1 --threads 1 --copies 16 --calls 50

The weights are N(0, 0.02), quantized by nibble with the ORT convention (bit-exact with ORT's own
MatMulNBits quantizer, tests/test_ort.cpp) and handed to ORT as its quantizer would write them;
ORT prepacks them (MLAS) when each session is created. One session per copy: call i runs session
i % copies. Each call is one run_with_iobinding on a bound input and output (Python's per-call cost
is in the number: a few microseconds).
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np


def model_bytes(qt, m: int, accuracy_level: int) -> bytes:
    import onnx
    import nibble

    node, initializers = nibble.to_matmul_nbits(qt).make_node(accuracy_level=accuracy_level)
    n, k = qt.shape
    graph = onnx.helper.make_graph(
        [node],
        "matmul_nbits",
        [onnx.helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [m, k])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [m, n])],
        initializer=initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("bits", "group", "sym", "n", "k", "m", "threads", "copies", "calls"):
        parser.add_argument("--" + name, type=int, required=True)
    parser.add_argument("--accuracy-level", type=int, choices=range(5), default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import onnxruntime as ort
    import nibble

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.m, args.k)).astype(np.float32)
    sessions = []
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    weight_bytes = 0
    first = None
    for _ in range(args.copies):
        w = (rng.standard_normal((args.n, args.k)) * 0.02).astype(np.float32)
        qt = nibble.quantize(w, args.bits, args.group, bool(args.sym), convention="ort", scale_dtype=np.float32)
        if first is None:
            first = qt
            weight_bytes = qt.nbytes
        sessions.append(ort.InferenceSession(model_bytes(qt, args.m, args.accuracy_level), options,
                                             providers=["CPUExecutionProvider"]))
    bindings = []
    for session in sessions:
        binding = session.io_binding()
        binding.bind_cpu_input("A", x)
        binding.bind_output("Y", "cpu")
        bindings.append(binding)

    # Correctness before timing: session 0 against the fp64 product of its dequantized weights.
    sessions[0].run_with_iobinding(bindings[0])
    y = bindings[0].copy_outputs_to_cpu()[0]
    reference = x.astype(np.float64) @ nibble.dequantize(first).astype(np.float64).T
    rel_err = float(np.max(np.abs(reference - y)) / max(np.max(np.abs(reference)), 1e-30))
    if rel_err > 0.05:
        print(f"ort_peer: result off by {rel_err:.3g} of max |reference|", file=sys.stderr)
        return 1
    for session, binding in zip(sessions[1:], bindings[1:]):
        session.run_with_iobinding(binding)  # untimed: every copy touched once

    ms = []
    for i in range(args.calls):
        c = i % args.copies
        start = time.perf_counter()
        sessions[c].run_with_iobinding(bindings[c])
        ms.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({
        "peer": "onnxruntime", "ort_version": ort.__version__, "accuracy_level": args.accuracy_level,
        "bits": args.bits, "group": args.group, "sym": bool(args.sym), "n": args.n, "k": args.k,
        "m": args.m, "threads": args.threads, "copies": args.copies, "calls": args.calls,
        "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
        "rel_err": rel_err, "weight_bytes": int(weight_bytes),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
