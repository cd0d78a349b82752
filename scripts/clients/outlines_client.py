"""outlines 1.3.3 (`outlines.from_llamacpp`) over `import llama_cpp`: its tokenizer built
through the low-level vocabulary API, JSON schema (outlines_core, and llguidance's backend),
regex, choice, a context-free grammar (llguidance), plain and constrained streaming.
Greedy (temperature 0)."""
from __future__ import annotations

import importlib.util
import json
import re
from typing import Literal

from _report import arguments, backend, expect, feature

GREEDY = dict(temperature=0.0, seed=0)
ARITHMETIC = """
?start: sum
sum: NUMBER " + " NUMBER " = " NUMBER
NUMBER: /[0-9]{1,3}/
"""


def main() -> None:
    args = arguments()
    backend()
    import llama_cpp
    import outlines
    from outlines.types import CFG, Regex
    from pydantic import BaseModel, ConfigDict

    class Person(BaseModel):
        # additionalProperties: false (llguidance follows JSON Schema: extra keys allowed
        # unless forbidden; outlines_core allows none either way)
        model_config = ConfigDict(extra="forbid")
        name: str
        age: int

    model = None
    with feature("from_llamacpp (tokenizer from the vocabulary)") as r:
        llm = llama_cpp.Llama(model_path=args.model, n_ctx=1024, n_threads=args.threads,
                              verbose=False)
        model = outlines.from_llamacpp(llm)
        tok = model.tokenizer
        r["value"] = {"vocabulary": len(tok.vocabulary), "eos": tok.eos_token_id}
        expect(len(tok.vocabulary) > 1000, f"vocabulary of {len(tok.vocabulary)} tokens")
        expect(tok.eos_token_id == llm.token_eos(), f"eos {tok.eos_token_id} != {llm.token_eos()}")
    with feature("plain text") as r:
        out = model("What is the capital of France? Answer in one word.", max_tokens=12, **GREEDY)
        r["text"] = out
        expect(isinstance(out, str) and out.strip() != "", f"empty answer {out!r}")

    json_prompt = "Describe a person named Alice who is 30 years old, as JSON."
    for name, kwargs in (("json schema (outlines_core)", {}),
                         ("json schema (llguidance)", {"backend": "llguidance"})):
        with feature(name) as r:
            if kwargs and importlib.util.find_spec("llguidance") is None:
                raise RuntimeError("llguidance is not installed")
            out = model(json_prompt, Person, max_tokens=48, **kwargs, **GREEDY)
            r["text"] = out
            person = Person.model_validate_json(out)
            r["value"] = person.model_dump()
            expect(isinstance(person.age, int), f"age {person.age!r}")
    with feature("regex") as r:
        out = model("What is 12 times 12? Answer with digits only.", Regex(r"[0-9]{1,4}"),
                    max_tokens=6, **GREEDY)
        r["text"] = out
        expect(re.fullmatch(r"[0-9]{1,4}", out) is not None, f"{out!r} does not match [0-9]{{1,4}}")
    with feature("choice") as r:
        options = ("Paris", "London", "Berlin")
        out = model("What is the capital of France?", Literal[options], max_tokens=6, **GREEDY)
        r["text"] = out
        expect(out in options, f"{out!r} is none of {options}")
    with feature("cfg (llguidance)") as r:
        if importlib.util.find_spec("llguidance") is None:
            raise RuntimeError("llguidance is not installed")
        out = model("Write an addition of two numbers with its result.", CFG(ARITHMETIC),
                    max_tokens=16, **GREEDY)
        r["text"] = out
        expect(re.fullmatch(r"[0-9]{1,3} \+ [0-9]{1,3} = [0-9]{1,3}", out) is not None,
               f"{out!r} is not in the grammar's language")
    with feature("stream") as r:
        chunks = list(model.stream("Count from one to five.", max_tokens=16, **GREEDY))
        r["text"], r["chunks"] = "".join(chunks), len(chunks)
        expect(len(chunks) > 1, f"{len(chunks)} chunks")
        expect("".join(chunks).strip() != "", "empty stream")
    with feature("stream (json schema)") as r:
        chunks = list(model.stream(json_prompt, Person, max_tokens=48, **GREEDY))
        text = "".join(chunks)
        r["text"], r["chunks"] = text, len(chunks)
        expect(len(chunks) > 1, f"{len(chunks)} chunks")
        r["value"] = Person.model_validate_json(text).model_dump()
        # greedy and constrained alike: the stream is the non-streamed answer
        whole = model(json_prompt, Person, max_tokens=48, **GREEDY)
        expect(json.loads(whole) == json.loads(text), f"stream {text!r} != call {whole!r}")


if __name__ == "__main__":
    main()
