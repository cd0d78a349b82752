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

The FIM token ids come from the metadata (`tokenizer.ggml.fim_{pre,suf,mid}_token_id`, the
older `tokenizer.ggml.{prefix,suffix,middle}_token_id` taking precedence as in llama.cpp),
else from the token texts llama.cpp recognizes. A model without all three cannot fill in:
`suffix=` then raises ValueError (llama-cpp-python would give the suffix to the model as
garbage or drop it; llama.cpp's server refuses with the same words).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Union

TOKEN_NULL = -1

# role -> (metadata keys, later ones win), token texts llama.cpp recognizes
_KEYS = {
    "prefix": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "suffix": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "middle": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
}
_TEXTS = {
    "prefix": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
               "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "suffix": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
               "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "middle": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
               "▁<MID>", "<|code_middle|>", "<|middle|>"),
}
_NAMES = {"prefix": "fim_pre", "suffix": "fim_suf", "middle": "fim_mid"}


@dataclass(frozen=True)
class FimTokens:
    """The vocabulary's fill-in-the-middle token ids (-1: none)."""
    prefix: int = TOKEN_NULL
    suffix: int = TOKEN_NULL
    middle: int = TOKEN_NULL

    @classmethod
    def from_vocab(cls, metadata: Dict[str, Any], vocab) -> "FimTokens":
        """From the GGUF metadata, else by token text (the lowest id when several match)."""
        n = vocab.n_vocab
        ids = {}
        for role, keys in _KEYS.items():
            found = TOKEN_NULL
            for key in keys:
                v = metadata.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
                    found = v
            if found == TOKEN_NULL:
                hits = [vocab.token_to_id(t) for t in _TEXTS[role]]
                found = min((i for i in hits if i != TOKEN_NULL), default=TOKEN_NULL)
            ids[role] = found
        return cls(**ids)

    def missing(self) -> List[str]:
        return [_NAMES[r] for r in ("prefix", "suffix", "middle") if getattr(self, r) == TOKEN_NULL]


def infill_tokens(llama, prompt: Union[str, List[int]], suffix: str) -> List[int]:
    """The prompt ids of a fill-in-the-middle completion (see the module's docstring)."""
    if not isinstance(suffix, str):
        raise TypeError(f"suffix must be a str, not {type(suffix).__name__}")
    fim: FimTokens = llama._fim
    missing = fim.missing()
    if missing:
        raise ValueError("Infill is not supported by this model: it has no "
                         f"{', '.join(missing)} token (suffix= needs the model's "
                         "fill-in-the-middle tokens)")
    vocab = llama._vocab
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
    if llama._custom_tokenizer:
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    vocab = llama._vocab
    if vocab.add_space_prefix:
        vocab = copy.copy(vocab)        # shares the tables; only this attribute differs
        vocab.add_space_prefix = False
    return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
