"""LangChain (langchain-community 0.4.2) over `import llama_cpp`: LlamaCpp invoke and stream,
n_gpu_layers=-1, ChatLlamaCpp chat, a bound tool (forced, and streamed), structured output,
LlamaCppEmbeddings (the model's own pooling, and mean pooling). Greedy (temperature 0)."""
from __future__ import annotations

import json
import math

from _report import arguments, backend, expect, feature

PROMPT = "Q: What is the capital of France?\nA:"
QUESTION = "What is the capital of France? Answer in one word."
TEXTS = ["Paris is the capital of France.", "Cats purr."]


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


def main() -> None:
    args = arguments()
    backend()
    from langchain_community.chat_models import ChatLlamaCpp
    from langchain_community.embeddings import LlamaCppEmbeddings
    from langchain_community.llms import LlamaCpp
    from pydantic import BaseModel

    common = dict(model_path=args.model, n_ctx=1024, n_threads=args.threads, verbose=False,
                  temperature=0.0)
    llm = None
    with feature("LlamaCpp.invoke") as r:
        llm = LlamaCpp(max_tokens=16, **common)
        text = llm.invoke(PROMPT)
        r["text"] = text
        expect(isinstance(text, str) and text.strip() != "", f"empty completion {text!r}")
    with feature("LlamaCpp.stream") as r:
        expect(llm is not None, "LlamaCpp did not load")
        chunks = list(llm.stream(PROMPT))
        r["text"], r["chunks"] = "".join(chunks), len(chunks)
        expect(len(chunks) > 1, f"one chunk only: {chunks!r}")
        expect("".join(chunks) == text, f"stream {''.join(chunks)!r} != invoke {text!r} (greedy)")
    with feature("LlamaCpp n_gpu_layers=-1") as r:
        gpu = LlamaCpp(max_tokens=4, n_gpu_layers=-1, **common)
        short = gpu.invoke(PROMPT)
        r["text"] = short
        expect(short != "" and text.startswith(short),
               f"4 greedy tokens {short!r} are not a prefix of the 16-token answer {text!r}")

    chat = None
    with feature("ChatLlamaCpp.invoke") as r:
        chat = ChatLlamaCpp(max_tokens=24, **common)
        msg = chat.invoke([("user", QUESTION)])
        r["text"] = msg.content
        expect(isinstance(msg.content, str) and msg.content.strip() != "", f"empty reply {msg!r}")
    with feature("ChatLlamaCpp.stream") as r:
        expect(chat is not None, "ChatLlamaCpp did not load")
        chunks = [c.content for c in chat.stream([("user", QUESTION)])]
        r["text"], r["chunks"] = "".join(chunks), len(chunks)
        expect(len(chunks) > 1, f"one chunk only: {chunks!r}")
        expect("".join(chunks) == msg.content, "stream and invoke differ (greedy)")

    forced = {"type": "function", "function": {"name": "get_weather"}}
    with feature("ChatLlamaCpp.bind_tools") as r:
        expect(chat is not None, "ChatLlamaCpp did not load")
        msg = chat.bind_tools([get_weather], tool_choice=forced).invoke(
            [("user", "What is the weather like in Paris?")])
        calls = msg.tool_calls
        r["value"] = calls
        r["text"] = json.dumps([[c["name"], c["args"]] for c in calls])
        expect(len(calls) == 1, f"expected one tool call, got {calls!r} ({msg.invalid_tool_calls!r})")
        expect(calls[0]["name"] == "get_weather", f"wrong tool {calls[0]['name']!r}")
        expect(isinstance(calls[0]["args"].get("city"), str), f"args without a city: {calls[0]['args']!r}")
    with feature("ChatLlamaCpp.bind_tools stream") as r:
        expect(chat is not None, "ChatLlamaCpp did not load")
        total = None
        for chunk in chat.bind_tools([get_weather], tool_choice=forced).stream(
                [("user", "What is the weather like in Paris?")]):
            total = chunk if total is None else total + chunk
        calls = total.tool_calls if total is not None else []
        r["value"] = calls
        r["text"] = json.dumps([[c["name"], c["args"]] for c in calls])
        expect(len(calls) == 1 and calls[0]["name"] == "get_weather",
               f"merged stream gives {calls!r} (chunks {getattr(total, 'tool_call_chunks', None)!r})")
        expect(isinstance(calls[0]["args"].get("city"), str), f"args without a city: {calls[0]['args']!r}")

    class Capital(BaseModel):
        """The capital city of a country."""
        country: str
        city: str

    with feature("ChatLlamaCpp.with_structured_output") as r:
        expect(chat is not None, "ChatLlamaCpp did not load")
        out = chat.with_structured_output(Capital).invoke("What is the capital of France?")
        r["value"] = out.model_dump() if isinstance(out, BaseModel) else out
        r["text"] = json.dumps(r["value"])
        expect(isinstance(out, Capital), f"not a Capital instance: {out!r}")

    n_embd = args.n_embd
    with feature("LlamaCppEmbeddings (model pooling)") as r:
        emb = LlamaCppEmbeddings(model_path=args.model, n_ctx=512, n_threads=args.threads,
                                 verbose=False)
        n_tokens = [len(emb.client.tokenize(t.encode())) for t in TEXTS]
        vectors = emb.embed_documents(TEXTS)
        query = emb.embed_query(TEXTS[0])
        pooling = emb.client.pooling_type()
        r["detail"] = f"pooling_type {pooling}, {len(vectors)} vectors for {n_tokens} tokens"
        r["value"] = {"pooling": pooling, "count": len(vectors), "vectors": vectors}
        r["text"] = f"{len(vectors)} x {len(vectors[0]) if vectors else 0}"
        # SmolLM2's GGUF sets no pooling: one vector per token, as LangChain flattens them
        want = len(TEXTS) if pooling != 0 else sum(n_tokens)
        expect(len(vectors) == want, f"{len(vectors)} vectors, expected {want} (pooling {pooling})")
        expect(all(len(v) == n_embd for v in vectors) and len(query) == n_embd,
               f"dimensions {sorted({len(v) for v in vectors})} / {len(query)}, expected {n_embd}")
        expect(all(math.isfinite(x) for v in vectors for x in v), "non-finite embedding values")
    with feature("LlamaCppEmbeddings (model pooling): batch-independent") as r:
        # a text's vectors are the same embedded alone or after another text
        alone = emb.embed_documents(TEXTS[1:])
        batched = vectors[len(vectors) - len(alone):]
        dist = max(abs(a - b) for u, v in zip(alone, batched) for a, b in zip(u, v))
        r["detail"] = f"largest difference {dist:.3g}"
        expect(len(alone) == n_tokens[1] and dist < 1e-4,
               f"{TEXTS[1]!r}: {len(alone)} vectors alone, in a batch they differ by up to {dist:.3g}")
    with feature("LlamaCppEmbeddings (mean pooling)") as r:
        import llama_cpp
        client = llama_cpp.Llama(model_path=args.model, embedding=True, n_ctx=512,
                                 n_threads=args.threads, verbose=False,
                                 pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        emb = LlamaCppEmbeddings(model_path=args.model, client=client)
        vectors = emb.embed_documents(TEXTS)
        query = emb.embed_query(TEXTS[0])
        r["value"] = {"count": len(vectors), "vectors": vectors}
        r["text"] = f"{len(vectors)} x {len(vectors[0]) if vectors else 0}"
        expect(len(vectors) == len(TEXTS), f"{len(vectors)} vectors for {len(TEXTS)} texts")
        expect(all(len(v) == n_embd for v in vectors) and len(query) == n_embd,
               f"dimensions {sorted({len(v) for v in vectors})} / {len(query)}, expected {n_embd}")
        dist = max(abs(a - b) for a, b in zip(query, vectors[0]))
        expect(dist < 1e-4, f"embed_query and embed_documents differ on the same text by {dist}")
        alone = emb.embed_documents(TEXTS[1:])[0]
        dist = max(abs(a - b) for a, b in zip(alone, vectors[1]))
        expect(dist < 1e-4, f"{TEXTS[1]!r} alone and in a batch differ by {dist}")
        expect(vectors[0] != vectors[1], "two different texts got the same vector")


if __name__ == "__main__":
    main()
