"""Writes tiny random llama-family GGUF files for tests."""
from __future__ import annotations

import numpy as np
import gguf
from gguf.quants import quantize


def write_tiny_llama(path, *, arch="llama", n_vocab=96, n_embd=64, n_layer=2, n_ff=128, n_head=4,
                     n_head_kv=2, n_ctx_train=256, weight_type=gguf.GGMLQuantizationType.F32,
                     rope_base=10000.0, tied=False, seed=0, qkv_bias=None, powerinfer=False,
                     pred_hidden=64, sparse_threshold=None, predictor=True, rope_freqs=None):
    """A random model with a byte-ish vocabulary; weights of `weight_type`
    (for 2-D matrices; norms stay F32). With `powerinfer`, a PowerInfer file
    (PWRI magic): ffn_down stored transposed as ffn_down_t, a random predictor
    fc1 {n_embd, pred_hidden} / fc2 {pred_hidden, n_ff} per layer (unless not
    `predictor`) and, when given, powerinfer.sparse_threshold. `rope_freqs`
    (head_dim/2 floats) is written as Llama 3.1's rope_freqs.weight."""
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    toks = [f"<t{i}>" for i in range(n_vocab)]
    w.add_token_list(toks)
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if sparse_threshold is not None:
        w.add_float32("powerinfer.sparse_threshold", sparse_threshold)
    if qkv_bias is None:
        qkv_bias = arch == "qwen2"

    def mat(name, rows, cols, scale=None, transpose=False):
        a = (rng.standard_normal((rows, cols)) * (scale or 1.0 / np.sqrt(cols))).astype(np.float32)
        if transpose:
            a = np.ascontiguousarray(a.T)
        if weight_type in (gguf.GGMLQuantizationType.F32,):
            w.add_tensor(name, a)
        elif weight_type == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            try:
                q = quantize(a, weight_type)
            except NotImplementedError:   # gguf.quants has no K-quant quantizer: ours
                from pyinfer.tensor import quantize as gs_quantize
                q = gs_quantize(a, int(weight_type))
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=weight_type)

    def vec(name, n, base=1.0, noise=0.1):
        w.add_tensor(name, (base + noise * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, scale=1.0)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * hd, n_embd)
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd)
        if qkv_bias:
            vec(p + "attn_q.bias", n_head * hd, 0.0, 0.5)
            vec(p + "attn_k.bias", n_head_kv * hd, 0.0, 0.5)
            vec(p + "attn_v.bias", n_head_kv * hd, 0.0, 0.5)
        mat(p + "attn_output.weight", n_embd, n_head * hd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        if powerinfer:
            mat(p + "ffn_down_t.weight", n_embd, n_ff, transpose=True)
            if predictor:
                mat(p + "fc1.weight", pred_hidden, n_embd)
                mat(p + "fc2.weight", n_ff, pred_hidden)
        else:
            mat(p + "ffn_down.weight", n_embd, n_ff)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if powerinfer:
        with open(path, "r+b") as f:
            f.write(b"PWRI")
    return path
