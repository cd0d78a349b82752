"""Tokenizers a `Llama` can use (llama-cpp-python's `llama_tokenizer`): the model's own
(`LlamaTokenizer`, pyinfer's), or a Hugging Face one (`LlamaHFTokenizer`), both under the
`BaseLlamaTokenizer` interface: tokenize(bytes) -> ids, detokenize(ids) -> bytes.

    llm = Llama("model.gguf", tokenizer=LlamaHFTokenizer.from_pretrained("org/model"))
"""
from __future__ import annotations

import abc
from typing import Any, List, Optional

try:
    from pyinfer.llama_tokenizer import LlamaTokenizer
except ImportError:                     # pyinfer 0.1.0 keeps it in pyinfer.llama
    from pyinfer.llama import LlamaTokenizer


class BaseLlamaTokenizer(abc.ABC):
    @abc.abstractmethod
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        """Token ids of UTF-8 `text`; add_bos: the special tokens the model adds; special:
        control tokens written in the text become tokens."""

    @abc.abstractmethod
    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        """The bytes of `tokens`, as they continue `prev_tokens` when given."""


BaseLlamaTokenizer.register(LlamaTokenizer)


class LlamaHFTokenizer(BaseLlamaTokenizer):
    """A `transformers` tokenizer: `add_bos` and `special` both map to its
    add_special_tokens; with prev_tokens, the text the tokens add after them."""

    def __init__(self, hf_tokenizer: Any):
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        return self.hf_tokenizer.encode(text.decode("utf-8", errors="ignore"),
                                        add_special_tokens=special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        skip = not special
        if prev_tokens is None:
            return self.hf_tokenizer.decode(tokens, skip_special_tokens=skip).encode(
                "utf-8", errors="ignore")
        both = self.hf_tokenizer.decode(prev_tokens + tokens, skip_special_tokens=skip)
        before = self.hf_tokenizer.decode(prev_tokens, skip_special_tokens=skip)
        return both.encode("utf-8", errors="ignore")[len(before.encode("utf-8", errors="ignore")):]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str) -> "LlamaHFTokenizer":
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError("LlamaHFTokenizer needs the `transformers` package: "
                              "pip install transformers") from None
        return cls(AutoTokenizer.from_pretrained(pretrained_model_name_or_path))


__all__ = ["BaseLlamaTokenizer", "LlamaHFTokenizer", "LlamaTokenizer"]
