#!/usr/bin/env python3
"""Writes tests/reference/gguf_vectors.bin: ggml block vectors from gguf-py (the `gguf` package,
llama.cpp's gguf-py/gguf/quants.py), which tests/test_gguf.cpp compares nibble::gguf against.

    pip install gguf numpy && python3 tests/reference/gguf_vectors.py

The committed fixture was written with gguf 0.19.0 and numpy 2.4.6 (both recorded in the file).

Cases:
  - "quantize" cases (types gguf-py can quantize: Q4_0, Q4_1, Q8_0; a K-quant too if the
    installed gguf-py ever implements it): the float32 input row, gguf-py's bytes, and gguf-py's
    dequantization of those bytes. Rows: seeded Gaussians, per-block scales from 1e-4 to 1e3,
    exact rounding ties for each type's rounding rule, and edge blocks (all zero, one huge value,
    a negative / positive extreme, +a / -a ties, constants, fp16-subnormal and fp16-limit scales,
    fp32 subnormals). Signed-zero cases ("signed_zero_*") are where gguf-py and the C reference
    disagree about the sign of a zero scale / min; the test checks that difference explicitly.
  - "dequantize" cases (every type gguf-py dequantizes, Q4_K, Q6_K and Q2_K included): random block
    bytes with finite fp16 fields (normal and subnormal), and gguf-py's dequantization.

Format (little-endian):
  magic b"NBGGUFV1"
  u32 n, n bytes: provenance text ("gguf 0.19.0; numpy 2.4.6")
  u32 number of cases, then per case:
    u32 n, n bytes: name
    u32 ggml type id
    u32 has_input (1: quantize case, 0: dequantize case)
    u32 k (weights in the row)
    if has_input: k float32 input
    u32 n, n bytes: the row's blocks (gguf-py's quantization of the input, or the given bytes)
    k float32: gguf-py's dequantization of those bytes
"""

import argparse
import importlib.metadata
import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

MAGIC = b"NBGGUFV1"
TYPES = {"Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q8_0": T.Q8_0, "Q4_K": T.Q4_K, "Q6_K": T.Q6_K, "Q2_K": T.Q2_K}
LEGACY = ("Q4_0", "Q4_1", "Q8_0")
BLOCK_SIZE = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q6_K": 256, "Q2_K": 256}
# Byte offsets of the fp16 fields of each block (ggml-common.h).
FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208], "Q2_K": [80, 82]}
TYPE_SIZE = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q4_K": 144, "Q6_K": 210, "Q2_K": 84}


def f32(values):
    return np.asarray(values, dtype=np.float32)


def edge_row(rng):
    """Blocks of 32 that probe each quantizer's corners (the same row for every legacy type)."""
    blocks = []
    gauss = lambda: rng.standard_normal(32).astype(np.float32)
    blocks.append(np.zeros(32, np.float32))  # all zero
    b = gauss()
    b[7] = 1000.0  # one huge value
    blocks.append(b)
    b = gauss()
    b[20] = -9.0  # negative extreme: Q4_0's d > 0, that element -> code 0
    blocks.append(b)
    b = gauss()
    b[3] = 9.0  # positive extreme: Q4_0's d < 0
    blocks.append(b)
    b = gauss() * 0.1
    b[2], b[9] = 3.0, -3.0  # +a before -a: the first wins (Q4_0)
    blocks.append(b)
    b = gauss() * 0.1
    b[2], b[9] = -3.0, 3.0
    blocks.append(b)
    blocks.append(np.full(32, 0.7, np.float32))  # constant > 0 (Q4_1: d = 0)
    blocks.append(np.full(32, -0.7, np.float32))  # constant < 0
    blocks.append(gauss() * np.float32(1e-6))  # fp16-subnormal scales
    blocks.append(gauss() * np.float32(1e-9))  # scales that underflow fp16 to 0
    b = gauss() * np.float32(1e3)
    b[0] = -60000.0  # Q4_1: m near the fp16 limit (65504)
    blocks.append(b)
    blocks.append(gauss() * np.float32(1e-40))  # fp32 subnormal inputs
    b = np.zeros(32, np.float32)
    b[31] = -1.0  # a single nonzero element at the end
    blocks.append(b)
    blocks.append(np.linspace(-1, 1, 32, dtype=np.float32))
    return np.concatenate(blocks)


def block32(head, body):
    """One block of 32: `head` then `body` repeated / cut to fill it."""
    body = np.resize(np.asarray(body, np.float32), 32 - len(head))
    return np.concatenate([np.asarray(head, np.float32), body])


def ties_row(name):
    """Inputs whose scaled values land exactly on each type's rounding boundary."""
    if name == "Q4_0":
        # max = -8 -> d = 1, id = 1: x + 8.5 is an integer at every half, truncation = half up.
        a = block32([-8.0], np.arange(-7.5, 8.0, 0.5))
        # max = -4 -> d = 0.5, id = 2: quarter steps double to halves.
        b = block32([-4.0], np.arange(-3.75, 4.0, 0.25))
        # max = +8 -> d = -1, id = -1: the same ties mirrored.
        return np.concatenate([a, b, -a])
    if name == "Q4_1":
        # min = 0, max = 15 -> d = 1, id = 1: (x - 0) + 0.5 is an integer at every half.
        a = block32([0.0, 15.0], np.arange(0.5, 15.0, 0.5))
        # min = -8, max = 7 -> d = 1: x + 8 on halves.
        b = block32([-8.0, 7.0], np.arange(-7.5, 7.0, 0.5))
        return np.concatenate([a, b])
    # Q8_0: amax = 127 -> d = 1, id = 1: roundf takes k + 0.5 away from zero.
    halves = np.arange(-15.5, 16.0, 1.0)
    a = block32([127.0], halves)
    b = block32([-127.0], halves)
    # amax = 63.5 -> d = 0.5, id = 2: x = k / 2 + 1 / 4 doubles to k + 0.5.
    c = block32([63.5], np.arange(-16, 16) / 2 + 0.25)
    return np.concatenate([a, b, c])


def signed_zero_rows():
    rows = {}
    rows["signed_zero_all_negative"] = np.full(32, -0.0, np.float32)
    a = np.zeros(32, np.float32)
    a[0] = -0.0
    rows["signed_zero_first_negative"] = a
    b = np.full(32, -0.0, np.float32)
    b[0] = 0.0
    rows["signed_zero_first_positive"] = b
    return rows


def random_blocks(name, n_blocks, rng):
    """Random block bytes whose fp16 fields are finite (normal or subnormal, either sign)."""
    raw = rng.integers(0, 256, size=(n_blocks, TYPE_SIZE[name]), dtype=np.uint8)
    for offset in FP16_FIELDS[name]:
        sign = rng.integers(0, 2, size=n_blocks).astype(np.uint16) << 15
        exponent = rng.integers(0, 31, size=n_blocks).astype(np.uint16)  # 0 (subnormal) .. 30
        mantissa = rng.integers(0, 1024, size=n_blocks).astype(np.uint16)
        bits = (sign | (exponent << 10) | mantissa).astype("<u2")
        raw[:, offset : offset + 2] = bits.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def can_quantize(qtype):
    try:
        quants.quantize(np.zeros((1, 256), np.float32), qtype)
        return True
    except NotImplementedError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", default=str(here / "gguf_vectors.bin"))
    args = parser.parse_args()

    provenance = "gguf {}; numpy {}".format(importlib.metadata.version("gguf"), np.__version__)
    rng = np.random.default_rng(20240607)
    cases = []  # (name, type name, input or None, bytes)

    def add_quantize(case, name, x):
        x = f32(x).reshape(1, -1)
        cases.append((case, name, x.reshape(-1), quants.quantize(x, TYPES[name]).reshape(-1)))

    edge = edge_row(rng)
    for name in LEGACY:
        add_quantize("gaussian", name, rng.standard_normal(512))
        scales = np.repeat(np.logspace(-4, 3, 8).astype(np.float32), 32)
        add_quantize("scaled_blocks", name, rng.standard_normal(256).astype(np.float32) * scales)
        add_quantize("ties", name, ties_row(name))
        add_quantize("edge", name, edge)
        for case, x in signed_zero_rows().items():
            add_quantize(case, name, x)
    for name in ("Q4_K", "Q6_K", "Q2_K"):
        if can_quantize(TYPES[name]):  # not in gguf 0.19.0; picked up if a later version adds it
            add_quantize("gaussian", name, rng.standard_normal(512))
            add_quantize("edge", name, np.concatenate([edge, edge[:64] * 0]))
    for name in TYPES:
        n_blocks = 8 if name in LEGACY else 6
        cases.append(("random_blocks", name, None, random_blocks(name, n_blocks, rng)))

    out = bytearray(MAGIC)
    text = provenance.encode()
    out += struct.pack("<I", len(text)) + text
    out += struct.pack("<I", len(cases))
    for case, name, x, blocks in cases:
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        k = blocks.size // TYPE_SIZE[name] * BLOCK_SIZE[name]
        dequantized = quants.dequantize(blocks.reshape(1, -1), TYPES[name]).astype("<f4")
        label = case.encode()
        out += struct.pack("<I", len(label)) + label
        out += struct.pack("<III", TYPES[name].value, 0 if x is None else 1, k)
        if x is not None:
            assert x.size == k
            out += x.astype("<f4").tobytes()
        out += struct.pack("<I", blocks.size) + blocks.tobytes()
        out += dequantized.reshape(-1).tobytes()
    pathlib.Path(args.out).write_bytes(bytes(out))
    print("{}: {} cases, {} bytes ({})".format(args.out, len(cases), len(out), provenance))


if __name__ == "__main__":
    main()
