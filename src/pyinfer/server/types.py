"""Request bodies of the OpenAI-compatible endpoints (llama-cpp-python's field names and
defaults: completions and chat default to repeat_penalty=1.1, temperature=0.8).

Fields OpenAI defines that the server cannot honour (n, best_of, user) are accepted and
ignored, as llama-cpp-python does; unknown fields are ignored too.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


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
    n: Optional[int] = 1
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
    logprobs: Optional[int] = Field(default=None, ge=0)
    best_of: Optional[int] = 1


class CreateChatCompletionRequest(_Sampling):
    messages: List[Dict[str, Any]] = Field(default_factory=list, description="The conversation so far.")
    max_tokens: Optional[int] = Field(default=None, ge=0)
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Optional[Union[str, Dict[str, Any]]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    response_format: Optional[Dict[str, Any]] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(default=None, ge=0)


class CreateEmbeddingRequest(_Body):
    model: Optional[str] = None
    input: Union[str, List[str]] = Field(description="Text(s) to embed.")
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class TokenizeInputRequest(_Body):
    model: Optional[str] = None
    input: str = Field(description="The text to tokenize.")


class DetokenizeInputRequest(_Body):
    model: Optional[str] = None
    tokens: List[int] = Field(description="Token ids to turn into text.")
