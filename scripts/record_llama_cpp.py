"""Record llama.cpp's greedy continuations as test data.

Runs llama-cpp-python (the reference engine) on a GGUF and writes, per
prompt, its prompt tokens and the first N greedy tokens, so the default test
run can check token-exactness without llama-cpp-python installed.

    python scripts/record_llama_cpp.py [--model M.gguf] [--n 48] [--out tests/data/X.json]
                                       [--n-hashes 8] [--no-repack]

--no-repack loads the weights without llama.cpp's extra CPU buffer types
(`use_extra_bufts = false`): no run-time repacking of Q4_0/Q8_0/K-type
weights into interleaved layouts, so its matmuls use the plain per-row dot
products (`vec_dot`) at decode.
"""
import argparse
import json
import os
from pyinfer.default_model import require_default_model  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "List three colors: red,",
    "In 1969, astronauts",
]


def default_model() -> str:
    return require_default_model()


def logits_hashes(llm, prompt_tokens, steps):
    """sha256 of llama.cpp's float32 logits after the prompt (one batch) and
    after each single-token step: a test can then demand bit-identical logits."""
    import hashlib

    import llama_cpp
    import numpy as np

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32)

    llm.reset()
    llm.eval(prompt_tokens)
    hashes = [hashlib.sha256(last_logits().tobytes()).hexdigest()]
    for tok in steps:
        llm.eval([tok])
        hashes.append(hashlib.sha256(last_logits().tobytes()).hexdigest())
    return hashes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-hashes", type=int, default=8,
                    help="record sha256 of the float32 logits after the prompt and this many steps")
    ap.add_argument("--no-repack", action="store_true", help="load without llama.cpp's weight repacking")
    args = ap.parse_args()
    import llama_cpp

    if args.no_repack:
        # llama_cpp.Llama takes its model parameters from this function
        default_params = llama_cpp.llama_cpp.llama_model_default_params

        def params_without_repack():
            p = default_params()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = params_without_repack

    model = args.model or default_model()
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, verbose=False, seed=0)
    records = []
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        out = []
        for t in llm.generate(toks, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            out.append(int(t))
            if len(out) >= args.n or t == llm.token_eos():
                break
        records.append({"prompt": prompt, "prompt_tokens": toks, "greedy": out,
                        "logits_sha256": logits_hashes(llm, toks, out[:args.n_hashes])})
    result = {"model": os.path.basename(model), "llama_cpp_python": llama_cpp.__version__,
              "n_ctx": 512, "repack": not args.no_repack, "records": records}
    out = args.out or os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                   os.path.basename(model).replace(".gguf", ".llama_cpp.json"))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}: {len(records)} prompts")


if __name__ == "__main__":
    main()
