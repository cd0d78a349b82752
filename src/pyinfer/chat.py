"""Chat completion: prompt templates, and chat responses built from text completions.

A chat format turns messages into a prompt string (`ChatFormatterResponse`). The GGUF's own
Jinja template (`tokenizer.chat_template`) is rendered as Hugging Face and llama-cpp-python
render it: an immutable sandbox, trim_blocks/lstrip_blocks, `raise_exception`, `bos_token`,
`eos_token`, `add_generation_prompt`, `tojson` without ASCII escaping, `strftime_now`; its
prompt already holds the special tokens (no BOS added) and generation stops on the template's
EOS. A GGUF's template is code from the model file, so its rendering is also bounded
(`ChatTemplateLimits`: time, prompt size, and the size of everything it builds; beyond them
ChatTemplateError, a ValueError). llama-cpp-python's named formats ("chatml", "llama-2",
"vicuna", ... and "chatml-function-calling") and its handler registry are in chat_formats.py;
their prompts get BOS when the vocabulary wants it.

A chat handler (`chat_formatter_to_chat_completion_handler`) tokenizes the prompt, runs
`llama.create_completion` and converts the result: a `chat.completion` dict, or with
stream=True `chat.completion.chunk` dicts, the first carrying only the assistant role.
response_format json_object / json_schema constrain the reply with a JSON grammar; a tool
forced by tool_choice (or function_call) constrains it to the tool's parameter schema and the
reply comes back as `tool_calls` with finish_reason "tool_calls", in llama-cpp-python's shapes.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import jinja2

from .chat_template import (  # noqa: F401 (re-exported)
    DEFAULT_CHAT_TEMPLATE_LIMITS,
    ChatTemplateError,
    ChatTemplateLimits,
    _raise_exception,
    _strftime_now,
    _template_env,
    render_bounded,
)
from .grammar import JSON_GBNF, LlamaGrammar
from .sampling import StoppingCriteriaList

ChatHandler = Callable[..., Any]


@dataclass
class ChatFormatterResponse:
    """prompt: the rendered text; stop: strings that end the reply; stopping_criteria: an
    extra criterion; added_special: the prompt already holds BOS (do not add one)."""
    prompt: str
    stop: Optional[Union[str, List[str]]] = None
    stopping_criteria: Optional[StoppingCriteriaList] = None
    added_special: bool = False


class Jinja2ChatFormatter:
    """Renders a chat template (a Jinja string, e.g. a GGUF's tokenizer.chat_template)
    within `limits`."""

    def __init__(self, template: str, eos_token: str, bos_token: str,
                 add_generation_prompt: bool = True, stop_token_ids: Optional[List[int]] = None,
                 limits: ChatTemplateLimits = DEFAULT_CHAT_TEMPLATE_LIMITS):
        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        self.limits = limits
        try:
            self._template = _template_env().compile_template(template, limits)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"the chat template is not valid Jinja (line {e.lineno}): {e.message}") from e

    def __call__(self, *, messages: List[Dict[str, Any]], functions=None, function_call=None,
                 tools=None, tool_choice=None, **kwargs: Any) -> ChatFormatterResponse:
        prompt = render_bounded(
            self._template, self.limits, messages=messages, eos_token=self.eos_token,
            bos_token=self.bos_token, raise_exception=_raise_exception,
            add_generation_prompt=self.add_generation_prompt, functions=functions,
            function_call=function_call, tools=tools, tool_choice=tool_choice,
            strftime_now=_strftime_now, **kwargs)
        criteria = None
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids

            def last_token_is_stop(tokens, logits) -> bool:
                return len(tokens) > 0 and int(tokens[-1]) in ids

            criteria = StoppingCriteriaList([last_token_is_stop])
        return ChatFormatterResponse(prompt=prompt, stop=[self.eos_token],
                                     stopping_criteria=criteria, added_special=True)

    def to_chat_handler(self) -> ChatHandler:
        return chat_formatter_to_chat_completion_handler(self)


def get_chat_completion_handler(name: str) -> ChatHandler:
    """The chat handler registered under `name` (llama-cpp-python's named formats,
    "chatml-function-calling" and those added with register_chat_format: chat_formats.py);
    LlamaChatCompletionHandlerNotFoundException (a ValueError too) for others."""
    from .chat_formats import get_chat_completion_handler as by_name
    return by_name(name)


# Templates shipped by widely used models that llama-cpp-python maps to its named formats
# instead of rendering them (it compares the GGUF template text for equality).
_KNOWN_TEMPLATES = {
    "chatml": ["{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
               "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\n' }}{% endif %}"],
    "mistral-instruct": [
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        + reply + "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
        "{% endif %}{% endfor %}"
        for reply in ("{{ message['content'] + eos_token + ' ' }}",      # Mistral 7B Instruct
                      "{{ message['content'] + eos_token}}")],           # Mixtral 8x7B Instruct
    "llama-3": ["{% set loop_messages = messages %}{% for message in loop_messages %}"
                "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                "{% endif %}"],
}


def guess_chat_format_from_gguf_metadata(metadata: Dict[str, str]) -> Optional[str]:
    template = metadata.get("tokenizer.chat_template")
    for name, templates in _KNOWN_TEMPLATES.items():
        if template in templates:
            return name
    return None


def setup_chat(metadata: Dict[str, str], chat_format: Optional[str], chat_handler,
               bos_token: str, eos_token: str, eos_id: int, verbose: bool,
               template_limits: ChatTemplateLimits = DEFAULT_CHAT_TEMPLATE_LIMITS):
    """The chat format name Llama will use and the handlers of the GGUF's templates
    ("chat_template.default" for tokenizer.chat_template, "chat_template.NAME" for
    tokenizer.chat_template.NAME), each rendering within `template_limits`."""
    templates = {k[len("tokenizer."):]: v for k, v in metadata.items()
                 if k.startswith("tokenizer.chat_template.")}
    if "tokenizer.chat_template" in metadata:
        templates["chat_template.default"] = metadata["tokenizer.chat_template"]
    handlers = {name: Jinja2ChatFormatter(t, eos_token=eos_token, bos_token=bos_token,
                                          stop_token_ids=[eos_id],
                                          limits=template_limits).to_chat_handler()
                for name, t in templates.items()}
    if chat_format is None and chat_handler is None and "chat_template.default" in templates:
        chat_format = guess_chat_format_from_gguf_metadata(metadata) or "chat_template.default"
    if chat_format is None and chat_handler is None:
        chat_format = "llama-2"
    if verbose:
        print(f"pyinfer: chat format {chat_format if chat_handler is None else 'custom handler'}",
              file=sys.stderr)
    return chat_format, handlers


# ---- the handler -----------------------------------------------------------------------

def chat_formatter_to_chat_completion_handler(formatter) -> ChatHandler:
    def handler(*, llama, messages, functions=None, function_call=None, tools=None,
                tool_choice=None, temperature=0.2, top_p=0.95, top_k=40, min_p=0.05,
                typical_p=1.0, stream=False, stop=None, seed=None, response_format=None,
                max_tokens=None, presence_penalty=0.0, frequency_penalty=0.0,
                repeat_penalty=1.1, tfs_z=1.0, mirostat_mode=0, mirostat_tau=5.0,
                mirostat_eta=0.1, model=None, logits_processor=None, grammar=None,
                logit_bias=None, logprobs=None, top_logprobs=None, **kwargs):
        result = formatter(messages=messages, functions=functions, function_call=function_call,
                           tools=tools, tool_choice=tool_choice, **kwargs)
        prompt = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                                special=True)
        stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        if result.stop is not None:
            stop += result.stop if isinstance(result.stop, list) else [result.stop]
        grammar = response_format_grammar(response_format, llama.verbose) or grammar
        tool = forced_tool(functions, function_call, tools, tool_choice)
        if tool is not None:
            grammar = schema_grammar(tool["function"].get("parameters", {}), llama.verbose)
        completion = llama.create_completion(
            prompt=prompt, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            typical_p=typical_p, logprobs=top_logprobs if logprobs else None, stream=stream,
            stop=stop, seed=seed, max_tokens=max_tokens, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repeat_penalty=repeat_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            model=model, logits_processor=logits_processor,
            stopping_criteria=result.stopping_criteria, grammar=grammar, logit_bias=logit_bias)
        if tool is not None:
            name = tool["function"]["name"]
            return (tool_call_chunks(name, completion) if stream
                    else tool_call_response(name, completion))
        return chat_chunks(completion) if stream else chat_response(completion)

    return handler


# ---- grammars for JSON replies and tool calls -------------------------------------------

def schema_grammar(schema: Any, verbose: bool) -> LlamaGrammar:
    """The grammar of a JSON schema; llama-cpp-python's fallback to any JSON object when the
    schema cannot be converted (the reason is printed when verbose)."""
    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=verbose)
    except ValueError as e:
        if verbose:
            print(f"pyinfer: JSON schema not converted ({e}); constraining to any JSON object",
                  file=sys.stderr)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=verbose)


def response_format_grammar(response_format: Optional[Dict[str, Any]],
                            verbose: bool) -> Optional[LlamaGrammar]:
    """{"type": "json_object"} (any JSON object, or the "schema" given beside it) and
    OpenAI's {"type": "json_schema", "json_schema": {"schema": ...}}; "text" and None: none."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        if "schema" in response_format:
            return schema_grammar(response_format["schema"], verbose)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=verbose)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        if "schema" not in spec:
            raise ValueError('response_format {"type": "json_schema"} needs '
                             '"json_schema": {"schema": ...}')
        return LlamaGrammar.from_json_schema(json.dumps(spec["schema"]), verbose=verbose)
    if kind in (None, "text"):
        return None
    raise ValueError(f"unsupported response_format type {kind!r} "
                     "(text, json_object, json_schema)")


def normalize_tools(functions, function_call, tools, tool_choice) -> Tuple[Any, Any]:
    """(tools, tool_choice) with the legacy `functions` / `function_call` turned into them,
    as llama-cpp-python does (functions replace tools; a function_call naming a function or
    "none" / "auto" replaces tool_choice)."""
    if functions is not None:
        tools = [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, dict) and "name" in function_call:
        tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    elif function_call in ("none", "auto"):
        tool_choice = function_call
    return tools, tool_choice


def forced_tool(functions, function_call, tools, tool_choice) -> Optional[Dict[str, Any]]:
    """The tool a request forces (tool_choice / legacy function_call naming one), as
    llama-cpp-python resolves it; None when the model may answer in text ("auto", "none")."""
    tools, tool_choice = normalize_tools(functions, function_call, tools, tool_choice)
    if not isinstance(tool_choice, dict) or tools is None:
        return None
    name = tool_choice["function"]["name"]
    tool = next((t for t in tools if t["function"]["name"] == name), None)
    if tool is None:
        raise ValueError(f"Tool choice '{name}' not found in tools.")
    return tool


def tool_call_response(name: str, completion: Dict[str, Any]) -> Dict[str, Any]:
    """A completion whose text is the arguments of a call to tool `name`, as a chat reply
    with `tool_calls` (and the legacy `function_call`)."""
    choice = completion["choices"][0]
    call = {"name": name, "arguments": choice["text"]}
    return {
        "id": "chat" + completion["id"], "object": "chat.completion",
        "created": completion["created"], "model": completion["model"],
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": None, "function_call": call,
                                 "tool_calls": [{"id": f"call__0_{name}_{completion['id']}",
                                                 "type": "function", "function": dict(call)}]},
                     "logprobs": chat_logprobs(choice["logprobs"]),
                     "finish_reason": "tool_calls"}],
        "usage": completion["usage"],
    }


def tool_call_chunks(name: str, chunks: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Completion chunks -> chat chunks of a tool call: an empty assistant delta, the
    arguments in pieces, then finish_reason "tool_calls". As OpenAI streams a call, the
    first piece carries the call's id, type and name and later ones only their arguments
    (clients such as the openai SDK's stream helper and LangChain concatenate every string
    of a call's deltas, so a repeated name or id would come out doubled)."""
    head = None
    for chunk in chunks:
        choice = chunk["choices"][0]
        args = choice["text"]
        if head is None:
            head = {"id": "chat" + chunk["id"], "object": "chat.completion.chunk",
                    "created": chunk["created"], "model": chunk["model"]}
            yield {**head, "choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                                        "delta": {"role": "assistant", "content": None,
                                                  "function_call": None, "tool_calls": None}}]}
            call = {"index": 0, "id": f"call__0_{name}_{chunk['id']}", "type": "function",
                    "function": {"name": name, "arguments": args}}
            legacy = {"name": name, "arguments": args}
        else:
            call = {"index": 0, "function": {"arguments": args}}
            legacy = {"arguments": args}
        yield {**head, "choices": [{
            "index": 0, "finish_reason": None, "logprobs": chat_logprobs(choice["logprobs"]),
            "delta": {"role": None, "content": None, "function_call": legacy,
                      "tool_calls": [call]}}]}
    if head is not None:
        yield {**head, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                    "delta": {"role": None, "content": None,
                                              "function_call": None, "tool_calls": None}}]}


def chat_logprobs(logprobs: Optional[Dict[str, list]]) -> Optional[Dict[str, Any]]:
    """Completion logprobs -> chat logprobs ({"content": [...], "refusal": None})."""
    if logprobs is None:
        return None
    content = []
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                   logprobs["top_logprobs"]):
        content.append({"token": token, "bytes": None, "logprob": logprob,
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                         for t, lp in (top or {}).items()]})
    return {"content": content, "refusal": None}


def chat_response(completion: Dict[str, Any]) -> Dict[str, Any]:
    choice = completion["choices"][0]
    return {
        "id": "chat" + completion["id"], "object": "chat.completion",
        "created": completion["created"], "model": completion["model"],
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": choice["text"]},
                     "logprobs": chat_logprobs(choice["logprobs"]),
                     "finish_reason": choice["finish_reason"]}],
        "usage": completion["usage"],
    }


def chat_chunks(chunks: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Completion chunks -> chat chunks: the role first, then content deltas, then an empty
    delta with the finish_reason."""
    for i, chunk in enumerate(chunks):
        head = {"id": "chat" + chunk["id"], "model": chunk["model"],
                "created": chunk["created"], "object": "chat.completion.chunk"}
        if i == 0:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                        "logprobs": None, "finish_reason": None}]}
        choice = chunk["choices"][0]
        finish = choice["finish_reason"]
        yield {**head, "choices": [{"index": 0,
                                    "delta": {"content": choice["text"]} if finish is None else {},
                                    "logprobs": chat_logprobs(choice["logprobs"]),
                                    "finish_reason": finish}]}
