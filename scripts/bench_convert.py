#!/usr/bin/env python3
"""Measure the converter on a synthetic checkpoint of real layer shapes.

Writes a random BF16 llama-shaped checkpoint (default: Llama-2-7B layer sizes,
2 layers, 32000-token vocabulary; ~1.3 GB) tensor by tensor, converts it in a
fresh process for each output type, and prints the conversion time and the
peak RSS (VmHWM) above the process's baseline next to the checkpoint size.

    python scripts/bench_convert.py --layers 2 --types q8_0 q4_0 q4_k_m
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reference.tiny_hf import tiny_config, to_bf16_bits, write_tokenizer  # noqa: E402

MEASURE = """
import json, sys
from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
r = convert(sys.argv[1], ConvertOptions(sys.argv[2], sys.argv[3], progress=False))
print(json.dumps({"base": base, "hwm": status("VmHWM"), "seconds": r.seconds, "bytes": r.nbytes}))
"""


def shapes(cfg):
    E, F, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * E // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": (V, E)}
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (E,), p + "self_attn.q_proj.weight": (E, E),
                    p + "self_attn.k_proj.weight": (kv, E), p + "self_attn.v_proj.weight": (kv, E),
                    p + "self_attn.o_proj.weight": (E, E), p + "post_attention_layernorm.weight": (E,),
                    p + "mlp.gate_proj.weight": (F, E), p + "mlp.up_proj.weight": (F, E),
                    p + "mlp.down_proj.weight": (E, F)})
    out.update({"model.norm.weight": (E,), "lm_head.weight": (V, E)})
    return out


def write_checkpoint(d, cfg, seed=0):
    """BF16 safetensors written one tensor at a time (never the whole model in memory)."""
    rng = np.random.default_rng(seed)
    sh = shapes(cfg)
    header, offset = {}, 0
    for name, s in sh.items():
        n = int(np.prod(s)) * 2
        header[name] = {"dtype": "BF16", "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, s in sh.items():
            a = rng.standard_normal(s, dtype=np.float32) * (0.02 if len(s) > 1 else 1.0)
            f.write(to_bf16_bits(a).tobytes())
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_tokenizer(d, cfg["vocab_size"])
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=4096)
    ap.add_argument("--ff", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--types", nargs="+", default=["q8_0", "q4_0"])
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    cfg = tiny_config("llama", vocab_size=args.vocab, hidden_size=args.embd, intermediate_size=args.ff,
                      num_hidden_layers=args.layers, num_attention_heads=args.embd // 128,
                      num_key_value_heads=args.embd // 128)
    work = args.dir or tempfile.mkdtemp(prefix="bench_convert_")
    hf = os.path.join(work, "hf")
    os.makedirs(hf, exist_ok=True)
    size = write_checkpoint(hf, cfg)
    largest = max(int(np.prod(s)) for s in shapes(cfg).values()) * 4
    print(f"checkpoint: {size / 2**20:.0f} MiB BF16, largest tensor {largest / 2**20:.0f} MiB as f32")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for t in args.types:
        out = os.path.join(work, f"m.{t}.gguf")
        r = subprocess.run([sys.executable, "-c", MEASURE, hf, out, t], env=env, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr)
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{t:7s} {m['seconds']:7.1f} s  peak RSS +{(m['hwm'] - m['base']) / 2**20:6.0f} MiB  "
              f"output {m['bytes'] / 2**20:6.0f} MiB")
        os.unlink(out)


if __name__ == "__main__":
    main()
