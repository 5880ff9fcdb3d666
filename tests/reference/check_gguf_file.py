#!/usr/bin/env python3
"""Opens a GGUF file with gguf-py (llama.cpp's gguf-py/gguf: GGUFReader, gguf.quants) as the
independent reader of files nibble's GgufWriter (include/nibble/io/gguf_file.hpp) writes.

    pip install gguf==0.19.0 numpy
    python3 tests/reference/check_gguf_file.py FILE.gguf
        prints a JSON description: version, alignment, data offset, metadata (gguf-py's type
        names and values), tensors (name, type, shape in ggml order = ne, absolute data offset,
        byte count)
    python3 tests/reference/check_gguf_file.py FILE.gguf --expect EXPECT.json
        compares the file against EXPECT.json and exits 1 on any difference:
          {"alignment": 64,
           "metadata": {"KEY": {"type": "UINT32", "value": 15},
                        "KEY2": {"type": "ARRAY", "element_type": "STRING", "value": [...]}},
           "tensors": [{"name": ..., "type": "Q4_K", "shape": [512, 3] (ggml order),
                        "offset": absolute file offset, "n_bytes": ...,
                        "dequantized": "0.f32" (optional; little-endian float32, numel values,
                                         row-major; path relative to EXPECT.json)}]}
        Metadata must match exactly, key for key and in order (f32 values compared as float32,
        f64 as float64); tensors in file order; "dequantized" must equal
        gguf.quants.dequantize of the tensor's bytes bit for bit.

The C++ side: NIBBLE_GGUF_EXPORT_DIR=DIR ./test_gguf_file --gtest_filter='*ExportForGgufPy'
writes DIR/sample.gguf, DIR/expect.json and DIR/<i>.f32 (every metadata value type, and F32,
F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K tensors quantized by nibble); then
    python3 tests/reference/check_gguf_file.py DIR/sample.gguf --expect DIR/expect.json
"""

import argparse
import json
import pathlib
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf import quants

SCALAR_DTYPES = {
    "UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
    "UINT32": np.uint32, "INT32": np.int32, "UINT64": np.uint64, "INT64": np.int64,
    "FLOAT32": np.float32, "FLOAT64": np.float64,
}


def field_value(field):
    """(type name, element type name or None, Python value) of a metadata field."""
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        if len(field.types) > 1:
            element = field.types[-1]
        else:
            # An empty array: gguf-py records no element type in `types`; the raw u32 follows
            # the key length, key and value type in `parts`.
            element = GGUFValueType(int(field.parts[3][0]))
        return "ARRAY", element.name, field.contents()
    return main.name, None, field.contents()


def describe(reader):
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # gguf-py's pseudo fields: version, counts
            continue
        type_name, element, value = field_value(field)
        entry = {"type": type_name, "value": value}
        if element is not None:
            entry["element_type"] = element
        metadata[name] = entry
    tensors = [{
        "name": tensor.name,
        "type": tensor.tensor_type.name,
        "shape": [int(extent) for extent in tensor.shape],
        "offset": int(tensor.data_offset),
        "n_bytes": int(tensor.n_bytes),
    } for tensor in reader.tensors]
    return {
        "version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }


def same_value(type_name, element, expected, actual):
    """Exact comparison; floats at their own width (NaN equal to NaN)."""
    kind = element if type_name == "ARRAY" else type_name
    if type_name == "ARRAY":
        if not isinstance(actual, list) or len(actual) != len(expected):
            return False
        pairs = list(zip(expected, actual))
    else:
        pairs = [(expected, actual)]
    for want, got in pairs:
        if kind in ("FLOAT32", "FLOAT64"):
            dtype = SCALAR_DTYPES[kind]
            want_bits = np.array([want], dtype).view(np.uint64 if kind == "FLOAT64" else np.uint32)
            got_bits = np.array([got], dtype).view(np.uint64 if kind == "FLOAT64" else np.uint32)
            if want_bits[0] != got_bits[0] and not (np.isnan(want) and np.isnan(got)):
                return False
        elif kind == "BOOL":
            if bool(want) != bool(got) or not isinstance(got, (bool, np.bool_)):
                return False
        elif want != got:
            return False
    return True


def check(reader, expect, base_dir):
    failures = []
    checks = 0

    def expect_equal(what, want, got):
        nonlocal checks
        checks += 1
        if want != got:
            failures.append(f"{what}: expected {want!r}, gguf-py read {got!r}")

    expect_equal("alignment", expect["alignment"], int(reader.alignment))
    fields = [(name, field) for name, field in reader.fields.items()
              if not name.startswith("GGUF.")]
    expect_equal("metadata keys (in order)", list(expect["metadata"]), [n for n, _ in fields])
    for name, field in fields:
        if name not in expect["metadata"]:
            continue
        want = expect["metadata"][name]
        type_name, element, value = field_value(field)
        expect_equal(f"metadata {name} type", want["type"], type_name)
        if "element_type" in want:
            expect_equal(f"metadata {name} element type", want["element_type"], element)
        checks += 1
        if not same_value(want["type"], want.get("element_type"), want["value"], value):
            failures.append(f"metadata {name}: expected {want['value']!r}, gguf-py read {value!r}")

    expect_equal("tensor names (in order)", [t["name"] for t in expect["tensors"]],
                 [t.name for t in reader.tensors])
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    for want in expect["tensors"]:
        tensor = by_name.get(want["name"])
        if tensor is None:
            continue
        what = f"tensor {want['name']}"
        expect_equal(f"{what} type", want["type"], tensor.tensor_type.name)
        expect_equal(f"{what} shape (ggml order)", want["shape"], [int(e) for e in tensor.shape])
        if "offset" in want:
            expect_equal(f"{what} offset", want["offset"], int(tensor.data_offset))
        if "n_bytes" in want:
            expect_equal(f"{what} n_bytes", want["n_bytes"], int(tensor.n_bytes))
        if "dequantized" in want:
            nibble_values = np.fromfile(base_dir / want["dequantized"], dtype="<f4")
            gguf_values = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            gguf_values = gguf_values.reshape(-1)
            checks += 1
            if gguf_values.shape != nibble_values.shape:
                failures.append(f"{what} dequantized: {nibble_values.size} values from nibble, "
                                f"{gguf_values.size} from gguf-py")
            elif not np.array_equal(gguf_values.view(np.uint32), nibble_values.view(np.uint32)):
                differ = int(np.count_nonzero(
                    gguf_values.view(np.uint32) != nibble_values.view(np.uint32)))
                failures.append(f"{what} dequantized: {differ} of {gguf_values.size} values "
                                f"differ from gguf.quants.dequantize (bitwise)")
    return checks, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf_file")
    parser.add_argument("--expect", help="JSON of expectations (see the module docstring)")
    args = parser.parse_args()
    reader = GGUFReader(args.gguf_file)
    if args.expect is None:
        json.dump(describe(reader), sys.stdout, indent=2, default=str)
        print()
        return 0
    expect_path = pathlib.Path(args.expect)
    expect = json.loads(expect_path.read_text())
    checks, failures = check(reader, expect, expect_path.parent)
    for failure in failures:
        print("FAIL:", failure)
    print(f"{checks - len(failures)} of {checks} checks passed: {args.gguf_file} read by gguf-py "
          f"{_gguf_version()}")
    return 1 if failures else 0


def _gguf_version():
    try:
        import importlib.metadata
        return importlib.metadata.version("gguf")
    except Exception:  # noqa: BLE001 - informational only
        return "(unknown version)"


if __name__ == "__main__":
    sys.exit(main())
