#!/usr/bin/env python3
"""What a call costs from Python: nibble.gemm (the module's dispatched kernels) against the same
call from C++ (nibble_peer), same shape, weights convention, layout, precision and thread count,
in interleaved rounds (C++, Python, C++, Python, ...). Each side reports the median time of
`calls` calls (after one untimed call); the table gives the medians over rounds, their spread
and the Python / C++ ratio (issue 18's target: <= 1.1 at M = 1 on 4096 x 4096).

    python3 bench/peers/python_overhead.py --nibble build/release/bench/nibble_peer [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import numpy as np

import nibble


def python_side(n, k, m, bits, group, symmetric, activations, threads, layout, calls, seed):
    rng = np.random.default_rng(seed)
    weights = (0.02 * rng.standard_normal((n, k))).astype(np.float32)
    qt = nibble.quantize(weights, bits, group, symmetric, convention="ort", scale_dtype=np.float16)
    tensor = nibble.pack_for_cpu(qt, num_threads=threads) if layout == "packed" else qt
    x = rng.standard_normal((m, k)).astype(np.float32)
    nibble.gemm(x, tensor, activations=activations, num_threads=threads)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        nibble.gemm(x, tensor, activations=activations, num_threads=threads)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), nibble.gemm_isa(tensor, activations)


def cpp_side(binary, n, k, m, bits, group, symmetric, activations, threads, layout, calls):
    command = [binary, "--bits", str(bits), "--group", str(group), "--sym", "1" if symmetric else "0",
               "--act", activations, "--n", str(n), "--k", str(k), "--m", str(m), "--threads", str(threads),
               "--copies", "1", "--calls", str(calls), "--layout", layout]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return result["median_ms"], result["isa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nibble", required=True, help="path of the nibble_peer binary")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--m", default="1,8")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--layouts", default="packed,canonical")
    parser.add_argument("--activations", default="int8,fp32")
    args = parser.parse_args()
    print(f"nibble {nibble.__version__}, 4-bit g32 sym fp16 scales, {args.n} x {args.k}, hot weights, "
          f"{args.rounds} interleaved rounds of {args.calls} calls\n")
    print("| layout | activations | M | threads | isa | C++ ms (min-max) | Python ms (min-max) | Python / C++ |")
    print("|---|---|---|---|---|---|---|---|")
    for layout in args.layouts.split(","):
        for activations in args.activations.split(","):
            for m in (int(v) for v in args.m.split(",")):
                for threads in (int(v) for v in args.threads.split(",")):
                    shape = (args.n, args.k, m, 4, 32, True, activations, threads, layout, args.calls)
                    cpp, python, isas = [], [], set()
                    for _ in range(args.rounds):
                        ms, isa = cpp_side(args.nibble, *shape)
                        cpp.append(ms)
                        isas.add(isa)
                        ms, isa = python_side(*shape, seed=1)
                        python.append(ms)
                        isas.add(isa)
                    c, p = statistics.median(cpp), statistics.median(python)
                    print(f"| {layout} | {activations} | {m} | {threads} | {'/'.join(sorted(isas))} | "
                          f"{c:.3f} ({min(cpp):.3f}-{max(cpp):.3f}) | {p:.3f} ({min(python):.3f}-{max(python):.3f}) "
                          f"| {p / c:.3f} |", flush=True)


if __name__ == "__main__":
    main()
