"""instructor 1.17 over `import llama_cpp`: its documented llama-cpp-python recipe
(docs/integrations/llama-cpp-python.md): a Llama with chat_format="chatml", n_gpu_layers=-1,
draft_model=LlamaPromptLookupDecoding(num_pred_tokens=2), logits_all=True;
instructor.patch(create=llama.create_chat_completion_openai_v1, mode=Mode.JSON_SCHEMA);
a pydantic response_model. Then the partial streaming the same page points to, and
Mode.TOOLS (the response model as a forced tool call) on the same Llama.
temperature 0 and max_tokens are added to the recipe's call, to keep it short and greedy."""
from __future__ import annotations

import json

from _report import arguments, backend, expect, feature

MESSAGES = [{"role": "user", "content": "Extract `Jason is 30 years old`"}]


def main() -> None:
    args = arguments()
    backend()
    import instructor
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    from pydantic import BaseModel

    class UserDetail(BaseModel):
        name: str
        age: int

    create = None
    with feature("recipe: Llama + instructor.patch") as r:
        llama = llama_cpp.Llama(model_path=args.model, n_gpu_layers=-1, chat_format="chatml",
                                n_ctx=2048, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=2),
                                logits_all=True, n_threads=args.threads, verbose=False)
        create = instructor.patch(create=llama.create_chat_completion_openai_v1,
                                  mode=instructor.Mode.JSON_SCHEMA)
        expect(callable(create), f"patch returned {create!r}")
    with feature("response_model -> pydantic instance") as r:
        expect(create is not None, "the recipe did not set up")
        user = create(messages=MESSAGES, response_model=UserDetail, max_tokens=64, temperature=0.0)
        r["value"] = user.model_dump() if isinstance(user, BaseModel) else repr(user)
        r["text"] = json.dumps(r["value"])
        expect(isinstance(user, UserDetail), f"not a UserDetail: {user!r}")
        r["detail"] = f"name={user.name!r} age={user.age!r}"
    with feature("Partial[...] stream") as r:
        expect(create is not None, "the recipe did not set up")
        parts = list(create(messages=MESSAGES, response_model=instructor.Partial[UserDetail],
                            stream=True, max_tokens=64, temperature=0.0))
        expect(len(parts) > 1, f"{len(parts)} partial objects")
        last = parts[-1]
        r["value"] = last.model_dump()
        r["text"] = json.dumps(r["value"])
        r["chunks"] = len(parts)
        expect(isinstance(last.name, str) and isinstance(last.age, int),
               f"the last partial object is incomplete: {last!r}")
        expect(last.model_dump() == user.model_dump(),
               f"streamed {last.model_dump()} != non-streamed {user.model_dump()} (greedy)")
    with feature("Mode.TOOLS -> pydantic instance") as r:
        expect(create is not None, "the recipe did not set up")
        tools = instructor.patch(create=llama.create_chat_completion_openai_v1,
                                 mode=instructor.Mode.TOOLS)
        user = tools(messages=MESSAGES, response_model=UserDetail, max_tokens=64, temperature=0.0)
        r["value"] = user.model_dump() if isinstance(user, BaseModel) else repr(user)
        r["text"] = json.dumps(r["value"])
        expect(isinstance(user, UserDetail), f"not a UserDetail: {user!r}")


if __name__ == "__main__":
    main()
