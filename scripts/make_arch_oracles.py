#!/usr/bin/env python3
"""Independent oracles for every architecture (issue 15): tiny random Hugging Face models.

For each architecture of ``ARCHS`` this builds a tiny randomly initialised model
with ``transformers`` from a config, rescales its weights so activations are not
degenerate, and writes into ``tests/data/arch/<name>/``:

* ``hf/``: the checkpoint as ``save_pretrained`` writes it (F32 safetensors and
  config.json), a tiny tokenizer (byte-level BPE tokenizer.json, or a
  SentencePiece tokenizer.model where llama.cpp's converter demands one);
* ``logits.npy``: transformers' float32 logits at every position of
  ``oracle.json``'s token sequence (longer than any sliding window here);
* ``llama_cpp.f32.gguf``: the checkpoint converted by llama.cpp's own
  ``convert_hf_to_gguf.py`` (F32), where llama.cpp has the architecture;
* ``oracle.json``: the tokens, transformers' greedy continuation, llama.cpp's
  greedy continuation on its file (real llama-cpp-python) and its logits error
  against transformers, and how the fixture was made.

Requires the oracle tools, none of which the test suite needs::

    python scripts/make_arch_oracles.py [--only llama,gemma3] \\
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp \\
        --llama-cpp-python /path/to/venv-with-llama-cpp-python/bin/python

run with a Python that has torch, transformers, safetensors, sentencepiece and
tokenizers. The tiny tokenizers are trained here and match none of llama.cpp's
known pre-tokenizer hashes, so llama.cpp's converter runs with its
pre-tokenizer detection answered by the name the tokenizer was built with
(``PRE_TOKENIZER``), and the hyper-parameters it reads through transformers'
AutoConfig get back the keys of config.json that transformers 5 folds away
(GPT-NeoX's ``rotary_pct``, which llama.cpp's converter still reads); nothing
else of it is changed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reference.tiny_hf import train_sentencepiece, write_tokenizer  # noqa: E402

OUT_DIR = os.path.join(ROOT, "tests", "data", "arch")
N_PROMPT = 24          # tokens of the test sequence; every sliding window below is shorter
WINDOW = 8             # the sliding window of the architectures that have one
N_GREEDY = 8           # greedy continuation length
VOCAB = 320
PRE_TOKENIZER = "gpt-2"     # the tiny byte-level BPE tokenizer splits with GPT-2's regex
MIN_MARGIN = 5e-3      # top-1 minus top-2 logit at every greedy step, relative to max |logit|

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


@dataclass
class Arch:
    config: str                     # transformers config class
    model: str                      # transformers model class (architectures[0])
    over: Dict = field(default_factory=dict)      # config values over COMMON
    drop: tuple = ()                # COMMON keys this config does not take
    tokenizer: str = "bpe"          # "bpe" (tokenizer.json) or "spm" (tokenizer.model)
    llama_cpp: bool = True          # llama.cpp's converter knows the architecture
    window: Optional[int] = None    # sliding window the model really uses
    extra_config: Dict = field(default_factory=dict)   # keys added to the saved config.json
    note: str = ""


ARCHS: Dict[str, Arch] = {
    "llama": Arch("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0)),
    "qwen2": Arch("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6)),
    "qwen2_yarn": Arch("Qwen2Config", "Qwen2ForCausalLM",
                       dict(hidden_size=32, max_position_embeddings=128,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                             "original_max_position_embeddings": 32}),
                       note="YaRN (Qwen2.5's long-context scheme), factor 4 over a 32-token original "
                            "context: the 24-token sequence is inside it, but YaRN changes every angle "
                            "and the magnitude from position 0, in transformers and llama.cpp alike; "
                            "hidden 32 keeps it small"),
    "mistral": Arch("MistralConfig", "MistralForCausalLM", dict(rope_theta=1e6, sliding_window=WINDOW),
                    window=WINDOW, note="llama.cpp's converter writes no sliding window for Mistral "
                                        "(its llama architecture has none)"),
    "qwen3": Arch("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, rope_theta=1e6, tie_word_embeddings=True)),
    "gemma3": Arch("Gemma3TextConfig", "Gemma3ForCausalLM",
                   dict(num_hidden_layers=6, hidden_size=32, num_key_value_heads=1, head_dim=16,
                        query_pre_attn_scalar=16, sliding_window=WINDOW, tie_word_embeddings=True),
                   window=WINDOW, note="layers 0-4 sliding, layer 5 global (llama.cpp's default pattern 6); "
                                       "hidden 32 keeps six layers small; head_dim 16 is not hidden/heads"),
    "gemma2": Arch("Gemma2Config", "Gemma2ForCausalLM",
                   dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                        attn_logit_softcapping=4.0, final_logit_softcapping=15.0, tie_word_embeddings=True),
                   tokenizer="spm", window=WINDOW, note="layer 0 sliding, layer 1 global"),
    "phi3": Arch("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=None, original_max_position_embeddings=128),
                 note="llama.cpp disables Phi-3's sliding window, so the model has none"),
    "phi3_longrope": Arch("Phi3Config", "Phi3ForCausalLM",
                          dict(hidden_size=32, max_position_embeddings=1024, original_max_position_embeddings=256,
                               sliding_window=None,
                               rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                "short_factor": [1.0, 1.25, 2.0, 3.5],
                                                "long_factor": [1.5, 3.0, 6.0, 12.0]}),
                          note="LongRoPE (Phi-3-mini-128k's scheme): the test sequence and llama.cpp's "
                               "context (64, padded to 256) stay within original_max_position_embeddings, "
                               "so transformers and llama.cpp both use the short factors, with the "
                               "attention factor of 1024/256; hidden 32 keeps the fixture small"),
    "falcon": Arch("FalconConfig", "FalconForCausalLM",
                   dict(multi_query=True, num_kv_heads=1, parallel_attn=True, new_decoder_architecture=False, bias=False,
                        alibi=False, activation="gelu", tie_word_embeddings=True),
                   drop=("intermediate_size", "num_key_value_heads", "max_position_embeddings"),
                   note="Falcon-7B layout: multi-query, one norm, parallel attention"),
    "falcon40b": Arch("FalconConfig", "FalconForCausalLM",
                      dict(new_decoder_architecture=True, num_kv_heads=2, parallel_attn=True, bias=False,
                           alibi=False, activation="gelu", tie_word_embeddings=True),
                      drop=("intermediate_size", "num_key_value_heads", "max_position_embeddings"),
                      note="Falcon-40B layout (ReluFalcon-40B's): grouped KV, ln_attn and ln_mlp"),
    "opt": Arch("OPTConfig", "OPTForCausalLM",
                dict(ffn_dim=128, word_embed_proj_dim=64, do_layer_norm_before=True, activation_function="relu",
                     enable_bias=True, tie_word_embeddings=True),
                drop=("intermediate_size", "num_key_value_heads"), llama_cpp=False,
                note="llama.cpp has no OPT; PowerInfer's layout"),
    "stablelm": Arch("StableLmConfig", "StableLmForCausalLM",
                     dict(partial_rotary_factor=0.25, use_qkv_bias=True, use_parallel_residual=False)),
    "starcoder2": Arch("Starcoder2Config", "Starcoder2ForCausalLM",
                       dict(use_bias=True, hidden_act="gelu_pytorch_tanh", sliding_window=None,
                            tie_word_embeddings=True)),
    "gptneox": Arch("GPTNeoXConfig", "GPTNeoXForCausalLM",
                    dict(partial_rotary_factor=0.25, use_parallel_residual=True, hidden_act="gelu"),
                    drop=("num_key_value_heads",), extra_config=dict(rotary_pct=0.25),
                    note="config.json also carries rotary_pct, as real GPT-NeoX checkpoints do "
                         "(llama.cpp's converter reads it)"),
}


# ---- the model -----------------------------------------------------------------------------

def build_model(spec: Arch, seed: int):
    import torch
    import transformers

    cfg = {k: v for k, v in COMMON.items() if k not in spec.drop}
    cfg.update(spec.over)
    if "rope_theta" in cfg:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    if cfg.get("partial_rotary_factor") is not None and spec.config in ("StableLmConfig", "GPTNeoXConfig"):
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                  "partial_rotary_factor": cfg.pop("partial_rotary_factor")}
    config = getattr(transformers, spec.config)(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model)(config).eval()
    rescale(model, seed)
    return model


def rescale(model, seed: int) -> None:
    """Weights with unit-scale activations (transformers' 0.02 init leaves a tiny random model
    nearly constant): matrices N(0, 1/fan_in), embeddings N(0, 1), norm scales around their
    neutral value (1, or 0 for the Gemma norms that multiply by 1 + w), biases N(0, 0.1)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1000)
    zero_centred = type(model).__name__.startswith("Gemma")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2 and ("embed" in pname or "wte" in pname or "word_embeddings" in pname):
                p.copy_(noise * (0.5 if "embed_positions" in pname else 1.0))
            elif p.ndim == 2:
                p.copy_(noise / p.shape[1] ** 0.5)
            elif pname.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:                                   # norm scales
                p.copy_((0.0 if zero_centred else 1.0) + 0.1 * noise)


def tokens_for(seed: int) -> List[int]:
    rng = np.random.default_rng(seed + 77)
    return [int(t) for t in rng.integers(3, VOCAB, N_PROMPT)]


def transformers_oracle(model, tokens: List[int]):
    """(float32 logits [T, V] at every position, greedy continuation, smallest relative margin
    between the top two logits over the greedy steps)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
        seq, margins = list(tokens), []
        last = logits[-1]
        for _ in range(N_GREEDY):
            top2 = np.sort(last)[-2:]
            margins.append(float((top2[1] - top2[0]) / np.abs(last).max()))
            seq.append(int(np.argmax(last)))
            last = model(torch.tensor([seq])).logits[0, -1].float().numpy()
    return logits, seq[len(tokens):], min(margins)


def window_effect(model, tokens: List[int], logits: np.ndarray) -> float:
    """How far the logits move when the same weights attend without the window (relative
    max error): evidence that the test sequence really exercises the window."""
    import copy

    import torch

    config = copy.deepcopy(model.config)
    config.sliding_window = 10 ** 6
    wide = type(model)(config).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        full = wide(torch.tensor([tokens])).logits[0].float().numpy()
    return rel_err(full, logits)


def not_degenerate(logits: np.ndarray) -> Optional[str]:
    distinct = len(set(np.argmax(logits, axis=1).tolist()))
    if distinct < 4:
        return f"only {distinct} distinct argmax tokens over {len(logits)} positions"
    if not 0.3 < float(logits.std()) < 30:
        return f"logit std {logits.std():.3g}"
    return None


# ---- files ---------------------------------------------------------------------------------

def save_checkpoint(model, spec: Arch, d: str) -> None:
    model.save_pretrained(d)
    if spec.extra_config:
        path = os.path.join(d, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg.update(spec.extra_config)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
    if spec.tokenizer == "spm":
        with open(os.path.join(d, "tokenizer.model"), "wb") as f:
            f.write(train_sentencepiece(VOCAB))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
                       "tokenizer_class": "GemmaTokenizer"}, f)
    else:
        write_tokenizer(d, VOCAB, tokenizer_class="GPT2Tokenizer")
    gen = os.path.join(d, "generation_config.json")      # transformers' defaults only: nothing to convert
    if os.path.exists(gen):
        os.unlink(gen)


_CONVERT = """
import json, runpy, sys
sys.path.insert(0, {lcpp!r})
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
_load = base.ModelBase.load_hparams
def load_hparams(dir_model, is_mistral_format):
    with open(dir_model / "config.json", encoding="utf-8") as f:
        raw = json.load(f)
    return {{**raw, **_load(dir_model, is_mistral_format)}}
base.ModelBase.load_hparams = staticmethod(load_hparams)
sys.argv = ["convert_hf_to_gguf.py", {src!r}, "--outtype", "f32", "--outfile", {out!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def convert_llama_cpp(lcpp: str, src: str, out: str) -> None:
    code = _CONVERT.format(lcpp=lcpp, pre=PRE_TOKENIZER, src=src, out=out,
                           script=os.path.join(lcpp, "convert_hf_to_gguf.py"))
    env = dict(os.environ, PYTHONPATH=os.path.join(lcpp, "gguf-py"), NO_LOCAL_GGUF="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed:\n{r.stderr[-3000:]}")


_RUN = """
import json, sys
import numpy as np
import llama_cpp
path, tokens, n_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=1)
llm.eval(tokens)
logits = np.array(llm.scores[:len(tokens)], dtype=np.float32)
out = []
for _ in range(n_new):
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out.append(tok)
    llm.eval([tok])
np.save(sys.argv[4], logits)
print(json.dumps({"greedy": out, "version": llama_cpp.__version__}))
"""


def run_llama_cpp(python: str, gguf_path: str, tokens: List[int], tmp: str) -> dict:
    npy = os.path.join(tmp, "lcpp_logits.npy")
    r = subprocess.run([python, "-c", _RUN, gguf_path, json.dumps(tokens), str(N_GREEDY), npy],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"loads": False, "error": r.stderr.strip().splitlines()[-1][:300] if r.stderr else "failed"}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["loads"] = True
    res["logits"] = np.load(npy)
    return res


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |b| (the tests' normalised max error)."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def make(name: str, spec: Arch, args) -> dict:
    import torch
    import transformers

    for seed in range(args.seed, args.seed + 20):
        model = build_model(spec, seed)
        tokens = tokens_for(seed)
        logits, greedy, margin = transformers_oracle(model, tokens)
        why = not_degenerate(logits)
        if why is None and margin >= MIN_MARGIN:
            break
        print(f"  {name}: seed {seed} rejected ({why or f'greedy margin {margin:.3g}'})")
    else:
        raise RuntimeError(f"{name}: no seed gives a usable model")
    d = os.path.join(OUT_DIR, name)
    shutil.rmtree(d, ignore_errors=True)
    hf = os.path.join(d, "hf")
    os.makedirs(hf)
    save_checkpoint(model, spec, hf)
    np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
    oracle = {
        "arch": name, "hf_architecture": spec.model, "seed": seed, "tokens": tokens,
        "sliding_window": spec.window, "note": spec.note,
        "window_effect": round(window_effect(model, tokens, logits), 4) if spec.window else None,
        "transformers": {"version": transformers.__version__, "torch": torch.__version__.split("+")[0],
                         "greedy": greedy, "min_greedy_margin": round(margin, 5),
                         "logit_std": round(float(logits.std()), 4)},
        "llama_cpp": None,
    }
    if spec.llama_cpp:
        gg = os.path.join(d, "llama_cpp.f32.gguf")
        convert_llama_cpp(args.llama_cpp, hf, gg)
        lc = {"file": "llama_cpp.f32.gguf",
              "converter": f"convert_hf_to_gguf.py of llama-cpp-python's sdist, pre-tokenizer answered "
                           f"'{PRE_TOKENIZER}'" if spec.tokenizer == "bpe" else
                           "convert_hf_to_gguf.py of llama-cpp-python's sdist"}
        if args.llama_cpp_python:
            with tempfile.TemporaryDirectory() as tmp:
                run = run_llama_cpp(args.llama_cpp_python, gg, tokens, tmp)
            lc["loads"] = run["loads"]
            if run["loads"]:
                lc["llama_cpp_python"] = run["version"]
                lc["greedy"] = run["greedy"]
                lc["logits_err_vs_transformers"] = round(rel_err(run["logits"], logits), 6)
                lc["greedy_equals_transformers"] = run["greedy"] == greedy
            else:
                lc["error"] = run["error"]
        oracle["llama_cpp"] = lc
    with open(os.path.join(d, "oracle.json"), "w") as f:
        json.dump(oracle, f, indent=1)
    return oracle


def dir_size(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated names of ARCHS (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp's source folder (vendor/llama.cpp of "
                    "llama-cpp-python's sdist), with convert_hf_to_gguf.py, conversion/ and gguf-py/")
    ap.add_argument("--llama-cpp-python", default="",
                    help="a Python with the real llama-cpp-python, to record llama.cpp's greedy tokens")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(ARCHS)
    for n in names:
        if n not in ARCHS:
            ap.error(f"unknown architecture {n!r} (known: {', '.join(ARCHS)})")
    for n in names:
        o = make(n, ARCHS[n], args)
        lc = o["llama_cpp"] or {}
        print(f"{n:11s} seed {o['seed']}  {dir_size(os.path.join(OUT_DIR, n)) / 1024:6.0f} KiB  "
              f"llama.cpp: {'-' if not lc else ('loads' if lc.get('loads') else lc.get('error', 'not run'))}"
              f"  err {lc.get('logits_err_vs_transformers', '-')}  greedy==hf {lc.get('greedy_equals_transformers', '-')}")
    print(f"total {dir_size(OUT_DIR) / 1024 / 1024:.2f} MiB in {OUT_DIR}")


if __name__ == "__main__":
    main()
