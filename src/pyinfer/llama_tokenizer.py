"""`LlamaTokenizer`: llama-cpp-python's tokenizer wrapper around a Llama, the default
`Llama.tokenizer_` and what `Llama.tokenizer()` returns (tokenize / detokenize on bytes,
encode / decode on str)."""
from __future__ import annotations

from typing import List, Optional


class LlamaTokenizer:
    def __init__(self, llama):
        self._model = llama._model      # llama_params.LlamaModelHandle
        self._vocab = llama.vocab

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> List[int]:
        return self._vocab.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        """The tokens' bytes; prev_tokens does not change them (pieces have no context)."""
        return self._vocab.detokenize(tokens, special=special)

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> List[int]:
        return self.tokenize(text.encode("utf-8", errors="ignore"), add_bos=add_bos, special=special)

    def decode(self, tokens: List[int]) -> str:
        return self.detokenize(tokens).decode("utf-8", errors="ignore")

    @classmethod
    def from_ggml_file(cls, path: str) -> "LlamaTokenizer":
        """The tokenizer of a GGUF file, its vocabulary only loaded."""
        from .llama import Llama
        return cls(Llama(model_path=path, vocab_only=True, verbose=False))
