"""Record llama.cpp's greedy continuations as test data.

Runs llama-cpp-python (the reference engine) on a GGUF and writes, per
prompt, its prompt tokens and the first N greedy tokens, so the default test
run can check token-exactness without llama-cpp-python installed.

    python scripts/record_llama_cpp.py [--model M.gguf | --model gemma3] [--n 48]
                                       [--out tests/data/X.json] [--n-hashes 8] [--n-ctx 512]
                                       [--prompts smollm2|gemma3] [--no-repack]

--model gemma3 is the Gemma 3 270M file pyinfer.default_model.gemma3_path() assembles
from its chunk packages; its prompt set (--prompts gemma3, the default for a gemma3
file) includes prompts longer than its 512-token sliding window and than one 512-token
batch, run with --n-ctx 2048 (the default for it). The prompts are stored in the output.

--tokenizer records llama.cpp's tokenization of a few hundred varied strings instead
(tokenizer_cases; with and without special-token parsing and BOS, and the detokenized
text) to tests/data/<model>.tokenizer.json.

--no-repack loads the weights without llama.cpp's extra CPU buffer types
(`use_extra_bufts = false`): no run-time repacking of Q4_0/Q8_0/K-type
weights into interleaved layouts, so its matmuls use the plain per-row dot
products (`vec_dot`) at decode.

Run it with the interpreter of a virtual environment holding the real llama-cpp-python
(e.g. /tmp/clients-real/bin/python); pyinfer need not be installed there (its
default_model module is read from this checkout).
"""
import argparse
import json
import os
import sys

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "List three colors: red,",
    "In 1969, astronauts",
]


def gemma3_prompts():
    """Short prompts, Gemma's chat turn, and three prompts of about 900, 1600 and 1300
    tokens (past the 512-token window and over several 512-token batches)."""
    para = ("The history of the lighthouse at Cape Verity begins in 1843, when a storm drove three merchant "
            "ships onto the rocks below the headland. The harbour master, Elias Brandt, petitioned the council "
            "for a light, and after two years of arguments about cost the first tower was built from local "
            "granite. ")
    story = "".join(para.replace("1843", str(1843 + i)).replace("three", ["two", "three", "four", "five"][i % 4])
                    for i in range(14)) + "In summary, the lighthouse"
    code = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # step {i}" for i in range(60))
    numbers = "Numbers: " + ", ".join(str(i * 37 % 1000) for i in range(250)) + ". The next number is"
    return [
        "The capital of France is",
        "def fibonacci(n):",
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        "Once upon a time, in a small village,",
        "Translate to French: The weather is nice today.\nFrench:",
        story,
        code + "\n\n# What does f7(3) return?\n# Answer:",
        numbers,
    ]


def tokenizer_cases(n=320):
    """Strings for the tokenizer comparison: hand-picked cases (whitespace runs, numbers,
    code, scripts from Latin to Thai, emoji sequences, combining marks, invisible and
    private-use characters, control bytes, Gemma's special tokens and near-misses), then
    seeded random concatenations of fragments up to `n`."""
    import random
    base = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t  \n\n\n   x",
        "Hello world", " Hello world", "Hello  world", "Hello   world ", "hello\tworld\nnew line",
        "The quick brown fox jumps over the lazy dog.", "I'm sure it's fine—isn't it?", "e.g. i.e. etc.",
        "12345", "3.14159", "1,000,000", "0x1F 0b1010 1e-9", "2024-12-31T23:59:59Z", "+49 (0) 30 123456",
        "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; i++) { sum += a[i]; }", "if __name__ == '__main__':\n\tmain()",
        "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>", "{\"key\": [1, 2, {\"nested\": null}]}",
        "SELECT * FROM users WHERE id = 42;", "$ ls -la | grep '^d' > out.txt 2>&1", "C:\\Users\\name\\file.txt",
        "naïve café résumé façade", "Ünïcödé ÄÖÜ äöü ß", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم",
        "你好，世界！", "こんにちは世界", "안녕하세요 세계", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu",
        "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪", "∑∫∂√∞≈≠≤≥ ∀x∈ℝ", "™©®°±µ¶§", "e\u0301 a\u0308 n\u0303",  # combining marks
        "\u200b\u200c\u200d\ufeff", "\u00a0non\u00a0breaking", "\ue000\uf8ff private use", "\U0001f9ff\U0010fffd",
        "\x01\x02\x1f control", "tab\x0bvt\x0cff",
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>text<eos>", "<pad><mask><unk>",
        "<start_of_turn>", "<end_of_turn>", " <start_of_turn>", "<start_of_turn> ", "x<end_of_turn>y",
        "<unused0><unused1>", "<start_of_image>", "<b>bold</b> <i>it</i>", "<start_of_turn", "start_of_turn>",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ababababababababababab", "!!!!!!!!!!!!????????",
        "................................", "--------------------------------------------------",
        "    indented with four spaces", "\t\tindented with tabs", "trailing spaces    ", "line1\n\n\nline4",
        "ALL CAPS SENTENCE HERE", "camelCaseIdentifier snake_case_identifier kebab-case-id",
        "https://example.com/path?query=1&x=y#frag", "user@example.com", "@mention #hashtag",
        "A.B.C. U.S.A. Mr. Smith", "don't won't can't shouldn't", "''\"\"``", "(((nested)))[[[brackets]]]{{{braces}}}",
    ]
    pieces = ["the", " ", "  ", "\n", "\t", "cat", "Ωμέγα", "日本", "🙂", "123", "4.5", "<start_of_turn>", "<end_of_turn>",
              "def", "(", ")", ":", "\"", "'", "-", "_", "é", "ß", "x", "y", "z", "   ", "\n\n", "...", "!", "?", "中文",
              "<eos>", "\u0301", "\u00a0", "Ab", "zz", "0", "99999", "\r", "€", "¥"]
    rng = random.Random(15)
    cases = list(base)
    while len(cases) < n:
        cases.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return cases


def record_tokenizer(model: str, out: str) -> None:
    """llama.cpp's tokens for each case (special tokens parsed or not, BOS added or not) and
    its detokenization of the special+BOS tokens (plain and with special pieces), as hex."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    records = []
    for text in tokenizer_cases():
        rec = {"text": text}
        for special in (False, True):
            for bos in (False, True):
                rec[f"special={int(special)},bos={int(bos)}"] = llm.tokenize(text.encode(), add_bos=bos,
                                                                              special=special)
        toks = rec["special=1,bos=1"]
        rec["detokenize_hex"] = llm.detokenize(toks).hex()
        rec["detokenize_special_hex"] = llm.detokenize(toks, special=True).hex()
        records.append(rec)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"model": os.path.basename(model), "llama_cpp_python": llama_cpp.__version__, "cases": records},
                  f, ensure_ascii=False, indent=0)
    print(f"wrote {out}: {len(records)} strings")


PROMPT_SETS = {"smollm2": lambda: PROMPTS, "gemma3": gemma3_prompts}


def default_model() -> str:
    from pyinfer.default_model import require_default_model
    return require_default_model()


def resolve_model(name):
    if name == "gemma3":
        from pyinfer.default_model import require_gemma3
        return require_gemma3()
    return name or default_model()


def file_arch(path: str) -> str:
    import llama_cpp
    return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False).metadata.get("general.architecture", "")


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
    ap.add_argument("--model", default=None, help="a GGUF path, or 'gemma3' (default: SmolLM2)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-hashes", type=int, default=8,
                    help="record sha256 of the float32 logits after the prompt and this many steps")
    ap.add_argument("--n-ctx", type=int, default=None, help="context size (default 512; 2048 for gemma3)")
    ap.add_argument("--prompts", choices=sorted(PROMPT_SETS), default=None,
                    help="prompt set (default: gemma3 for a gemma3 file, else smollm2)")
    ap.add_argument("--no-repack", action="store_true", help="load without llama.cpp's weight repacking")
    ap.add_argument("--tokenizer", action="store_true",
                    help="record the tokenizer comparison instead (tests/data/<model>.tokenizer.json)")
    args = ap.parse_args()
    import llama_cpp

    if args.tokenizer:
        model = resolve_model(args.model)
        out = args.out or os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                       os.path.basename(model).replace(".gguf", ".tokenizer.json"))
        record_tokenizer(model, out)
        return

    if args.no_repack:
        # llama_cpp.Llama takes its model parameters from this function
        default_params = llama_cpp.llama_cpp.llama_model_default_params

        def params_without_repack():
            p = default_params()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = params_without_repack

    model = resolve_model(args.model)
    gemma = file_arch(model) == "gemma3"
    prompt_set = args.prompts or ("gemma3" if gemma else "smollm2")
    n_ctx = args.n_ctx or (2048 if gemma else 512)
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=2, verbose=False, seed=0)
    records = []
    for prompt in PROMPT_SETS[prompt_set]():
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
              "n_ctx": n_ctx, "n_batch": llm.n_batch, "swa_full": bool(llm.context_params.swa_full),
              "repack": not args.no_repack, "records": records}
    out = args.out or os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                   os.path.basename(model).replace(".gguf", ".llama_cpp.json"))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}: {len(records)} prompts")


if __name__ == "__main__":
    main()
