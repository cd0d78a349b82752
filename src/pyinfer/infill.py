"""Fill-in-the-middle: `create_completion(prompt, suffix=...)` with the model's FIM tokens.

The prompt is built as llama-cpp-python builds it (code models such as qwen2.5-coder,
CodeLlama, DeepSeek-Coder, StarCoder carry the three tokens):

    [BOS]  FIM_PRE prompt  FIM_SUF suffix  FIM_MID  [EOS/SEP]      (spm_infill=False)
    [BOS]  FIM_SUF suffix  FIM_PRE prompt  FIM_MID  [EOS/SEP]      (spm_infill=True)

and the model writes the middle. BOS is added when the vocabulary asks for it (also for a
prompt given as token ids, which are then used as the prefix), EOS/SEP as for a plain
prompt. The prompt text is tokenized without parsing special tokens (so text cannot forge
a FIM token), the suffix too, and without the space an SPM vocabulary puts before a text
(the suffix continues the middle; llama-cpp-python strips that space by tokenizing
"☺" + suffix and dropping two tokens, pyinfer tokenizes without the prefix).

The FIM token ids are the tokenizer's (pyinfer.tokenizer resolves them as llama.cpp does: the
metadata's `tokenizer.ggml.fim_{pre,suf,mid}_token_id` or older `prefix/suffix/middle` keys,
else the token texts llama.cpp recognizes). A model without all three cannot fill in:
`suffix=` then raises ValueError (llama-cpp-python would give the suffix to the model as
garbage or drop it; llama.cpp's server refuses with the same words).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Union

TOKEN_NULL = -1

_NAMES = {"prefix": "fim_pre", "suffix": "fim_suf", "middle": "fim_mid"}


@dataclass(frozen=True)
class FimTokens:
    """The vocabulary's fill-in-the-middle token ids (-1: none)."""
    prefix: int = TOKEN_NULL
    suffix: int = TOKEN_NULL
    middle: int = TOKEN_NULL

    @classmethod
    def from_vocab(cls, vocab) -> "FimTokens":
        """The tokenizer's FIM ids, which it resolves as llama.cpp does (metadata keys, else
        the token texts llama.cpp recognizes, in its order)."""
        return cls(vocab.fim_pre_id, vocab.fim_suf_id, vocab.fim_mid_id)

    def missing(self) -> List[str]:
        return [_NAMES[r] for r in ("prefix", "suffix", "middle") if getattr(self, r) == TOKEN_NULL]


def infill_tokens(llama, prompt: Union[str, List[int]], suffix: str) -> List[int]:
    """The prompt ids of a fill-in-the-middle completion (see the module's docstring)."""
    if not isinstance(suffix, str):
        raise TypeError(f"suffix must be a str, not {type(suffix).__name__}")
    fim: FimTokens = llama.fim
    missing = fim.missing()
    if missing:
        raise ValueError("Infill is not supported by this model: it has no "
                         f"{', '.join(missing)} token (suffix= needs the model's "
                         "fill-in-the-middle tokens)")
    vocab = llama.vocab
    if isinstance(prompt, str):
        text = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=False) if prompt else []
    else:
        text = [int(t) for t in prompt]
    pre = [fim.prefix] + text
    suf = [fim.suffix] + (_continuation_tokens(llama, suffix) if suffix else [])
    body = (suf + pre if llama.spm_infill else pre + suf) + [fim.middle]
    bos = [vocab.bos_id] if vocab.add_bos and vocab.bos_id != TOKEN_NULL else []
    sep = vocab.sep_id
    eos = [sep if sep != TOKEN_NULL else vocab.eos_id] if (vocab.add_eos or sep != TOKEN_NULL) else []
    return bos + body + eos


def _continuation_tokens(llama, text: str) -> List[int]:
    """`text` tokenized as the continuation of other text: no special tokens parsed, no SPM
    space prefix (a tokenizer given to Llama(tokenizer=...) tokenizes it as it does)."""
    if llama.has_custom_tokenizer:
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    vocab = llama.vocab
    if vocab.add_space_prefix:
        vocab = copy.copy(vocab)        # shares the tables; only this attribute differs
        vocab.add_space_prefix = False
    return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
