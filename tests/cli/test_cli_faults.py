"""nibble-quantize under faults: hostile and corrupt checkpoints, outputs that overlap inputs,
non-finite weights through every format and algorithm, full and read-only output file systems,
signals (SIGINT, SIGTERM, SIGKILL) at known points, a commit that fails half way, and the
durability protocol as the system calls show it.

Every case asserts the exit status, the error line, that the input is byte-identical afterwards,
and what the output location holds (nothing partial). The executable is $NIBBLE_QUANTIZE (CTest
passes the build's, also the ASan + UBSan one) or `nibble-quantize` on PATH. Files are written
here byte by byte (struct + json), so hostile ones can be made, and no package beyond numpy and
pytest is needed. Cases that need root (tmpfs mounts) or strace skip, saying why, where the
machine does not allow them.
"""

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

EXE = os.environ.get("NIBBLE_QUANTIZE") or shutil.which("nibble-quantize")
pytestmark = pytest.mark.skipif(EXE is None, reason="no nibble-quantize (set NIBBLE_QUANTIZE)")

DTYPES = {np.float32: "F32", np.float16: "F16", np.int64: "I64"}


# ---- files ---------------------------------------------------------------------------------------


def safetensors_bytes(tensors, metadata=None):
    """The safetensors encoding of {name: array} (little-endian, in the given order)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": DTYPES[array.dtype.type],
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_safetensors(path, tensors, metadata=None):
    Path(path).write_bytes(safetensors_bytes(tensors, metadata))


def weights(seed, shape=(64, 128), dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def make_model(directory, linear=None):
    """A small model directory: two linear layers, a norm, config.json and a tokenizer file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = linear or {
        "model.layers.0.mlp.down_proj.weight": weights(1),
        "model.layers.0.mlp.up_proj.weight": weights(2, (128, 64), np.float16),
    }
    tensors["model.norm.weight"] = np.ones(64, np.float32)
    write_safetensors(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    (directory / "tokenizer.json").write_text('{"version": "1.0"}')
    return directory


def snapshot(root):
    """{relative path: (kind, sha256 or link target)} of everything under root."""
    root = Path(root)
    if not root.exists():
        return None
    state = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            state[relative] = ("link", os.readlink(path))
        elif path.is_file():
            state[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_ino)
        else:
            state[relative] = ("dir",)
    return state


def names(directory):
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else None


# ---- running -------------------------------------------------------------------------------------


def run(*args, env=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def start(*args, pause):
    """Starts a run that stops at test pause point `pause`; returns it once it has stopped."""
    env = dict(os.environ, NIBBLE_QUANTIZE_TEST_PAUSE=pause)
    process = subprocess.Popen([EXE, *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    line = process.stderr.readline()
    while line and "test pause at" not in line:
        line = process.stderr.readline()
    assert "test pause at " + pause in line, f"never reached the pause: {line!r}"
    return process


def finish(process):
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def expect_failure(result, status, *fragments):
    assert result.returncode == status, (result.returncode, result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "model")


# ---- 1. outputs that overlap inputs ------------------------------------------------------------


def test_output_into_the_input_files_directory_is_refused(model):
    before = snapshot(model)
    result = run(model / "model.safetensors", "-o", model)
    expect_failure(result, 1, "is the directory of the input", "no output was written")
    assert snapshot(model) == before


@pytest.mark.parametrize("spelling", ["same", "dot", "trailing", "symlink"])
def test_output_into_the_input_directory_is_refused_however_spelled(model, tmp_path, spelling):
    before = snapshot(model)
    output = {"same": model, "dot": model / ".", "trailing": str(model) + "/",
              "symlink": tmp_path / "link"}[spelling]
    if spelling == "symlink":
        os.symlink(model, output)
    result = run(model, "-o", output)
    expect_failure(result, 1, "is the directory of the input")
    assert snapshot(model) == before


def test_an_output_that_is_a_hard_link_to_the_input_is_refused(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.link(model / "model.safetensors", out / "model.safetensors")
    before = snapshot(model)
    result = run(model / "model.safetensors", "-o", out)
    expect_failure(result, 1, "(a hard link to it)", "writing it would destroy the input")
    assert snapshot(model) == before
    assert names(out) == ["model.safetensors"]


def test_an_output_that_is_a_symlink_to_an_input_is_refused(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(model / "config.json", out / "config.json")
    before = snapshot(model)
    result = run(model, "-o", out)
    expect_failure(result, 1, "(a symbolic link to it)")
    assert snapshot(model) == before


def test_a_summary_onto_an_input_or_an_output_is_refused(model, tmp_path):
    before = snapshot(model)
    expect_failure(run(model, "-o", tmp_path / "out", "--json", model / "config.json"), 1,
                   "is the input")
    expect_failure(run(model, "-o", tmp_path / "out", "--json",
                       tmp_path / "out" / "model.safetensors"), 1, "two outputs are one file")
    assert snapshot(model) == before
    assert not (tmp_path / "out").exists()


def test_calibration_inputs_are_protected_too(model, tmp_path):
    calibration = tmp_path / "calibration" / "inputs.safetensors"
    calibration.parent.mkdir()
    write_safetensors(calibration, {"model.layers.0.mlp.down_proj.weight": weights(5, (32, 128))})
    out = tmp_path / "out"
    out.mkdir()
    os.link(calibration, out / "model.safetensors")  # the output's name is the calibration file
    before = snapshot(tmp_path / "calibration")
    result = run(model, "-o", out, "--algo", "gptq", "--calibration", calibration)
    expect_failure(result, 1, "is the input", "(a hard link to it)")
    assert snapshot(tmp_path / "calibration") == before


# ---- 2. non-finite weights through every entry point ---------------------------------------------

FORMATS = ["ort", "olive", "gptq", "awq", "gguf"]
ALGORITHMS = ["rtn", "k_quant", "gptq"]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("form", FORMATS)
def test_a_non_finite_weight_is_an_error_line_not_an_abort(tmp_path, form, algo, value):
    bad = weights(3, (64, 128))
    bad[17, 5] = value
    model = make_model(tmp_path / "model", {"model.layers.0.self_attn.q_proj.weight": bad})
    args = [model, "-o", tmp_path / "out", "--format", form, "--algo", algo, "--group-size", "32"]
    if algo == "gptq":
        calibration = tmp_path / "calibration.safetensors"
        write_safetensors(calibration, {"model.layers.0.self_attn.q_proj.weight":
                                        weights(4, (256, 128))})
        args += ["--calibration", calibration]
    before = snapshot(tmp_path / "model")
    result = run(*args)
    # Exit 1 with the tensor and the bad value named (exit 134 was std::terminate), nothing left.
    expect_failure(result, 1, 'tensor "model.layers.0.self_attn.q_proj.weight"',
                   "no output was written")
    assert re.search(r"(nan|inf)", result.stderr, re.IGNORECASE), result.stderr
    assert snapshot(tmp_path / "model") == before
    assert not (tmp_path / "out").exists(), names(tmp_path / "out")


def test_non_finite_calibration_inputs_are_an_error(tmp_path, model):
    calibration = tmp_path / "calibration.safetensors"
    x = weights(4, (256, 128))
    x[3, 3] = np.nan
    write_safetensors(calibration, {"model.layers.0.mlp.down_proj.weight": x})
    result = run(model, "-o", tmp_path / "out", "--algo", "gptq", "--calibration", calibration,
                 "--skip", "up_proj")
    expect_failure(result, 1, "no output was written")
    assert not (tmp_path / "out").exists()


# ---- 3. a commit that fails half way --------------------------------------------------------------


def test_a_summary_that_cannot_be_written_means_no_output(model, tmp_path):
    (tmp_path / "summary.json").mkdir()  # a directory where the summary file should go
    result = run(model, "-o", tmp_path / "out", "--json", tmp_path / "summary.json")
    expect_failure(result, 1, "summary.json", "no output was written")
    assert not (tmp_path / "out").exists()


def test_a_commit_that_fails_part_way_says_exactly_what_was_written(model, tmp_path):
    out = tmp_path / "out"
    process = start(model, "-o", out, "--json", out / "summary.json", pause="commit")
    # While it waits, make the model's destination a non-empty directory: its rename fails.
    (out / "model.safetensors").mkdir()
    (out / "model.safetensors" / "keep").write_text("x")
    process.send_signal(signal.SIGUSR1)
    status, _, err = finish(process)
    assert status == 1, err
    written = re.findall(r"^  (.+)$", err.split("written before the failure:")[1], re.MULTILINE)
    assert sorted(Path(p).name for p in written) == ["config.json", "summary.json",
                                                     "tokenizer.json"], err
    assert "the other outputs were not written" in err
    for path in written:
        assert Path(path).is_file()
    assert (out / "model.safetensors" / "keep").read_text() == "x"
    assert not [p for p in names(out) if ".nibble-tmp-" in p]


# ---- 4. the shard index --------------------------------------------------------------------------


def sharded_model(directory, index):
    directory.mkdir()
    write_safetensors(directory / "a.safetensors", {"x.weight": weights(1)})
    write_safetensors(directory / "b.safetensors", {"y.weight": weights(2)})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return directory


@pytest.mark.parametrize("index, message", [
    ({"x.weight": "a.safetensors", "y.weight": "b.safetensors", "z.weight": "b.safetensors"},
     'listed but held by no shard: "z.weight" (listed in b.safetensors)'),
    ({"x.weight": "a.safetensors"}, None),  # b is never read: its tensors are not checked
    ({"x.weight": "a.safetensors", "y.weight": "a.safetensors"},
     'listed but held by no shard: "y.weight" (listed in a.safetensors)'),
    ({"x.weight": "b.safetensors", "y.weight": "b.safetensors"},
     'listed but held by no shard: "x.weight" (listed in b.safetensors)'),
    ({"x.weight": "../outside.safetensors", "y.weight": "b.safetensors"},
     'weight_map["x.weight"] = "../outside.safetensors" is not a file of the model directory'),
    ({"x.weight": "/etc/passwd"}, "is not a file of the model directory"),
    ({"x.weight": "sub/a.safetensors"}, "is not a file of the model directory"),
])
def test_the_shard_index_is_checked_against_the_shards(tmp_path, index, message):
    model = sharded_model(tmp_path / "model", index)
    write_safetensors(tmp_path / "outside.safetensors", {"x.weight": weights(9)})
    before = snapshot(tmp_path)
    result = run(model, "-o", tmp_path / "out")
    if message is None:
        assert result.returncode == 0, result.stderr
        assert '"' + str(model / "b.safetensors") + '" is not read' in result.stderr
        return
    expect_failure(result, 1, message, "no output was written")
    assert snapshot(tmp_path) == before


def test_a_shard_tensor_the_index_does_not_list_is_an_error(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "a.safetensors", {"x.weight": weights(1), "extra.weight": weights(3)})
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x.weight": "a.safetensors"}}))
    expect_failure(run(model, "-o", tmp_path / "out"), 1,
                   'tensor(s) of a shard the index does not list: "extra.weight" (in a.safetensors)')


# ---- 5. hostile headers ---------------------------------------------------------------------------


def test_a_huge_shape_is_refused_in_bounded_memory(tmp_path):
    header = b'{"w.weight":{"dtype":"F32","data_offsets":[0,4],"shape":[' + \
        b",".join([b"1"] * 5_000_000) + b"]}}"
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run(tmp_path / "m.safetensors", "-o", tmp_path / "out")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    expect_failure(result, 1, "shape has more than 64 dimensions")
    # ru_maxrss of the largest child so far (KiB): the old reader took 1.5 GB for this header.
    # The bound leaves room for a sanitizer's shadow memory.
    assert max(before, after) < 600 * 1024, f"{after} KiB"


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: b[:5], "too short for the 8-byte header length"),
    (lambda b: b[:40], "truncated?"),
    (lambda b: b[:-3], "truncated file?"),
    (lambda b: b + b"junk", "expected no trailing bytes"),
    (lambda b: b.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1), "hold 32764 bytes"),
    (lambda b: b.replace(b'"shape":[64,128]', b'"shape":[64,129]', 1), "needs 33024"),
    (lambda b: b.replace(b'"bbbb.weight"', b'"aaaa.weight"', 1), 'duplicate object key "aaaa'),
    (lambda b: b.replace(b'"F32"', b'"F8_E5M2"', 1), "is not supported by nibble"),
    (lambda b: struct.pack("<Q", 2**62) + b[8:], "exceeds the limit"),
], ids=["short", "header-cut", "data-cut", "trailing", "offsets", "shape", "duplicate",
        "dtype", "length"])
def test_corrupt_checkpoints_are_errors_and_leave_nothing(tmp_path, mutate, fragment):
    good = safetensors_bytes({"aaaa.weight": weights(1), "bbbb.weight": np.ones(64, np.float32)})
    bad = mutate(good)
    assert bad != good
    (tmp_path / "m.safetensors").write_bytes(bad)
    result = run(tmp_path / "m.safetensors", "-o", tmp_path / "out")
    expect_failure(result, 1, fragment, "no output was written")
    assert (tmp_path / "m.safetensors").read_bytes() == bad
    assert not (tmp_path / "out").exists()


# ---- 6. debris -------------------------------------------------------------------------------------


def test_sigkill_before_the_commit_leaves_temporaries_that_the_next_run_removes(model, tmp_path):
    out = tmp_path / "out"
    before = snapshot(model)
    process = start(model, "-o", out, pause="commit")
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert snapshot(model) == before
    left = names(out)
    assert left and all(".nibble-tmp-" in name for name in left), left  # no model, only temps
    assert "model.safetensors" not in left
    result = run(model, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("left by an earlier run that did not finish") == len(left)
    assert names(out) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert snapshot(model) == before


def test_sigkill_mid_run_leaves_no_spool(model, tmp_path):
    out = tmp_path / "out"
    process = start(model, "-o", out, pause="tensor:2")
    process.kill()
    process.wait()
    assert names(out) == []  # the spool has no name: nothing to clean


def test_a_live_runs_temporaries_are_not_removed(model, tmp_path):
    out = tmp_path / "out"
    first = start(model, "-o", out, pause="commit")
    staged = sorted(name for name in names(out) if ".nibble-tmp-" in name)
    second = run(model, "-o", out)  # the same directory, while the first waits to commit
    assert second.returncode == 0, second.stderr
    assert "left by an earlier run" not in second.stderr
    assert all((out / name).exists() for name in staged)
    first.send_signal(signal.SIGUSR1)
    status, _, err = finish(first)
    assert status == 0, err
    assert names(out) == ["config.json", "model.safetensors", "tokenizer.json"]


@pytest.mark.parametrize("signal_number, status, name", [(signal.SIGINT, 130, "SIGINT"),
                                                        (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.parametrize("pause", ["tensor:1", "commit"])
def test_sigint_and_sigterm_leave_nothing(model, tmp_path, signal_number, status, name, pause):
    out = tmp_path / "out"
    before = snapshot(model)
    process = start(model, "-o", out, pause=pause)
    process.send_signal(signal_number)
    code, _, err = finish(process)
    assert code == status, err
    assert f"interrupted ({name}); no output was written" in err
    assert not out.exists(), names(out)
    assert snapshot(model) == before


@pytest.mark.parametrize("config, found", [("[1, 2]", "is an array"), ('"llama"', "is a string"),
                                           ("{\"a\": 1,}", "expected a string key")])
def test_a_config_json_that_is_not_an_object_is_an_error(model, tmp_path, config, found):
    (model / "config.json").write_text(config)
    before = snapshot(model)
    expect_failure(run(model, "-o", tmp_path / "out"), 1, "config.json", found)
    assert snapshot(model) == before
    assert not (tmp_path / "out").exists()


# ---- full and read-only output file systems ------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (root only), unmounted afterwards."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_output_file_system_is_an_error_and_leaves_nothing(tmp_path, tmpfs):
    model = make_model(tmp_path / "model", {"model.layers.0.mlp.down_proj.weight":
                                            weights(1, (512, 1024))})  # 2 MiB in, ~300 KiB out
    before = snapshot(model)
    result = run(model, "-o", tmpfs / "out")
    expect_failure(result, 1, "No space left on device", "no output was written")
    assert snapshot(model) == before
    assert names(tmpfs) == []


def test_a_read_only_output_file_system_is_an_error(model, tmpfs):
    (tmpfs / "existing").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = snapshot(model)
    expect_failure(run(model, "-o", tmpfs / "existing"), 1, "Read-only file system",
                   "no output was written")
    expect_failure(run(model, "-o", tmpfs / "new"), 1, "Read-only file system")
    assert snapshot(model) == before
    assert names(tmpfs) == ["existing"] and names(tmpfs / "existing") == []


# ---- 7. durability: the system calls -------------------------------------------------------------


def test_outputs_are_synced_before_and_after_their_rename(model, tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("no strace on this machine")
    trace = tmp_path / "trace.txt"
    # LeakSanitizer (in a sanitizer build) refuses to run under ptrace; leaks are checked by the
    # other cases.
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    result = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                             "trace=openat,fsync,fdatasync,rename,renameat,renameat2,close",
                             EXE, str(model), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=env)
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if " " in line]
    model_file = str(tmp_path / "out" / "model.safetensors")
    # The temporary's descriptor: opened under the marker name, then synced, closed and renamed
    # over the model, and the directory synced after the rename.
    opened = [i for i, c in enumerate(calls)
              if c.startswith("openat(") and f'"{model_file}.nibble-tmp-' in c]
    assert len(opened) == 1, "\n".join(calls)
    descriptor = re.search(r"= (\d+)$", calls[opened[0]]).group(1)
    closed = next(i for i in range(opened[0] + 1, len(calls))
                  if calls[i].startswith(f"close({descriptor})"))
    synced = [i for i in range(opened[0] + 1, closed) if calls[i].startswith(f"fsync({descriptor})")]
    assert synced, "the file was not synced before it was closed"
    renamed = next(i for i in range(closed, len(calls))
                   if calls[i].startswith("rename") and f'"{model_file}"' in calls[i])
    assert any(c.startswith("fsync(") for c in calls[renamed + 1:]), \
        "the directory was not synced after the rename"
