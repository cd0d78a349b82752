#!/usr/bin/env python3
"""A synthetic mixture-of-experts model of a real layer shape, for speed benchmarks (issue 17).

Real MoE checkpoints are tens of gigabytes; their speed depends on their layer shapes,
not on their weights. This writes a Hugging Face checkpoint with the layer sizes of a
real model (``SHAPES``: OLMoE-1B-7B, Qwen3-30B-A3B) but only a few layers and random
weights, converts it to an F16 GGUF and quantizes that, so both engines of
scripts/bench_moe.py read the same file. Into ``--out/<shape>/``:

* ``hf/``: config.json (a fixture's config of tests/data/moe/ with the shape's sizes),
  the fixture's tiny tokenizer (byte-level BPE, 320 tokens: the vocabulary is the
  fixture's, not the real model's, so the output matmul costs almost nothing here) and
  ``model.safetensors`` (F16, one tensor per expert as real checkpoints have them,
  random: matrices N(0, 1/fan_in), embeddings N(0, 1), norms 1 + N(0, 0.01)),
  written tensor by tensor (memory stays small whatever the shape);
* ``<shape>.f16.gguf``: the checkpoint converted by llama.cpp's ``convert_hf_to_gguf.py``
  (``--llama-cpp`` DIR and ``--hf-python`` PY, a Python with torch) or else by
  pyinfer's own converter;
* ``<shape>.<quant>.gguf``: that file quantized (default Q4_K_M) by llama.cpp's own
  quantizer (``llama_model_quantize`` through ``--llama-cpp-python`` PY) or else by
  pyinfer's quantizer;
* ``manifest.json``: the shape, the seed, which tools made each file, the sizes.

The ``tiny-*`` shapes keep the fixture's own sizes (hidden 32, 8 experts) for the smoke
test. Usage::

    python scripts/make_moe_bench_model.py [--shape olmoe,qwen3moe] [--layers 4] [--out /tmp/moe_bench]
        [--quant q4_k_m] [--llama-cpp VENDOR/llama.cpp --hf-python /tmp/oracle/bin/python]
        [--llama-cpp-python /tmp/clients-real-noamx/bin/python] [--keep-hf] [--keep-f16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "src"))      # last: an installed pyinfer wins
FIXTURES = os.path.join(ROOT, "tests", "data", "moe")

# shape -> (fixture of tests/data/moe whose config and tokenizer are the template, config overrides)
SHAPES: Dict[str, Tuple[str, dict]] = {
    # allenai/OLMoE-1B-7B-0924: 16 layers of these
    "olmoe": ("olmoe", dict(hidden_size=2048, intermediate_size=1024, num_attention_heads=16,
                            num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                            rms_norm_eps=1e-5, max_position_embeddings=4096)),
    # Qwen/Qwen3-30B-A3B: 48 layers of these
    "qwen3moe": ("qwen3moe", dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                  num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                  num_experts=128, num_experts_per_tok=8, rms_norm_eps=1e-6,
                                  max_position_embeddings=4096)),
    "tiny-olmoe": ("olmoe", {}),
    "tiny-qwen3moe": ("qwen3moe", {}),
}
EXPERT_KEYS = ("num_experts", "num_local_experts")


def model_config(shape: str, n_layer: int) -> dict:
    fixture, over = SHAPES[shape]
    with open(os.path.join(FIXTURES, fixture, "hf", "config.json")) as f:
        cfg = json.load(f)
    over = dict(over)
    n_expert = over.pop("num_experts", None)
    cfg.update(over)
    if n_expert is not None:
        for k in EXPERT_KEYS:           # transformers 5 writes one of them, llama.cpp reads either
            if k in cfg:
                cfg[k] = n_expert
    cfg["num_hidden_layers"] = n_layer
    cfg["dtype"] = "float16"
    return cfg


def n_expert_of(cfg: dict) -> int:
    return next(int(cfg[k]) for k in EXPERT_KEYS if k in cfg)


def tensor_shapes(cfg: dict) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape in PyTorch's order) of every weight of the checkpoint, in file order."""
    n_embd, n_vocab = cfg["hidden_size"], cfg["vocab_size"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or n_embd // n_head
    n_ff = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    per_head_norm = cfg["model_type"].startswith("qwen3")   # Qwen3: per-head q/k norms; OLMoE: whole projection
    out = [("model.embed_tokens.weight", (n_vocab, n_embd))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (n_embd,)),
                (p + "self_attn.q_proj.weight", (n_head * hd, n_embd)),
                (p + "self_attn.k_proj.weight", (n_kv * hd, n_embd)),
                (p + "self_attn.v_proj.weight", (n_kv * hd, n_embd)),
                (p + "self_attn.o_proj.weight", (n_embd, n_head * hd)),
                (p + "self_attn.q_norm.weight", (hd,) if per_head_norm else (n_head * hd,)),
                (p + "self_attn.k_norm.weight", (hd,) if per_head_norm else (n_kv * hd,)),
                (p + "post_attention_layernorm.weight", (n_embd,)),
                (p + "mlp.gate.weight", (n_expert_of(cfg), n_embd))]
        for e in range(n_expert_of(cfg)):
            q = f"{p}mlp.experts.{e}."
            out += [(q + "gate_proj.weight", (n_ff, n_embd)), (q + "up_proj.weight", (n_ff, n_embd)),
                    (q + "down_proj.weight", (n_embd, n_ff))]
    out += [("model.norm.weight", (n_embd,)), ("lm_head.weight", (n_vocab, n_embd))]
    return out


def random_tensors(shapes, seed: int) -> Iterator[np.ndarray]:
    """The fixtures' scales (scripts/make_moe_fixtures.py's rescale), as float16."""
    rng = np.random.default_rng(seed)
    for name, shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) == 1:
            x = 1.0 + 0.1 * x
        elif "embed" not in name:
            x *= np.float32(shape[-1] ** -0.5)
        yield x.astype(np.float16)


def write_safetensors(path: str, shapes, tensors: Iterator[np.ndarray]) -> int:
    """The safetensors format (8-byte little-endian header size, JSON header, raw data),
    written one tensor at a time. Returns the bytes of tensor data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for (name, shape), x in zip(shapes, tensors):
            assert x.shape == tuple(shape) and x.dtype == np.float16, name
            f.write(np.ascontiguousarray(x).tobytes())
    return offset


def write_checkpoint(d: str, shape: str, n_layer: int, seed: int) -> dict:
    fixture = SHAPES[shape][0]
    os.makedirs(d, exist_ok=True)
    cfg = model_config(shape, n_layer)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, fixture, "hf", name), d)
    shapes = tensor_shapes(cfg)
    nbytes = write_safetensors(os.path.join(d, "model.safetensors"), shapes, random_tensors(shapes, seed))
    return {"config": cfg, "weight_bytes": nbytes, "n_params": nbytes // 2}


# ---- conversion and quantization -----------------------------------------------------------

# llama.cpp's converter with the fixtures' two answers (scripts/make_arch_oracles.py): the tiny
# tokenizer's pre-tokenizer is GPT-2's, and config.json's raw keys stay visible.
_CONVERT = """
import json, runpy, sys
sys.path.insert(0, {lcpp!r})
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_load = base.ModelBase.load_hparams
def load_hparams(dir_model, is_mistral_format):
    with open(dir_model / "config.json", encoding="utf-8") as f:
        raw = json.load(f)
    return {{**raw, **_load(dir_model, is_mistral_format)}}
base.ModelBase.load_hparams = staticmethod(load_hparams)
sys.argv = ["convert_hf_to_gguf.py", {src!r}, "--outtype", "f16", "--outfile", {out!r}]
runpy.run_path({script!r}, run_name="__main__")
"""

_QUANTIZE = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3].upper())
p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def convert(hf: str, out: str, args) -> str:
    if args.llama_cpp and args.hf_python:
        code = _CONVERT.format(lcpp=args.llama_cpp, src=hf, out=out,
                               script=os.path.join(args.llama_cpp, "convert_hf_to_gguf.py"))
        env = dict(os.environ, PYTHONPATH=os.path.join(args.llama_cpp, "gguf-py"), NO_LOCAL_GGUF="1")
        r = subprocess.run([args.hf_python, "-c", code], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"llama.cpp's converter failed:\n{r.stderr[-3000:]}")
        return "llama.cpp convert_hf_to_gguf.py (--outtype f16)"
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert as pyinfer_convert
    pyinfer_convert(hf, ConvertOptions(out, "f16", threads=args.threads, progress=False))
    return "pyinfer.convert (f16)"


def quantize(src: str, dst: str, args) -> str:
    if args.quant == "f16":
        return "none"
    if args.llama_cpp_python:
        r = subprocess.run([args.llama_cpp_python, "-c", _QUANTIZE, src, dst, args.quant, str(args.threads)],
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(dst):
            raise RuntimeError(f"llama.cpp's quantize failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return f"llama.cpp llama_model_quantize ({args.quant.upper()})"
    from pyinfer.convert.quantize import quantize_file
    quantize_file(src, dst, args.quant, args.threads, progress=False)
    return f"pyinfer.quantize ({args.quant})"


def gguf_types(path: str) -> Dict[str, int]:
    """GGUF tensor type name -> count (pyinfer's reader of GGUF files)."""
    import gguf
    counts: Dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def build(shape: str, args) -> dict:
    d = os.path.join(args.out, shape)
    hf = os.path.join(d, "hf")
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    ck = write_checkpoint(hf, shape, args.layers, args.seed)
    t_hf = time.perf_counter() - t0
    f16 = os.path.join(d, f"{shape}.f16.gguf")
    converter = convert(hf, f16, args)
    t_conv = time.perf_counter() - t0 - t_hf
    final = f16
    quantizer = quantize(f16, os.path.join(d, f"{shape}.{args.quant}.gguf"), args)
    if args.quant != "f16":
        final = os.path.join(d, f"{shape}.{args.quant}.gguf")
    t_quant = time.perf_counter() - t0 - t_hf - t_conv
    cfg = ck["config"]
    manifest = {
        "shape": shape, "template_fixture": SHAPES[shape][0], "n_layer": args.layers, "seed": args.seed,
        "n_embd": cfg["hidden_size"], "n_expert": n_expert_of(cfg), "n_expert_used": cfg["num_experts_per_tok"],
        "n_ff_exp": cfg.get("moe_intermediate_size") or cfg["intermediate_size"],
        "n_head": cfg["num_attention_heads"], "n_head_kv": cfg["num_key_value_heads"],
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        "n_vocab": cfg["vocab_size"], "n_params": ck["n_params"],
        "converter": converter, "quantizer": quantizer, "file": final, "file_bytes": os.path.getsize(final),
        "tensor_types": gguf_types(final),
        "seconds": {"checkpoint": round(t_hf, 1), "convert": round(t_conv, 1), "quantize": round(t_quant, 1)},
    }
    if final != f16 and not args.keep_f16:
        os.unlink(f16)
    if not args.keep_hf:
        shutil.rmtree(hf)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="olmoe", help="comma-separated of: " + ", ".join(SHAPES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default="/tmp/moe_bench")
    ap.add_argument("--quant", default="q4_k_m", help="q4_k_m, q4_k_s, q8_0, ... or f16 (no quantization)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-cpp", default="", help="llama.cpp's source folder (convert_hf_to_gguf.py)")
    ap.add_argument("--hf-python", default="", help="a Python with torch for llama.cpp's converter")
    ap.add_argument("--llama-cpp-python", default="", help="a Python with the real llama-cpp-python (quantizer)")
    ap.add_argument("--keep-hf", action="store_true", help="keep the checkpoint")
    ap.add_argument("--keep-f16", action="store_true", help="keep the F16 GGUF next to the quantized one")
    args = ap.parse_args(argv)
    shapes = [s for s in args.shape.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r} (known: {', '.join(SHAPES)})")
    if args.layers < 1:
        ap.error("--layers must be at least 1")
    os.makedirs(args.out, exist_ok=True)
    for s in shapes:
        m = build(s, args)
        print(f"{s}: {m['file']} ({m['file_bytes'] / 2**20:.1f} MiB, {m['n_params'] / 1e9:.2f} B params, "
              f"{m['tensor_types']}) converter: {m['converter']}; quantizer: {m['quantizer']}; "
              f"seconds {m['seconds']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
