"""Record what llama-cpp-python's `Llama` API gives on a GGUF, as test data for pyinfer.Llama.

Writes the model's metadata dict, token ids of BOS/EOS/newline, the context sizes it uses for
some requested n_ctx, the chat format it picks, and for each chat format and message list the
prompt tokens and stop strings its chat handler passes to create_completion (the completion
itself is not run: the handler's call is captured). The default test run compares against
this file without llama-cpp-python installed.

    python scripts/record_llama_cpp_api.py [--model M.gguf] [--out tests/data/X.json]
"""
import argparse
import json
import os
from pyinfer.default_model import require_default_model  # noqa: E402

CHAT_FORMATS = [None, "chatml", "llama-2", "llama-3", "mistral-instruct", "zephyr"]
MESSAGES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": "Ünïcödé 日本語 🙂 and <|im_end|> inside"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hi!"},
     {"role": "user", "content": "  spaced  \n"}],
]
N_CTX_REQUESTS = [100, 256, 300, 1000]


def default_model() -> str:
    return require_default_model()


def capture_chat_prompt(llm, messages, chat_format):
    """The prompt tokens and stop strings the chat handler hands to create_completion."""
    seen = {}

    def fake_completion(**kw):
        seen.update(prompt=list(kw["prompt"]), stop=list(kw["stop"]))
        return {"id": "x", "created": 0, "model": "m", "usage": {},
                "choices": [{"text": "", "logprobs": None, "finish_reason": "stop"}]}

    saved = llm.chat_format
    llm.create_completion = fake_completion
    try:
        if chat_format is not None:
            llm.chat_format = chat_format
        llm.create_chat_completion(messages=messages)
    finally:
        del llm.create_completion
        llm.chat_format = saved
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import llama_cpp

    model = args.model or default_model()
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, verbose=False)
    chats = []
    for fmt in CHAT_FORMATS:
        for messages in MESSAGES:
            chats.append({"chat_format": fmt, "messages": messages,
                          **capture_chat_prompt(llm, messages, fmt)})
    n_ctx = {}
    for n in N_CTX_REQUESTS:
        other = llama_cpp.Llama(model_path=model, n_ctx=n, verbose=False)
        n_ctx[str(n)] = other.n_ctx()
        other.close()
    result = {
        "model": os.path.basename(model), "llama_cpp_python": llama_cpp.__version__,
        "metadata": llm.metadata, "chat_format": llm.chat_format,
        "token_bos": llm.token_bos(), "token_eos": llm.token_eos(), "token_nl": llm.token_nl(),
        "n_vocab": llm.n_vocab(), "n_embd": llm.n_embd(), "n_ctx": n_ctx, "chats": chats,
    }
    out = args.out or os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                   os.path.basename(model).replace(".gguf", ".llama_cpp_api.json"))
    with open(out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    print(f"wrote {out}: {len(chats)} chat prompts")


if __name__ == "__main__":
    main()
