"""``python -m pyinfer.quantize IN.gguf OUT.gguf TYPE``: re-quantize a GGUF / PowerInfer GGUF.

TYPE is one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q6_k. The
implementation lives with the other conversion tools in ``pyinfer.convert.quantize``.
"""
from .convert.cli import quantize_main

if __name__ == "__main__":
    raise SystemExit(quantize_main())
