"""LlamaIndex (llama-index-llms-llama-cpp 0.7.0) over `import llama_cpp`: LlamaCPP's metadata,
complete, stream_complete, chat and stream_chat. Greedy (temperature 0), with prompt
functions in SmolLM2's ChatML format, as LlamaIndex's docs have users write them."""
from __future__ import annotations

from _report import arguments, backend, expect, feature

QUESTION = "What is the capital of France? Answer in one word."


def messages_to_prompt(messages) -> str:
    text = "".join(f"<|im_start|>{m.role.value}\n{m.content}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def completion_to_prompt(completion: str) -> str:
    return f"<|im_start|>user\n{completion}<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    args = arguments()
    backend()
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.llama_cpp import LlamaCPP

    llm = None
    with feature("LlamaCPP load + metadata") as r:
        llm = LlamaCPP(model_path=args.model, temperature=0.0, max_new_tokens=24,
                       context_window=768, model_kwargs={"n_threads": args.threads},
                       messages_to_prompt=messages_to_prompt,
                       completion_to_prompt=completion_to_prompt, verbose=False)
        meta = llm.metadata
        r["value"] = {"context_window": meta.context_window, "num_output": meta.num_output}
        expect(meta.context_window == 768, f"context_window {meta.context_window}, asked 768")
        expect(meta.num_output == 24, f"num_output {meta.num_output}")
    text = None
    with feature("LlamaCPP.complete") as r:
        expect(llm is not None, "LlamaCPP did not load")
        resp = llm.complete(QUESTION)
        text = r["text"] = resp.text
        expect(text.strip() != "", f"empty completion {resp!r}")
        expect(resp.raw["choices"][0]["finish_reason"] in ("stop", "length"), f"raw {resp.raw!r}")
    with feature("LlamaCPP.stream_complete") as r:
        expect(llm is not None, "LlamaCPP did not load")
        parts = list(llm.stream_complete(QUESTION))
        r["text"], r["chunks"] = parts[-1].text if parts else "", len(parts)
        expect(len(parts) > 1, f"{len(parts)} stream parts")
        expect("".join(p.delta for p in parts) == parts[-1].text, "deltas do not add up to the text")
        expect(parts[-1].text == text, f"stream {parts[-1].text!r} != complete {text!r} (greedy)")
    messages = [ChatMessage(role="system", content="You are a helpful geography assistant."),
                ChatMessage(role="user", content=QUESTION)]
    with feature("LlamaCPP.chat") as r:
        expect(llm is not None, "LlamaCPP did not load")
        resp = llm.chat(messages)
        r["text"] = resp.message.content
        expect(resp.message.role.value == "assistant", f"role {resp.message.role!r}")
        expect((resp.message.content or "").strip() != "", f"empty reply {resp!r}")
        chat_text = resp.message.content
    with feature("LlamaCPP.stream_chat") as r:
        expect(llm is not None, "LlamaCPP did not load")
        parts = list(llm.stream_chat(messages))
        r["text"], r["chunks"] = parts[-1].message.content if parts else "", len(parts)
        expect(len(parts) > 1, f"{len(parts)} stream parts")
        expect(parts[-1].message.content == chat_text, "stream_chat and chat differ (greedy)")


if __name__ == "__main__":
    main()
