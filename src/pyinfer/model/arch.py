"""Architectures: what a GGUF of each `general.architecture` holds and how its layers run.

An architecture is a small declarative description (`Arch`) plus the block function that
runs one layer. The description says which hyper-parameters the file's metadata gives
(beyond the keys every architecture shares, read by `ModelConfig.from_metadata`) and their
defaults, which per-layer tensors it must or may hold (names and shapes: `LAYER_TENSORS`),
and the choices the shared pieces read: RoPE pair layout, FFN activation, embedding
scale, sliding-window layout, attention scale. The block function is the layer's math,
written with the operations of a `LayerBuilder` (model/llama.py: norm, attention, ffn,
add, outputs), e.g. llama's

    x = x + attention(norm(x, attn_norm))
    x = x + ffn(norm(x, ffn_norm))

This module does not load the C library: configuration code and the converters can read
the descriptions (the hyper-parameter keys, the tensor names) without it.

Adding an architecture touches: an `Arch` entry in `ARCHS` (plus a block function here
when its residual structure differs from an existing one), rows in `LAYER_TENSORS` for
tensors no architecture had, fields in `LayerWeights` (model/llama.py) for them, and
`ModelConfig` fields (config.py) for hyper-parameters no architecture had; a new kind of
operation inside attention or the FFN goes into `LayerBuilder`.

Values follow llama.cpp (llama-cpp-python 0.3.36's vendor/llama.cpp: src/models/*.cpp,
llama-model.cpp, llama-hparams.cpp), so that files run as llama.cpp runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import numpy as np

# LayerWeights field -> (tensor name after "blk.{i}.", shape from the config (ggml order)).
# Shapes of None are the file's (checked by the ops that read them).
LAYER_TENSORS: Dict[str, Tuple[str, Optional[Callable[[Any], tuple]]]] = {
    "attn_norm": ("attn_norm.weight", lambda c: (c.n_embd,)),
    "wq": ("attn_q.weight", lambda c: (c.n_embd, c.n_head * c.head_dim)),
    "wk": ("attn_k.weight", lambda c: (c.n_embd, c.n_head_kv * c.head_dim)),
    "wv": ("attn_v.weight", lambda c: (c.n_embd, c.n_head_kv * c.head_dim)),
    "wo": ("attn_output.weight", lambda c: (c.n_head * c.head_dim, c.n_embd)),
    "bq": ("attn_q.bias", lambda c: (c.n_head * c.head_dim,)),
    "bk": ("attn_k.bias", lambda c: (c.n_head_kv * c.head_dim,)),
    "bv": ("attn_v.bias", lambda c: (c.n_head_kv * c.head_dim,)),
    "attn_q_norm": ("attn_q_norm.weight", lambda c: (c.head_dim,)),
    "attn_k_norm": ("attn_k_norm.weight", lambda c: (c.head_dim,)),
    "attn_post_norm": ("post_attention_norm.weight", lambda c: (c.n_embd,)),
    "ffn_norm": ("ffn_norm.weight", lambda c: (c.n_embd,)),
    "w_gate": ("ffn_gate.weight", lambda c: (c.n_embd, c.n_ff)),
    "w_up": ("ffn_up.weight", lambda c: (c.n_embd, c.n_ff)),
    "w_down": ("ffn_down.weight", lambda c: (c.n_ff, c.n_embd)),
    "ffn_post_norm": ("post_ffw_norm.weight", lambda c: (c.n_embd,)),
    # PowerInfer layout (model/sparse.py): ffn_down transposed and the activation predictor
    "w_down_t": ("ffn_down_t.weight", lambda c: (c.n_embd, c.n_ff)),
    "fc1": ("fc1.weight", None),
    "fc2": ("fc2.weight", None),
    # LayerNorm biases, fused QKV, output and FFN biases (falcon, opt, gpt-neox)
    "attn_norm_b": ("attn_norm.bias", lambda c: (c.n_embd,)),
    "attn_norm_2": ("attn_norm_2.weight", lambda c: (c.n_embd,)),   # falcon-40b: ln_attn
    "attn_norm_2_b": ("attn_norm_2.bias", lambda c: (c.n_embd,)),
    "ffn_norm_b": ("ffn_norm.bias", lambda c: (c.n_embd,)),
    "wqkv": ("attn_qkv.weight", lambda c: (c.n_embd, (c.n_head + 2 * c.n_head_kv) * c.head_dim)),
    "bqkv": ("attn_qkv.bias", lambda c: ((c.n_head + 2 * c.n_head_kv) * c.head_dim,)),
    "bo": ("attn_output.bias", lambda c: (c.n_embd,)),
    "b_up": ("ffn_up.bias", lambda c: (c.n_ff,)),
    "b_down": ("ffn_down.bias", lambda c: (c.n_embd,)),
    "b_down_t": ("ffn_down_t.bias", lambda c: (c.n_embd,)),   # PowerInfer OPT: ffn_down's bias
    # mixture of experts (model/moe.py): the router, the experts stacked along ne[2], and the
    # shared expert with its sigmoid gate (qwen2moe; {n_embd, 1} as llama.cpp's converter writes it)
    "ffn_gate_inp": ("ffn_gate_inp.weight", lambda c: (c.n_embd, c.n_expert)),
    "ffn_gate_exps": ("ffn_gate_exps.weight", lambda c: (c.n_embd, c.n_ff_exp, c.n_expert)),
    "ffn_up_exps": ("ffn_up_exps.weight", lambda c: (c.n_embd, c.n_ff_exp, c.n_expert)),
    "ffn_down_exps": ("ffn_down_exps.weight", lambda c: (c.n_ff_exp, c.n_embd, c.n_expert)),
    "ffn_gate_inp_shexp": ("ffn_gate_inp_shexp.weight", lambda c: (c.n_embd, 1)),
    "ffn_gate_shexp": ("ffn_gate_shexp.weight", lambda c: (c.n_embd, c.n_ff_shexp)),
    "ffn_up_shexp": ("ffn_up_shexp.weight", lambda c: (c.n_embd, c.n_ff_shexp)),
    "ffn_down_shexp": ("ffn_down_shexp.weight", lambda c: (c.n_ff_shexp, c.n_embd)),
}
# the norm weights (read as F32, as llama.cpp requires of them)
NORM_TENSORS = frozenset({"attn_norm", "attn_q_norm", "attn_k_norm", "attn_post_norm", "ffn_norm",
                          "ffn_post_norm", "attn_norm_b", "attn_norm_2", "attn_norm_2_b", "ffn_norm_b"})
# a PowerInfer file stores ffn_down transposed: its tensors replace these (model/llama.py)
POWERINFER_REPLACES = {"w_down": "w_down_t", "b_down": "b_down_t"}

LLAMA_TENSORS = frozenset({"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down"})
ATTN_BIASES = frozenset({"bq", "bk", "bv"})
POWERINFER_TENSORS = frozenset({"w_down_t", "fc1", "fc2"})   # ffn_down may then be absent
DENSE_FFN = frozenset({"w_gate", "w_up", "w_down"})
MOE_TENSORS = frozenset({"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})
SHARED_EXPERT = frozenset({"ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"})


@dataclass(frozen=True)
class HParam:
    """One architecture-specific hyper-parameter: ModelConfig `field` from the GGUF key
    `{arch}.{key}`, `default` when the file lacks it; `kind` int or float."""
    field: str
    key: str
    default: Any
    kind: type = float


@dataclass(frozen=True)
class Arch:
    name: str
    block: Callable               # (b: LayerBuilder, layer: LayerWeights, x) -> x: one layer
    tensors: FrozenSet[str] = LLAMA_TENSORS          # LayerWeights fields every layer must hold
    optional: FrozenSet[str] = ATTN_BIASES | POWERINFER_TENSORS   # ... and may hold (PowerInfer's
                                  # FFN tensors: the sparse FFNs of model/sparse.py run on them)
    rope_neox: bool = False       # RoPE pairs (x[i], x[i + n/2]) instead of (x[2i], x[2i + 1])
    ffn_act: str = "silu"         # gated FFN act(gate) * up: "silu", "gelu" (tanh, ggml's) or "relu"
    ffn_gate_both: bool = False   # act(gate) * act(up) (bamboo)
    embd_scale: bool = False      # token embeddings times sqrt(n_embd) (gemma)
    q_prescale: bool = False      # queries times the attention scale before attention (gemma:
                                  # llama.cpp scales Q, then attends with scale 1)
    rms_eps: float = 1e-5         # default of attention.layer_norm_rms_epsilon
    hparams: Tuple[HParam, ...] = ()
    swa_period: int = 0           # with a sliding window and no attention.sliding_window_pattern:
                                  # layer i is local iff i % swa_period < swa_period - 1
    attn_scale: Optional[Callable[[Any], float]] = None   # cfg -> scale (None: 1/sqrt(head_dim))
    norm: str = "rms"             # "rms": RMS norm times the weight (eps cfg.rms_eps); "layer":
                                  # LayerNorm times the weight plus the bias (eps cfg.norm_eps)
    rope: bool = True             # False: no rotary embedding (OPT's positions are learned)
    ffn: str = "gated"            # "gated": down . (act(gate . h) * (up . h)); "plain": down .
                                  # act(up . h + b_up) + b_down. Each kind has a dense builder
                                  # (model/forward.py) and a PowerInfer one (model/sparse.py)
    pos_offset: Optional[int] = None   # learned absolute positions (position_embd.weight): position
                                  # p reads row p + pos_offset (OPT: 2); None: none
    shapes: Tuple[Tuple[str, Callable[[Any], tuple]], ...] = ()   # LAYER_TENSORS shapes this
                                  # architecture's files have instead (phi3: fused gate and up)
    qkv_either: bool = False      # the layer holds attn_qkv or attn_q/k/v (at least one form)
    qk_norm_full: bool = False    # attn_q_norm/attn_k_norm: RMS norms over the whole q and k
                                  # projections (olmoe), not over each head
    moe_tensors: FrozenSet[str] = frozenset()   # an MoE layer's FFN tensors, held in place of the
                                  # dense FFN's (w_gate, w_up, w_down) when the file has experts
                                  # (expert_count > 0); empty: the architecture has no MoE form
    moe_only: bool = False        # expert_count must be > 0 (llama.cpp refuses such files without)

    def shape(self, field: str) -> Optional[Callable[[Any], tuple]]:
        """The expected shape of LayerWeights `field` (a function of the config)."""
        return dict(self.shapes).get(field, LAYER_TENSORS[field][1])

    def layer_tensors(self, n_expert: int) -> Tuple[FrozenSet[str], FrozenSet[str]]:
        """(LayerWeights fields every layer must hold, fields it may hold) in a file with
        `n_expert` experts: an MoE layer holds moe_tensors instead of the dense FFN (and no
        PowerInfer predictor)."""
        if n_expert and self.moe_tensors:
            return self.tensors - DENSE_FFN | self.moe_tensors, self.optional - POWERINFER_TENSORS
        return self.tensors, self.optional


def _f32_inv_sqrt(x: float) -> float:
    """1.0f / sqrtf(x) in float32, as llama.cpp computes its attention scales."""
    return float(np.float32(1.0) / np.sqrt(np.float32(x)))


def _gemma_attn_scale(n_layer_27b: int) -> Callable[[Any], float]:
    # llama.cpp (after gemma_pytorch's config): the 27B model (Gemma 2: 46 layers, Gemma 3:
    # 62) scales by 1/sqrt(n_embd / n_head), the others by 1/sqrt(head_dim);
    # query_pre_attn_scalar is not read from the file
    def scale(cfg) -> float:
        if cfg.n_layer == n_layer_27b:
            return _f32_inv_sqrt(float(cfg.n_embd // cfg.n_head))
        return _f32_inv_sqrt(float(cfg.head_dim))
    return scale


gemma2_attn_scale = _gemma_attn_scale(46)
gemma3_attn_scale = _gemma_attn_scale(62)


def phi3_attn_scale(cfg) -> float:
    return _f32_inv_sqrt(float(cfg.head_dim))    # 1.0f / sqrtf(head_dim), on Q (q_prescale)


def llama_block(b, layer, x):
    """Pre-norm attention and FFN (llama, qwen2, mistral, bamboo; with LayerNorms and their
    biases: opt, gpt-neox without parallel residual)."""
    x = b.add(x, b.attention(layer, b.norm(x, layer.attn_norm, layer.attn_norm_b)))
    x = b.outputs(x)
    return b.add(x, b.ffn(layer, x, b.norm(x, layer.ffn_norm, layer.ffn_norm_b)))


def stablelm_block(b, layer, x):
    """StableLM: llama_block with LayerNorms; a model without ffn_norm (StableLM 2 12B) feeds
    the FFN the attention's normed input."""
    h = b.norm(x, layer.attn_norm, layer.attn_norm_b)
    a = b.attention(layer, h)
    x, h = b.add(b.outputs(a), b.outputs(x)), b.outputs(h)
    if layer.ffn_norm is not None:
        h = b.norm(x, layer.ffn_norm, layer.ffn_norm_b)
    return b.add(x, b.ffn(layer, x, h))


def gemma3_block(b, layer, x):
    """Gemma 2/3: pre- and post-norms around attention and the FFN (the residual
    adds the post-normed output); Q/K norms live inside b.attention."""
    a = b.attention(layer, b.norm(x, layer.attn_norm))
    a, x = b.outputs(a), b.outputs(x)
    x = b.add(x, b.norm(a, layer.attn_post_norm))
    h = b.norm(x, layer.ffn_norm)
    return b.add(x, b.norm(b.ffn(layer, x, h), layer.ffn_post_norm))


def falcon_block(b, layer, x):
    """Falcon: attention and MLP side by side on the layer input, x + mlp(n(x)) + attn(n2(x)):
    Falcon-7B normalises once (n2 = n: attn_norm), Falcon-40B has ln_mlp (attn_norm) and ln_attn
    (attn_norm_2). The MLP's predictor (PowerInfer) reads the layer input x."""
    h = b.norm(x, layer.attn_norm, layer.attn_norm_b)
    h_attn = h if layer.attn_norm_2 is None else b.norm(x, layer.attn_norm_2, layer.attn_norm_2_b)
    a = b.outputs(b.attention(layer, h_attn))
    x, h = b.outputs(x), b.outputs(h)
    return b.add(b.add(b.ffn(layer, x, h), a), x)


def gptneox_block(b, layer, x):
    """GPT-NeoX with use_parallel_residual (Pythia's): x + attn(ln1(x)) + mlp(ln2(x));
    without it, llama_block's sequential form."""
    if not b.cfg.parallel_residual:
        return llama_block(b, layer, x)
    a = b.outputs(b.attention(layer, b.norm(x, layer.attn_norm, layer.attn_norm_b)))
    x = b.outputs(x)
    return b.add(b.add(b.ffn(layer, x, b.norm(x, layer.ffn_norm, layer.ffn_norm_b)), x), a)


LN_NORMS = frozenset({"attn_norm", "attn_norm_b"})
PLAIN_FFN = frozenset({"w_up", "w_down"})
PLAIN_FFN_BIASES = frozenset({"b_up", "b_down"})


def moe_hparams(norm: bool) -> Tuple[HParam, ...]:
    """The MoE keys beyond expert_count/expert_used_count (read for every architecture by
    ModelConfig.from_metadata): the experts' FFN sizes (0: n_ff, see ModelConfig) and the
    router's options: `norm` is the architecture's default of expert_weights_norm (the chosen
    experts' weights divided by their sum; llama.cpp hard-codes it per architecture), the
    scale 0 means none, the gating function 0 means llama.cpp's (softmax for these)."""
    return (HParam("n_ff_exp", "expert_feed_forward_length", 0, int),
            HParam("n_ff_shexp", "expert_shared_feed_forward_length", 0, int),
            HParam("expert_weights_norm", "expert_weights_norm", norm, bool),
            HParam("expert_weights_scale", "expert_weights_scale", 0.0),
            HParam("expert_gating_func", "expert_gating_func", 0, int))


ARCHS: Dict[str, Arch] = {a.name: a for a in (
    # Mistral's window: our converter writes llama.attention.sliding_window, every layer local
    # (llama.cpp's converter drops it, and its llama ignores it: such a file attends to all).
    # Mixtral is a llama file with expert_count > 0: its layers hold experts, weights normalised
    Arch("llama", llama_block, hparams=(HParam("n_swa", "attention.sliding_window", 0, int),) + moe_hparams(True),
         moe_tensors=MOE_TENSORS),
    Arch("qwen2", llama_block, rope_neox=True),
    Arch("qwen3", llama_block, tensors=LLAMA_TENSORS | {"attn_q_norm", "attn_k_norm"},
         optional=POWERINFER_TENSORS, rope_neox=True, rms_eps=1e-6),
    # the MoE architectures (llama.cpp: qwen2moe never normalises the top-k weights, qwen3moe
    # always, olmoe never; the file's expert_weights_norm overrides); all softmax routers
    Arch("qwen2moe", llama_block, optional=ATTN_BIASES, rope_neox=True, moe_tensors=MOE_TENSORS | SHARED_EXPERT,
         moe_only=True, hparams=moe_hparams(False)),
    Arch("qwen3moe", llama_block, tensors=LLAMA_TENSORS | {"attn_q_norm", "attn_k_norm"}, optional=frozenset(),
         rope_neox=True, rms_eps=1e-6, moe_tensors=MOE_TENSORS, moe_only=True, hparams=moe_hparams(True)),
    Arch("olmoe", llama_block, tensors=LLAMA_TENSORS | {"attn_q_norm", "attn_k_norm"}, optional=frozenset(),
         rope_neox=True, qk_norm_full=True, moe_tensors=MOE_TENSORS, moe_only=True, hparams=moe_hparams(False),
         shapes=(("attn_q_norm", lambda c: (c.n_head * c.head_dim,)),
                 ("attn_k_norm", lambda c: (c.n_head_kv * c.head_dim,)))),
    # PowerInfer's ReLU Mistral: relu(gate) * relu(up)
    Arch("bamboo", llama_block, ffn_act="relu", ffn_gate_both=True),
    Arch("gemma3", gemma3_block,
         tensors=LLAMA_TENSORS | {"attn_q_norm", "attn_k_norm", "attn_post_norm", "ffn_post_norm"},
         optional=frozenset(), rope_neox=True, ffn_act="gelu", embd_scale=True, q_prescale=True,
         rms_eps=1e-6, swa_period=6, attn_scale=gemma3_attn_scale,
         hparams=(HParam("n_swa", "attention.sliding_window", 0, int),
                  HParam("rope_freq_base_swa", "rope.freq_base_swa", 10000.0),
                  HParam("final_logit_softcap", "final_logit_softcapping", 0.0))),
    # Gemma 2: Gemma 3's block without Q/K norms; soft-capped attention scores and logits,
    # every other layer local (window 4096 unless the file says); the local layers' RoPE
    # base is rope.freq_base unless rope.freq_base_swa says (None: that)
    Arch("gemma2", gemma3_block, tensors=LLAMA_TENSORS | {"attn_post_norm", "ffn_post_norm"},
         optional=frozenset(), rope_neox=True, ffn_act="gelu", embd_scale=True, q_prescale=True,
         rms_eps=1e-6, swa_period=2, attn_scale=gemma2_attn_scale,
         hparams=(HParam("n_swa", "attention.sliding_window", 4096, int),
                  HParam("rope_freq_base_swa", "rope.freq_base_swa", None),
                  HParam("attn_logit_softcap", "attn_logit_softcapping", 50.0),
                  HParam("final_logit_softcap", "final_logit_softcapping", 30.0))),
    # Phi-3: fused QKV (or separate), ffn_up holding the gate rows then the up rows (SwiGLU of
    # the halves), LongRoPE factors (rope_factors_short/long, model/llama.py) and magnitude;
    # its window is ignored, as llama.cpp does
    Arch("phi3", llama_block, tensors=frozenset({"attn_norm", "wo", "ffn_norm", "w_up", "w_down"}),
         optional=frozenset({"wqkv", "wq", "wk", "wv"}), qkv_either=True, rope_neox=True,
         q_prescale=True, attn_scale=phi3_attn_scale,
         shapes=(("w_up", lambda c: (c.n_embd, 2 * c.n_ff)),)),
    Arch("stablelm", stablelm_block, tensors=LN_NORMS | LLAMA_TENSORS - {"ffn_norm"},
         optional=ATTN_BIASES | {"ffn_norm", "ffn_norm_b"}, rope_neox=True, norm="layer"),
    Arch("starcoder2", llama_block,
         tensors=LN_NORMS | {"wq", "wk", "wv", "wo", "bo", "ffn_norm", "ffn_norm_b"} | ATTN_BIASES | PLAIN_FFN
         | PLAIN_FFN_BIASES,
         optional=frozenset(), rope_neox=True, ffn_act="gelu", norm="layer", ffn="plain"),
    # Falcon 7B/40B (fused QKV as llama.cpp's converter regroups it); PowerInfer's ReluFalcon is a
    # PWRI falcon file, whose FFN is relu(up) (model/sparse.py)
    Arch("falcon", falcon_block, tensors=LN_NORMS | {"wqkv", "wo"} | PLAIN_FFN,
         optional=frozenset({"attn_norm_2", "attn_norm_2_b", "bqkv", "bo", "b_down_t"}) | PLAIN_FFN_BIASES
         | POWERINFER_TENSORS,
         rope_neox=True, ffn_act="gelu", norm="layer", ffn="plain"),
    # OPT in PowerInfer's layout (llama.cpp has no OPT): learned positions, ReLU MLP, biases everywhere
    Arch("opt", llama_block,
         tensors=LN_NORMS | LLAMA_TENSORS - {"attn_norm", "w_gate"} | ATTN_BIASES | {"bo", "ffn_norm_b"}
         | PLAIN_FFN_BIASES,
         optional=POWERINFER_TENSORS | {"b_down_t"}, ffn_act="relu", norm="layer", rope=False, ffn="plain",
         pos_offset=2),
    Arch("gptneox", gptneox_block,
         tensors=LN_NORMS | {"wqkv", "bqkv", "wo", "bo", "ffn_norm", "ffn_norm_b"} | PLAIN_FFN | PLAIN_FFN_BIASES,
         optional=frozenset(), rope_neox=True, ffn_act="gelu", norm="layer", ffn="plain",
         hparams=(HParam("parallel_residual", "use_parallel_residual", True, bool),)),
)}


def get_arch(name: str) -> Arch:
    """The description of architecture `name` (KeyError when unknown: see ARCHS)."""
    return ARCHS[name]


def swa_layers(n_layer: int, period: int) -> Tuple[bool, ...]:
    """llama.cpp's sliding-window layout (llama_hparams::set_swa_pattern, dense last):
    layer i is local iff period == 0 or i % period < period - 1."""
    return tuple(period == 0 or i % period < period - 1 for i in range(n_layer))
