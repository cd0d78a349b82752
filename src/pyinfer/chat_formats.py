"""llama-cpp-python's chat formats by name, its handler registry and `chatml-function-calling`.

A named format turns messages into the prompt text (and the stop string) that
llama-cpp-python 0.3.36's format of the same name writes; tests/data/chat_formats.json holds
what its own formatters give, as the oracle. Most formats are one row of `PROMPT_FORMATS`:
the role markers, the system part, separators and one of a few `Layout`s (how a turn with
text, a turn without text and the system part are written). As there, only the first
system message is used, messages of roles a format does not name (tools, functions) are left
out, a turn whose content is empty or not a string is written as its bare marker, and the
marker of the reply comes last. `mistral-instruct` has rules of its own (a small function).

The registry maps names to chat handlers, with llama-cpp-python's semantics:
`LlamaChatCompletionHandlerRegistry()` is the one registry of the process (as there; the
`chat_format=` names of every `Llama` resolve through it), `register_chat_format(name)`
turns a formatter into a handler under a new name, `register_chat_completion_handler(name)`
registers a handler, and an unknown name raises LlamaChatCompletionHandlerNotFoundException.
A `ChatHandlerRegistry()` is a separate, empty one. Its "functionary*" handlers (MeetKai's
models with a Hugging Face tokenizer) and multimodal ones ("llava-1-5", ...) are not
provided: asking for one says so (UNSUPPORTED_HANDLERS). `hf_tokenizer_config_to_chat_*`
render a tokenizer_config.json's template, `hf_autotokenizer_to_chat_*` use transformers.

`chatml-function-calling` (chatml_function_calling), in llama-cpp-python's prompt and reply
shapes: a system prompt that lists the tools; with tool_choice "auto" the model first
chooses, greedy under a grammar, between "message:" and "functions.NAME:", then writes the
message or the call's arguments under the tool's JSON-schema grammar; a named tool_choice
skips the choice; "none" or no tools: a plain chatml reply. Where llama-cpp-python 0.3.36
goes wrong, pyinfer does not: its message after "message:" is held to a grammar of function
names (here it is free text, or the response_format's JSON, within max_tokens), its legacy
`function_call` names the text of a later completion (here the called function), it runs a
completion after a call that cannot change the result (not run here), and it refuses a
streamed automatic call and tool_choice "required" (both served here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .chat import (_KNOWN_TEMPLATES, DEFAULT_CHAT_TEMPLATE_LIMITS, ChatFormatterResponse,
                   ChatHandler, ChatTemplateLimits, chat_chunks,
                   chat_formatter_to_chat_completion_handler, chat_response, normalize_tools,
                   response_format_grammar, schema_grammar, tool_call_chunks, tool_call_response)
from .chat_template import _raise_exception, _template_env, render_bounded
from .grammar import LlamaGrammar
from .grammar.json_schema import gbnf_literal

Messages = List[Dict[str, Any]]


class ChatFormatter(Protocol):
    """messages -> ChatFormatterResponse (llama-cpp-python's protocol)."""
    def __call__(self, *, messages: Messages, **kwargs: Any) -> ChatFormatterResponse: ...


class LlamaChatCompletionHandler(Protocol):
    """(llama, messages, the request's keywords) -> a chat.completion dict, or with
    stream=True an iterator of chat.completion.chunk dicts (llama-cpp-python's protocol)."""
    def __call__(self, *, llama: Any, messages: Messages, **kwargs: Any) -> Any: ...


# Hugging Face chat templates that llama-cpp-python names (and maps to its formats when a
# GGUF carries one: chat.guess_chat_format_from_gguf_metadata), with their special tokens.
CHATML_CHAT_TEMPLATE = _KNOWN_TEMPLATES["chatml"][0]
CHATML_BOS_TOKEN, CHATML_EOS_TOKEN = "<s>", "<|im_end|>"
MISTRAL_INSTRUCT_CHAT_TEMPLATE, MIXTRAL_INSTRUCT_CHAT_TEMPLATE = \
    _KNOWN_TEMPLATES["mistral-instruct"]
MISTRAL_INSTRUCT_BOS_TOKEN, MISTRAL_INSTRUCT_EOS_TOKEN = "<s>", "</s>"
LLAMA3_INSTRUCT_CHAT_TEMPLATE = _KNOWN_TEMPLATES["llama-3"][0]


# ---- the prompt formats, as data ---------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How a format writes its parts. Fields are str.format patterns over {system} (the
    system part), {role} (a marker), {content} and {sep} (the separator of that turn).
    head: the system part; empty_head: instead, when the system part is "" (None: head);
    turn / bare: a turn with text / without text; after_system: llama-2's first turn after
    a system part (with or without text)."""
    head: str
    turn: str
    bare: str
    empty_head: Optional[str] = None
    after_system: Optional[str] = None


LAYOUTS: Dict[str, Layout] = {
    "colon": Layout(head="{system}{sep}", turn="{role}: {content}{sep}", bare="{role}:"),
    "colon-space": Layout(head="{system}{sep}", turn="{role}: {content}{sep}", bare="{role}: "),
    "no-colon": Layout(head="{system}", turn="{role}{content}{sep}", bare="{role}"),
    "chatml": Layout(head="{system}{sep}\n", empty_head="", turn="{role}\n{content}{sep}\n",
                     bare="{role}\n"),
    "chatglm3": Layout(head="{system}", turn="{role}\n {content}", bare="{role}"),
    "llama-2": Layout(head="{system}{sep}", turn="{role}{content} {sep}", bare="{role} ",
                      after_system="{content}{sep}"),
    "saiga": Layout(head="", turn="<s>{role}\n{content}</s>", bare="<s>{role}\n"),
}


@dataclass(frozen=True)
class PromptFormat:
    """One named format. roles: message role -> marker (other roles are left out).
    system: the system part, where "{system}" stands for the first system message's text
    (default_system when that is ""); a system part without "{system}" ignores the
    messages'. system_if_given: no system part at all without a system message (llama-2).
    sep / sep2: the separator after turns (sep2, when set, after every second turn).
    reply: the marker of the model's turn, written last (None: none); suffix: text after
    everything; strip: strip the prompt's outer whitespace; stop: the format's stop string."""
    layout: str
    roles: Mapping[str, str]
    system: str = "{system}"
    default_system: str = ""
    system_if_given: bool = False
    sep: str = ""
    sep2: Optional[str] = None
    reply: Optional[str] = None
    suffix: str = ""
    strip: bool = False
    stop: Optional[str] = None

    def render(self, messages: Messages) -> str:
        layout = LAYOUTS[self.layout]
        text = _system_text(messages) or self.default_system
        system = "" if self.system_if_given and not text else self.system.replace("{system}", text)
        turns: List[Tuple[str, Optional[str]]] = [
            (self.roles[m["role"]], m["content"] if isinstance(m.get("content"), str) else None)
            for m in messages if m.get("role") in self.roles]
        if self.reply is not None:
            turns.append((self.reply, None))
        head = layout.empty_head if system == "" and layout.empty_head is not None else layout.head
        out = [head.format(system=system, sep=self.sep)]
        for i, (role, content) in enumerate(turns):
            sep = self.sep2 if self.sep2 is not None and i % 2 else self.sep
            if layout.after_system is not None and system and i == 0:
                out.append(layout.after_system.format(content=content or "", sep=sep))
            elif content:
                out.append(layout.turn.format(role=role, content=content, sep=sep))
            else:
                out.append(layout.bare.format(role=role))
        prompt = "".join(out) + self.suffix
        return prompt.strip() if self.strip else prompt


def _system_text(messages: Messages) -> str:
    """The first system message's content ("" when it is empty or there is none)."""
    for m in messages:
        if m.get("role") == "system":
            content = m.get("content")
            return content if isinstance(content, str) else str(content) if content else ""
    return ""


def _roles(user: str, assistant: str, **more: str) -> Dict[str, str]:
    return {"user": user, "assistant": assistant, **more}


_IM = "<|im_start|>"
_EOT = "<|end_of_turn|>"
_VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The "
           "assistant gives helpful, detailed, and polite answers to the user's questions.")
_OPENBUDDY = (
    "You are a helpful, respectful and honest INTP-T AI Assistant named Buddy. You are talking "
    "to a human User.\nAlways answer as helpfully and logically as possible, while being safe. "
    "Your answers should not include any harmful, political, religious, unethical, racist, "
    "sexist, toxic, dangerous, or illegal content. Please ensure that your responses are "
    "socially unbiased and positive in nature.\nIf a question does not make any sense, or is "
    "not factually coherent, explain why instead of answering something not correct. If you "
    "don't know the answer to a question, please don't share false information.\nYou can "
    "speak fluently in many languages, for example: English, Chinese.\nYou cannot access the "
    "internet, but you have vast knowledge, cutoff: 2021-09.\nYou are trained by OpenBuddy "
    "team, (https://openbuddy.ai, https://github.com/OpenBuddy/OpenBuddy), you are based on "
    "LLaMA and Falcon transformers model, not related to GPT or OpenAI.\n\n")
_SNOOZY = ("The prompt below is a question to answer, a task to complete, or a conversation "
           "to respond to; decide which and write an appropriate response.")
_OPEN_ORCA = (
    "You are a helpful assistant. Please answer truthfully and write out your thinking step "
    "by step to be sure you get the right answer. If you make a mistake or encounter an error "
    "in your thinking, say so out loud and attempt to correct it. If you don't know or aren't "
    "sure about something, say so clearly. You will act as a professional logician, "
    "mathematician, and physicist. You will also act as the most appropriate type of expert "
    "to answer any particular question or solve the relevant problem; state which expert type "
    "your are, if so. Also think of any particular named expert that would be ideal to answer "
    "the relevant question or solve the relevant problem; name and act as them, if appropriate.")
_LLAMA3 = {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n"
           for r in ("system", "user", "assistant")}

# Quirks kept from llama-cpp-python: "intel" writes its system pattern unfilled; "open-orca"
# maps the roles "User"/"Assistant" (capitalised), so usual messages are left out; "snoozy"
# drops its "### Instruction:" header; "saiga" names the assistant "bot" (assistant messages
# are left out); "alpaca" and "llama-2" write no reply marker.
PROMPT_FORMATS: Dict[str, PromptFormat] = {
    "llama-2": PromptFormat("llama-2", _roles("<s>[INST]", "[/INST]"), system_if_given=True,
                            system="[INST] <<SYS>>\n{system}\n<</SYS>>", sep=" ", sep2="</s>",
                            suffix="[/INST]"),
    "llama-3": PromptFormat("no-colon", _LLAMA3, system="", sep="<|eot_id|>",
                            reply=_LLAMA3["assistant"], stop="<|eot_id|>"),
    "alpaca": PromptFormat("colon", _roles("### Instruction", "### Response"), sep="\n\n",
                           sep2="</s>"),
    "qwen": PromptFormat("chatml", _roles(f"{_IM}user", f"{_IM}assistant"),
                         system=f"{_IM}system\n{{system}}",
                         default_system="You are a helpful assistant.", sep="<|im_end|>",
                         reply=f"{_IM}assistant", stop="<|endoftext|>"),
    "vicuna": PromptFormat("colon", _roles("USER", "ASSISTANT"), system=_VICUNA, sep=" ",
                           sep2="</s>", reply="ASSISTANT"),
    "oasst_llama": PromptFormat("no-colon", _roles("<|prompter|>", "<|assistant|>"),
                                system="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", sep="</s>",
                                reply="<|assistant|>"),
    "baichuan-2": PromptFormat("no-colon", _roles("<reserved_106>", "<reserved_107>"),
                               reply="<reserved_107>"),
    "baichuan": PromptFormat("no-colon", _roles("<reserved_102>", "<reserved_103>"),
                             reply="<reserved_103>"),
    "openbuddy": PromptFormat("colon", _roles("User", "Assistant"), system=_OPENBUDDY,
                              sep="\n", reply="Assistant"),
    "redpajama-incite": PromptFormat("colon", _roles("<human>", "<bot>"), sep="\n",
                                     reply="<bot>", stop="<human>"),
    "snoozy": PromptFormat("colon", _roles("### Prompt", "### Response"),
                           default_system=_SNOOZY, sep="\n", reply="### Response", stop="###"),
    "phind": PromptFormat("colon", _roles("### User Message", "### Assistant"),
                          system="### System Prompt\nYou are an intelligent programming "
                          "assistant.", sep="\n\n", reply="### Assistant"),
    "intel": PromptFormat("colon", _roles("### User:", "### Assistant:"),
                          system="### System:\n{system_message}", sep="\n",
                          reply="### Assistant:"),
    "open-orca": PromptFormat("colon-space", {"User": "User", "Assistant": "Assistant"},
                              system=_OPEN_ORCA, sep=f"{_EOT}\n", reply="Assistant",
                              stop="User"),
    "mistrallite": PromptFormat("no-colon", _roles("<|prompter|>", "</s>\n<|assistant|>"),
                                system="<|system|>{system}</s>", sep=" ",
                                reply="</s>\n<|assistant|>"),
    "zephyr": PromptFormat("chatml", _roles("<|user|>\n", "<|assistant|>\n"),
                           system="<|system|>\n{system}", sep="</s>", reply="<|assistant|>\n",
                           stop="</s>"),
    "pygmalion": PromptFormat("chatml", _roles("<|user|>", "<|model|>"),
                              system="<|system|>{system}", sep="\n", reply="<|model|>",
                              stop="\n"),
    "chatml": PromptFormat("chatml", _roles(f"{_IM}user", f"{_IM}assistant"),
                           system=f"{_IM}system\n{{system}}", sep="<|im_end|>",
                           reply=f"{_IM}assistant", stop="<|im_end|>"),
    "chatglm3": PromptFormat("chatglm3", _roles("<|user|>", "<|assistant|>"),
                             system="<|system|>\n{system}", sep="</s>", reply="<|assistant|>",
                             stop="</s>"),
    "openchat": PromptFormat("chatml", _roles("GPT4 Correct User: ",
                                              f"{_EOT}GPT4 Correct Assistant: "),
                             system=f"{{system}}{_EOT}", sep=_EOT,
                             reply=f"{_EOT}GPT4 Correct Assistant: ", stop=_EOT),
    "saiga": PromptFormat("saiga", {"user": "user", "bot": "bot", "system": "system"},
                          system="", reply="bot", strip=True),
    "gemma": PromptFormat("no-colon", _roles("<start_of_turn>user\n", "<start_of_turn>model\n"),
                          system="", sep="<end_of_turn>\n", reply="<start_of_turn>model\n",
                          stop="<end_of_turn>\n"),
}


class NamedChatFormatter:
    """A PromptFormat as a chat formatter (messages -> ChatFormatterResponse)."""

    def __init__(self, name: str, fmt: PromptFormat):
        self.name, self.format = name, fmt

    def __call__(self, messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt=self.format.render(messages), stop=self.format.stop)

    def __repr__(self) -> str:
        return f"NamedChatFormatter({self.name!r})"


def format_mistral_instruct(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
    """mistral-instruct: "[INST] " before each user text, " [/INST]" and "</s>" around each
    assistant text (other messages, and user messages without text, left out)."""
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, str):
            out.append("[INST] " + content)
        elif m.get("role") == "assistant" and isinstance(content, str):
            out.append(" [/INST]" + content + "</s>")
    return ChatFormatterResponse(prompt="".join(out) + " [/INST]", stop="</s>")


FORMATTERS: Dict[str, Callable[..., ChatFormatterResponse]] = {
    **{name: NamedChatFormatter(name, fmt) for name, fmt in PROMPT_FORMATS.items()},
    "mistral-instruct": format_mistral_instruct,
}


def hf_tokenizer_config_to_chat_formatter(
        tokenizer_config: Dict[str, Any], add_generation_prompt: bool = True,
        limits: ChatTemplateLimits = DEFAULT_CHAT_TEMPLATE_LIMITS):
    """A formatter from a Hugging Face tokenizer_config.json dict (its chat_template,
    bos_token, eos_token; ValueError if one is missing), rendered within `limits`. As
    llama-cpp-python: add_generation_prompt appends an empty assistant message (the
    template is not told to add a generation prompt), stops are EOS and BOS."""
    for key in ("chat_template", "bos_token", "eos_token"):
        if not isinstance(tokenizer_config.get(key), str):
            raise ValueError(f"the tokenizer config needs a string {key!r}")
    template = _template_env().compile_template(tokenizer_config["chat_template"], limits)
    bos, eos = tokenizer_config["bos_token"], tokenizer_config["eos_token"]

    def format_tokenizer_config(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
        if add_generation_prompt:
            messages = [*messages, {"role": "assistant", "content": ""}]
        prompt = render_bounded(template, limits, messages=messages, bos_token=bos,
                                eos_token=eos, raise_exception=_raise_exception, **kwargs)
        return ChatFormatterResponse(prompt=prompt, stop=[eos, bos], added_special=True)
    return format_tokenizer_config


def hf_tokenizer_config_to_chat_completion_handler(
        tokenizer_config: Dict[str, Any], add_generation_prompt: bool = True) -> ChatHandler:
    return chat_formatter_to_chat_completion_handler(
        hf_tokenizer_config_to_chat_formatter(tokenizer_config, add_generation_prompt))


def hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path: str):
    """A formatter by `transformers`' AutoTokenizer.apply_chat_template (needs transformers:
    ImportError otherwise); stop: its EOS."""
    try:
        from transformers import AutoTokenizer  # type: ignore
    except ImportError:
        raise ImportError("hf_autotokenizer_to_chat_formatter needs the transformers package "
                          "(pip install transformers)") from None
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)

    def format_autotokenizer(messages: Messages, **kwargs: Any) -> ChatFormatterResponse:
        tokenizer.use_default_system_prompt = False
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        return ChatFormatterResponse(prompt=prompt, stop=tokenizer.eos_token, added_special=True)
    return format_autotokenizer


def hf_autotokenizer_to_chat_completion_handler(pretrained_model_name_or_path: str) -> ChatHandler:
    return chat_formatter_to_chat_completion_handler(
        hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path))


# llama-cpp-python's module-level names of its formatters (its vicuna formatter is `format`,
# format_vicuna here, not to shadow the built-in).
FORMATTER_NAMES: Dict[str, str] = {
    "format_llama2": "llama-2", "format_llama3": "llama-3", "format_alpaca": "alpaca",
    "format_qwen": "qwen", "format": "vicuna", "format_oasst_llama": "oasst_llama",
    "format_baichuan2": "baichuan-2", "format_baichuan": "baichuan",
    "format_openbuddy": "openbuddy", "format_redpajama_incite": "redpajama-incite",
    "format_snoozy": "snoozy", "format_phind": "phind", "format_intel": "intel",
    "format_open_orca": "open-orca", "format_mistrallite": "mistrallite",
    "format_zephyr": "zephyr", "format_pygmalion": "pygmalion", "format_chatml": "chatml",
    "format_mistral_instruct": "mistral-instruct", "format_chatglm3": "chatglm3",
    "format_openchat": "openchat", "format_saiga": "saiga", "format_gemma": "gemma",
}

# Handlers of llama-cpp-python that pyinfer does not provide, and why.
UNSUPPORTED_HANDLERS = {
    **{name: "needs MeetKai's functionary prompt with a Hugging Face tokenizer "
             "(hf_tokenizer_path), which pyinfer does not implement"
       for name in ("functionary", "functionary-v1", "functionary-v2")},
    **{name: "is multimodal (images through a CLIP/mtmd projector), which pyinfer does not "
             "support" for name in ("llava-1-5", "llava-1-6", "moondream", "nanollava",
                                    "llama-3-vision-alpha", "minicpm-v-2.6", "qwen2.5-vl",
                                    "obsidian", "mtmd", "gemma4")},
}


# The formatters under llama-cpp-python's module-level names (FORMATTER_NAMES).
(format_llama2, format_llama3, format_alpaca, format_qwen, format_vicuna, format_oasst_llama,
 format_baichuan2, format_baichuan, format_openbuddy, format_redpajama_incite, format_snoozy,
 format_phind, format_intel, format_open_orca, format_mistrallite, format_zephyr,
 format_pygmalion, format_chatml, format_chatglm3, format_openchat, format_saiga,
 format_gemma) = (FORMATTERS[n] for n in (
    "llama-2", "llama-3", "alpaca", "qwen", "vicuna", "oasst_llama", "baichuan-2", "baichuan",
    "openbuddy", "redpajama-incite", "snoozy", "phind", "intel", "open-orca", "mistrallite",
    "zephyr", "pygmalion", "chatml", "chatglm3", "openchat", "saiga", "gemma"))


class UnsupportedChatHandler:
    """Stands for one of llama-cpp-python's multimodal handler classes, so that importing
    its name works: making one raises NotImplementedError saying why."""
    chat_format = ""

    def __init__(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(f"{type(self).__name__} (chat_format "
                                  f"'{self.chat_format}') {UNSUPPORTED_HANDLERS[self.chat_format]}")

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "UnsupportedChatHandler":
        return cls()


def _unsupported(cls_name: str, chat_format: str) -> type:
    return type(cls_name, (UnsupportedChatHandler,), {"chat_format": chat_format})


Llava15ChatHandler = _unsupported("Llava15ChatHandler", "llava-1-5")
ObsidianChatHandler = _unsupported("ObsidianChatHandler", "obsidian")
Llava16ChatHandler = _unsupported("Llava16ChatHandler", "llava-1-6")
MoondreamChatHandler = _unsupported("MoondreamChatHandler", "moondream")
NanoLlavaChatHandler = _unsupported("NanoLlavaChatHandler", "nanollava")
Llama3VisionAlphaChatHandler = _unsupported("Llama3VisionAlphaChatHandler",
                                            "llama-3-vision-alpha")
MiniCPMv26ChatHandler = _unsupported("MiniCPMv26ChatHandler", "minicpm-v-2.6")
Qwen25VLChatHandler = _unsupported("Qwen25VLChatHandler", "qwen2.5-vl")
MTMDChatHandler = _unsupported("MTMDChatHandler", "mtmd")
Gemma4ChatHandler = _unsupported("Gemma4ChatHandler", "gemma4")


# ---- the registry ------------------------------------------------------------------------

class LlamaChatCompletionHandlerNotFoundException(Exception):
    """No chat handler under that name (llama-cpp-python's exception; also a ValueError)."""


class _NotFound(LlamaChatCompletionHandlerNotFoundException, ValueError):
    pass


class ChatHandlerRegistry:
    """Chat handlers by name (register / unregister / get, with llama-cpp-python's errors)."""

    def __init__(self) -> None:
        self._chat_handlers: Dict[str, ChatHandler] = {}

    def register_chat_completion_handler(self, name: str, chat_handler: ChatHandler,
                                         overwrite: bool = False) -> None:
        if not overwrite and name in self._chat_handlers:
            raise ValueError(f"Formatter with name '{name}' is already registered. Use "
                             "`overwrite=True` to overwrite it.")
        self._chat_handlers[name] = chat_handler

    def unregister_chat_handler(self, name: str) -> None:
        if name not in self._chat_handlers:
            raise ValueError(f"No formatter registered under the name '{name}'.")
        del self._chat_handlers[name]

    def get_chat_completion_handler_by_name(self, name: str) -> ChatHandler:
        try:
            return self._chat_handlers[name]
        except KeyError:
            why = (f"; '{name}' {UNSUPPORTED_HANDLERS[name]}"
                   if name in UNSUPPORTED_HANDLERS else "")
            raise _NotFound(f"Invalid chat handler: {name} (valid formats: "
                            f"{list(self._chat_handlers)}){why}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._chat_handlers

    def names(self) -> List[str]:
        return list(self._chat_handlers)


class LlamaChatCompletionHandlerRegistry(ChatHandlerRegistry):
    """The registry of the process: every construction returns the same object, as
    llama-cpp-python's singleton (clients register formats on it by name)."""
    _instance: Optional["LlamaChatCompletionHandlerRegistry"] = None

    def __new__(cls) -> "LlamaChatCompletionHandlerRegistry":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            ChatHandlerRegistry.__init__(cls._instance)
        return cls._instance

    def __init__(self) -> None:         # the state is made once, in __new__
        pass


def get_chat_completion_handler(name: str) -> ChatHandler:
    return LlamaChatCompletionHandlerRegistry().get_chat_completion_handler_by_name(name)


def register_chat_completion_handler(name: str):
    """Decorator: register a chat handler under `name` (ValueError if taken)."""
    def decorator(handler: ChatHandler) -> ChatHandler:
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler)
        return handler
    return decorator


def register_chat_format(name: str):
    """Decorator: register a chat formatter (messages -> ChatFormatterResponse) as the chat
    handler `name` (ValueError if taken); returns the formatter."""
    def decorator(formatter):
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(
            name, chat_formatter_to_chat_completion_handler(formatter))
        return formatter
    return decorator


for _name, _formatter in FORMATTERS.items():
    register_chat_format(_name)(_formatter)


# ---- chatml-function-calling ---------------------------------------------------------------

_TOOLS_PROMPT = (
    "\n\nYou have access to the following functions:\n"
    "{% for tool in tools %}\nfunctions.{{ tool.function.name }}:\n"
    "{{ tool.function.parameters | tojson }}\n{% endfor %}"
    "\n\nYou can respond to users messages with either a single message or one or more "
    "function calls.\n\nTo respond with a message begin the message with 'message:', use the "
    "following format:\n\nmessage:\n<message>\n\nTo respond with one or more function calls "
    "begin the message with 'functions.<function_name>:', use the following format:\n\n"
    "functions.<function_name>:\n{ \"arg1\": \"value1\", \"arg2\": \"value2\" }\n"
    "functions.<function_name>:\n{ \"arg1\": \"value1\", \"arg2\": \"value2\" }")
# Every message opens a turn; system, user and assistant turns are closed (tool results are
# not shown, as in llama-cpp-python). Values are HTML-escaped and the parameters written by
# Jinja's tojson (sorted keys, <>&' as \\u escapes): its template renders with autoescape.
_FUNCTION_CALLING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'system' %}{{ m.content }}{% if tool_calls %}" + _TOOLS_PROMPT +
    "{% endif %}<|im_end|>\n{% endif %}"
    "{% if m.role == 'user' %}{{ m.content }}<|im_end|>\n{% endif %}"
    "{% if m.role == 'assistant' %}"
    "{% if m.content and m.content | length > 0 %}{% if tool_calls %}message:\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endif %}"
    "{% if 'tool_calls' in m %}{% for call in m.tool_calls %}"
    "functions.{{ call.function.name }}:\n{{ call.function.arguments }}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endif %}{% endfor %}<|im_start|>assistant\n")


def function_calling_prompt(messages: Messages, tools: Optional[List[Dict[str, Any]]]) -> str:
    """The chatml-function-calling prompt; `tools` (a non-empty list) are listed in the
    system message and mark earlier replies as "message:"."""
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), autoescape=True,
                                         keep_trailing_newline=True)
    return env.from_string(_FUNCTION_CALLING_TEMPLATE).render(
        messages=messages, tools=tools or [], tool_calls=bool(tools))


@register_chat_completion_handler("chatml-function-calling")
def chatml_function_calling(*, llama, messages: Messages, functions=None, function_call=None,
                            tools=None, tool_choice=None, temperature: float = 0.2,
                            top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                            typical_p: float = 1.0, stream: bool = False, stop=None,
                            seed=None, response_format=None, max_tokens=None,
                            presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                            repeat_penalty: float = 1.1, tfs_z: float = 1.0,
                            mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                            mirostat_eta: float = 0.1, model=None, logits_processor=None,
                            grammar=None, logit_bias=None, logprobs=None, top_logprobs=None,
                            **kwargs: Any):
    """llama-cpp-python's chatml-function-calling handler (see the module docstring).
    tool_choice "required" (not in llama-cpp-python 0.3.36) is "auto" without the message."""
    tools, tool_choice = normalize_tools(functions, function_call, tools, tool_choice)
    stop = ([stop] if isinstance(stop, str) else list(stop or [])) + ["<|im_end|>"]
    sampling = dict(top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
                    presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                    repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                    mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
                    logits_processor=logits_processor, seed=seed, logit_bias=logit_bias)
    n_logprobs = top_logprobs if logprobs else None

    def reply(prompt: str, reply_grammar) -> Any:
        out = llama.create_completion(prompt=prompt, temperature=temperature, stream=stream,
                                      stop=stop, max_tokens=max_tokens, grammar=reply_grammar,
                                      logprobs=n_logprobs, **sampling)
        return chat_chunks(out) if stream else chat_response(out)

    def call(prompt: str, tool: Dict[str, Any]) -> Any:
        name = tool["function"]["name"]
        out = llama.create_completion(
            prompt=prompt + f"functions.{name}:\n", temperature=temperature, stream=stream,
            stop=stop, max_tokens=max_tokens, logprobs=n_logprobs,
            grammar=schema_grammar(tool["function"].get("parameters", {}), llama.verbose),
            **sampling)
        return tool_call_chunks(name, out) if stream else tool_call_response(name, out)

    if not tools or tool_choice is None or tool_choice == "none":
        return reply(function_calling_prompt(messages, None),
                     response_format_grammar(response_format, llama.verbose) or grammar)
    prompt = function_calling_prompt(messages, tools)
    by_name = {t["function"]["name"]: t for t in tools}
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        if name not in by_name:
            raise ValueError(f"Tool with name '{name}' not found in tools")
        return call(prompt, by_name[name])
    if tool_choice not in ("auto", "required"):
        raise ValueError(f"tool_choice {tool_choice!r}: 'none', 'auto', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}")
    # The model chooses (greedy): "message:" or "functions.NAME:".
    names = " | ".join(gbnf_literal(f"functions.{n}:") for n in by_name)
    choice = "functions" if tool_choice == "required" else 'functions | "message:"'
    choose = LlamaGrammar.from_string(f"root ::= {choice}\nfunctions ::= {names}\n",
                                      verbose=llama.verbose)
    first = llama.create_completion(prompt=prompt, temperature=0, stream=False, stop=[":"],
                                    max_tokens=None, grammar=choose, **sampling)
    text = first["choices"][0]["text"]
    if text.startswith("message"):
        return reply(prompt + "message:\n",
                     response_format_grammar(response_format, llama.verbose))
    # One call: llama-cpp-python 0.3.36 then asks for a further "functions.NAME:" but its
    # check keeps the ':' and never finds one, so it always returns the one call.
    out = call(prompt, by_name[text[len("functions."):]])
    if not stream:          # named by the choice's completion, as there
        out.update(id="chat" + first["id"], created=first["created"])
    return out
