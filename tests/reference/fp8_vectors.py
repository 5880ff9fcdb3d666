#!/usr/bin/env python3
"""Writes tests/reference/fp8_vectors.bin: FP8 E4M3 ("fn": no inf, NaN 0x7F/0xFF, max 448)
conversions by ml_dtypes, which tests/test_float8.cpp compares nibble's float8.hpp against.

    pip install ml_dtypes numpy && python3 tests/reference/fp8_vectors.py

The committed fixture was written with ml_dtypes 0.7.0 and numpy 2.4.6 (both recorded in it).

Contents:
  - decode: all 256 fp8 codes -> float32 (ml_dtypes float8_e4m3fn astype float32).
  - encode: float32 inputs -> fp8 codes, twice:
      to_nan:   ml_dtypes float8_e4m3fn astype from float32 (overflow and +-inf -> NaN);
      saturate: the same after np.clip(x, -448, 448) (CUDA __NV_SATFINITE / TensorRT-LLM:
                overflow and +-inf -> +-448; np.clip keeps NaN a NaN).
    Inputs: every finite fp8 value; every midpoint between neighbouring fp8 values (exact in
    float32) and the float32 values one ulp either side (nextafter); the same for the midpoint
    between 448 and 480 (464, the overflow tie); +-0; float32 subnormals; values around the fp8
    subnormal range (2^-10 and neighbours, 2^-6 and neighbours); the overflow region 440..520
    in small steps; 1e4, 3.4e38, +-inf, NaN (positive and negative, two payloads); random
    float32 over exponents 2^-30 .. 2^30 (both signs); random bit patterns. Every input also
    appears negated.

Format (little-endian):
  magic b"NBFP8V01"
  u32 n, n bytes: provenance text ("ml_dtypes 0.7.0; numpy 2.4.6")
  256 x u32: float32 bit patterns of codes 0..255 decoded
  u32 m: number of encode inputs
  m x u32: float32 bit patterns of the inputs
  m x u8: to_nan codes
  m x u8: saturate codes
"""

import argparse
import importlib.metadata
import pathlib
import struct

import ml_dtypes
import numpy as np

MAGIC = b"NBFP8V01"
F8 = ml_dtypes.float8_e4m3fn


def f32_bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def from_bits(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def inputs(rng):
    codes = np.arange(256, dtype=np.uint8).view(F8)
    values = codes.astype(np.float32)
    finite_pos = np.sort(values[np.isfinite(values) & (values >= 0)])  # 0 .. 448, 127 values
    parts = [finite_pos]
    # Midpoints between neighbours, plus the overflow tie 464 = (448 + 480) / 2.
    upper = np.append(finite_pos[1:], np.float32(480.0))
    mids = ((finite_pos.astype(np.float64) + upper.astype(np.float64)) / 2).astype(np.float32)
    assert np.all(mids.astype(np.float64) == (finite_pos.astype(np.float64) + upper) / 2)
    parts += [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))]
    parts.append(np.nextafter(finite_pos, np.float32(np.inf)))
    parts.append(np.nextafter(finite_pos[1:], np.float32(0)))
    # fp32 subnormals and the fp8 subnormal / normal boundary.
    parts.append(from_bits([1, 2, 0x3FF, 0x400000, 0x7FFFFF]))
    for edge in (2.0**-10, 2.0**-9, 1.5 * 2.0**-9, 2.0**-7, 2.0**-6, 15.5 * 2.0**-10):
        e = np.float32(edge)
        parts.append(np.array([e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(1))]))
    # Overflow region.
    parts.append(np.arange(440.0, 520.0, 0.25, dtype=np.float32))
    parts.append(np.array([1e4, 65504.0, 3.4e38, np.finfo(np.float32).max, np.inf], np.float32))
    # NaNs: quiet, a payload-only (signalling) pattern.
    parts.append(from_bits([0x7FC00000, 0x7F800001, 0x7FFFFFFF]))
    # Random floats over many exponents, and random bit patterns.
    exponents = rng.uniform(-30, 30, 6000)
    parts.append((rng.uniform(1, 2, 6000) * 2.0**exponents).astype(np.float32))
    parts.append(rng.integers(0, 2**32, 6000, dtype=np.uint64).astype(np.uint32).view(np.float32))
    x = np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])
    x = np.concatenate([x, -x, np.array([0.0, -0.0], np.float32)])
    return x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", default=str(here / "fp8_vectors.bin"))
    args = parser.parse_args()

    provenance = "ml_dtypes {}; numpy {}".format(
        importlib.metadata.version("ml_dtypes"), np.__version__)
    rng = np.random.default_rng(20250301)

    decoded = np.arange(256, dtype=np.uint8).view(F8).astype(np.float32)
    x = inputs(rng)
    with np.errstate(invalid="ignore", over="ignore"):
        to_nan = x.astype(F8).view(np.uint8)
        saturate = np.clip(x, np.float32(-448.0), np.float32(448.0)).astype(F8).view(np.uint8)

    out = bytearray(MAGIC)
    text = provenance.encode()
    out += struct.pack("<I", len(text)) + text
    out += f32_bits(decoded).astype("<u4").tobytes()
    out += struct.pack("<I", x.size)
    out += f32_bits(x).astype("<u4").tobytes()
    out += to_nan.tobytes() + saturate.tobytes()
    pathlib.Path(args.out).write_bytes(bytes(out))
    print("{}: {} inputs, {} bytes ({})".format(args.out, x.size, len(out), provenance))


if __name__ == "__main__":
    main()
