"""Request bodies of the OpenAI-compatible endpoints (llama-cpp-python's field names and
defaults: completions and chat default to repeat_penalty=1.1, temperature=0.8).

`user` is accepted and ignored, as are unknown fields (llama-cpp-python's behaviour; OpenAI
clients send fields of newer API versions). `n` choices are generated one after another;
`best_of` may only equal `n`. Chat messages must each be an object with a string `role`
and a `content` (a string, a list of content parts, or null for an assistant message that
calls tools); tools and tool_choice must have OpenAI's shape. A body that breaks these rules
is a 400 naming the field, before any model work.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="ignore")


class _Sampling(_Body):
    """Sampling fields shared by completions and chat completions."""
    model: Optional[str] = Field(default=None, description="The model to use.")
    max_tokens: Optional[int] = Field(default=16, ge=0,
                                      description="Tokens to generate (None / 0: until full).")
    min_tokens: int = Field(default=0, ge=0, description="End of text is banned before this.")
    temperature: float = Field(default=0.8, ge=0.0, description="0: greedy.")
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    typical_p: float = Field(default=1.0, ge=0.0, le=1.0)
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    presence_penalty: Optional[float] = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(default=1.1, ge=0.0)
    logit_bias: Optional[Dict[str, float]] = Field(
        default=None, description="token id (or, with logit_bias_type=tokens, text) -> bias")
    logit_bias_type: Optional[Literal["input_ids", "tokens"]] = None
    seed: Optional[int] = None
    mirostat_mode: int = Field(default=0, ge=0, le=2)
    mirostat_tau: float = Field(default=5.0, ge=0.0, le=10.0)
    mirostat_eta: float = Field(default=0.1, ge=0.001, le=1.0)
    grammar: Optional[str] = Field(default=None, description="A GBNF grammar for the output.")
    n: Optional[int] = Field(default=1, ge=1, description="Choices to generate (at most the "
                             "server's max_n).")
    user: Optional[str] = None

    # fields handled by the server, not passed to Llama as they are
    SERVER_FIELDS: ClassVar[set] = {"n", "best_of", "user", "logit_bias_type", "min_tokens", "grammar",
                     "logit_bias", "model", "prompt"}

    def llama_kwargs(self) -> Dict[str, Any]:
        """The fields Llama takes as keywords under the same names (null penalties: 0)."""
        out = {k: v for k, v in self.model_dump().items() if k not in self.SERVER_FIELDS}
        for k in ("presence_penalty", "frequency_penalty"):
            out[k] = out[k] or 0.0
        return out


Prompt = Union[str, List[str], List[int], List[List[int]]]


class CreateCompletionRequest(_Sampling):
    prompt: Prompt = Field(default="", description="Text or token ids (one prompt).")
    suffix: Optional[str] = None
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, description="Top tokens' logprobs "
                                    "per position (at most the server's max_logprobs, 5).")
    best_of: Optional[int] = Field(default=None, ge=1, description="Only equal to n.")


class CreateChatCompletionRequest(_Sampling):
    messages: List[Dict[str, Any]] = Field(default_factory=list, description="The conversation so far.")
    max_tokens: Optional[int] = Field(default=None, ge=0)
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Union[str, Dict[str, Any]]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    response_format: Optional[Dict[str, Any]] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, description="Top tokens' logprobs "
                                        "per token (at most the server's max_top_logprobs, 20).")

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        for i, m in enumerate(messages):
            check_message(m, f"messages.{i}")
        return messages

    @field_validator("tools")
    @classmethod
    def _tools(cls, tools):
        for i, t in enumerate(tools or ()):
            if t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
                raise ValueError(f"tools.{i}: a tool is "
                                 "{'type': 'function', 'function': {...}}")
            _named(t["function"], f"tools.{i}.function")
        return tools

    @field_validator("functions")
    @classmethod
    def _functions(cls, functions):
        for i, f in enumerate(functions or ()):
            _named(f, f"functions.{i}")
        return functions

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, choice):
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise ValueError("tool_choice is 'none', 'auto', 'required' or "
                                 "{'type': 'function', 'function': {'name': ...}}")
        elif choice is not None:
            if not isinstance(choice.get("function"), dict):
                raise ValueError("tool_choice names a function: {'type': 'function', "
                                 "'function': {'name': ...}}")
            _named(choice["function"], "tool_choice.function")
        return choice

    @field_validator("function_call")
    @classmethod
    def _function_call(cls, call):
        if isinstance(call, str):
            if call not in ("none", "auto"):
                raise ValueError("function_call is 'none', 'auto' or {'name': ...}")
        elif call is not None:
            _named(call, "function_call")
        return call


ROLES_WITHOUT_CONTENT = ("assistant",)      # may be null when the message calls tools


def check_message(m: Any, where: str) -> None:
    """OpenAI's message shape: a string role; content a string, a list of content parts
    (objects), or null for an assistant message."""
    if not isinstance(m, dict):
        raise ValueError(f"{where}: a message is an object with 'role' and 'content'")
    role = m.get("role")
    if not isinstance(role, str) or not role:
        raise ValueError(f"{where}: a message needs a 'role' (a string such as 'user')")
    if "content" not in m and not (role in ROLES_WITHOUT_CONTENT and (
            m.get("tool_calls") or m.get("function_call"))):
        raise ValueError(f"{where}: a message needs a 'content'")
    content = m.get("content")
    if content is None:
        if role not in ROLES_WITHOUT_CONTENT:
            raise ValueError(f"{where}: the content of a {role!r} message may not be null")
    elif isinstance(content, list):
        if not all(isinstance(p, dict) for p in content):
            raise ValueError(f"{where}: content parts are objects such as "
                             "{'type': 'text', 'text': ...}")
    elif not isinstance(content, str):
        raise ValueError(f"{where}: content is a string or a list of content parts")


def _named(spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError(f"{where}: needs a 'name' (a string)")


class CreateEmbeddingRequest(_Body):
    model: Optional[str] = None
    input: Union[str, List[str]] = Field(description="Text(s) to embed (at most the server's "
                                         "max_embedding_inputs, 2048).")
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class TokenizeInputRequest(_Body):
    model: Optional[str] = None
    input: str = Field(description="The text to tokenize.")


class DetokenizeInputRequest(_Body):
    model: Optional[str] = None
    tokens: List[int] = Field(description="Token ids to turn into text.")
