"""Tokenizer metadata for the GGUF, written as llama.cpp's converter writes it.

Three sources, tried in llama.cpp's order:

* ``tokenizer.model`` (SentencePiece): ``tokenizer.ggml.model = llama``, pieces
  with their scores and types (``sentencepiece`` reads the file; protobuf is not
  needed), ``added_tokens.json`` and ``tokenizer_config.json``'s
  ``added_tokens_decoder`` applied on top, padding to ``vocab_size``.
* a SentencePiece-style BPE ``tokenizer.json`` (byte fallback, no
  tokenizer.model): ``llama`` model as well. llama.cpp gives every such token
  the score -1000, which makes its merges tie; we write ``-id`` instead (the
  order SentencePiece BPE merges in), so the file tokenizes like the source.
* a byte-level BPE ``tokenizer.json``: ``tokenizer.ggml.model = gpt2``, tokens,
  types, merges and the pre-tokenizer name (``pretokenizers.py``).

Special token ids, add_bos/add_eos and the chat template come from
``gguf.SpecialVocab`` (llama.cpp's own reader of tokenizer.json,
tokenizer_config.json, chat_template.jinja and config.json).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import gguf
from gguf import TokenType

from .hf_config import HFParams, read_json
from .pretokenizers import pre_tokenizer_name

log = logging.getLogger("convert")


class VocabError(ValueError):
    """The tokenizer files are missing or inconsistent with the model."""


@dataclass
class Vocab:
    model: str                          # tokenizer.ggml.model
    pre: str                            # tokenizer.ggml.pre
    tokens: List[str]
    types: List[int]
    scores: Optional[List[float]]
    special: gguf.SpecialVocab
    note: str = ""
    add_space_prefix: Optional[bool] = None     # tokenizer.ggml.add_space_prefix (None: not written)

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        self.special.add_to_gguf(w, quiet=True)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special (llama.cpp's list of shapes)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _added_tokens(model_dir: str, tokenizer_json: Optional[dict]) -> Dict[int, dict]:
    """id -> {content, special, normalized} from tokenizer.json, overridden by
    tokenizer_config.json's added_tokens_decoder (as transformers merges them)."""
    added: Dict[int, dict] = {}
    for t in (tokenizer_json or {}).get("added_tokens", []):
        added[int(t["id"])] = t
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        for tid, t in (read_json(cfg_path).get("added_tokens_decoder") or {}).items():
            added[int(tid)] = {**added.get(int(tid), {}), **t}
    return added


def load_vocab(model_dir: str, p: HFParams) -> Vocab:
    spm = os.path.join(model_dir, "tokenizer.model")
    tj_path = os.path.join(model_dir, "tokenizer.json")
    tj = read_json(tj_path) if os.path.isfile(tj_path) else None
    if os.path.isfile(spm) and p.arch.gguf_arch != "qwen2":
        v = _sentencepiece(model_dir, spm, p)
        v.add_space_prefix = p.arch.spm_add_space_prefix      # gemma: False, as llama.cpp writes
    elif tj is not None and _is_spm_bpe(tj):
        v = _llama_hf(model_dir, tj_path, tj, p)
    elif tj is not None:
        v = _byte_bpe(model_dir, tj_path, tj, p)
    else:
        raise VocabError(f"{model_dir} has neither tokenizer.model nor tokenizer.json")
    if p.arch.gguf_arch in ("llama", "bamboo") and p.n_vocab == 49152:
        v.special.add_special_token["bos"] = False      # llama.cpp's rule for these small models
    gen = p.generation
    if "eos" not in v.special.special_token_ids and gen.get("eos_token_id") is not None:
        eos = gen["eos_token_id"]
        v.special._set_special_token("eos", eos[0] if isinstance(eos, list) else eos)
    return v


# ---- SentencePiece ----------------------------------------------------------------------

def _sentencepiece(model_dir: str, path: str, p: HFParams) -> Vocab:
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor()
    if not sp.Load(path):
        raise VocabError(f"{path}: sentencepiece cannot read it")
    n = p.n_vocab or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [int(TokenType.UNUSED)] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        types[i] = int(TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                       else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                       else TokenType.NORMAL)
    if sp.vocab_size() > n:
        log.warning("tokenizer.model has %d pieces, config vocab_size is %d: extra pieces dropped",
                    sp.vocab_size(), n)
    added_json = os.path.join(model_dir, "added_tokens.json")
    if os.path.isfile(added_json):
        for text, tid in read_json(added_json).items():
            if tid < n:
                tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        for tid, t in (read_json(cfg_path).get("added_tokens_decoder") or {}).items():
            tid = int(tid)
            if tid >= n:
                continue
            text = t["content"]
            if t.get("special") or looks_special(text):
                types[tid] = int(TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types[tid] = int(TokenType.USER_DEFINED)
            tokens[tid], scores[tid] = text, -1000.0
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, scores, special, "sentencepiece tokenizer.model")


# ---- tokenizer.json ---------------------------------------------------------------------

def _is_spm_bpe(tj: dict) -> bool:
    m = tj.get("model", {})
    return (m.get("type") == "BPE" and bool(m.get("byte_fallback"))
            and (tj.get("decoder") or {}).get("type") == "Sequence")


def _hf_tokenizer(path: str):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise VocabError(f"{path}: cannot be loaded by the tokenizers library ({e})") from None


def _vocab_by_id(tk, p: HFParams, path: str) -> Dict[int, str]:
    full = tk.get_vocab(with_added_tokens=True)
    top = max(full.values()) if full else -1
    if top >= p.n_vocab:
        raise VocabError(f"{path}: token id {top} does not fit vocab_size {p.n_vocab} of config.json")
    return {i: t for t, i in full.items()}


def _byte_bpe(model_dir: str, path: str, tj: dict, p: HFParams) -> Vocab:
    tk = _hf_tokenizer(path)
    by_id = _vocab_by_id(tk, p, path)
    added = _added_tokens(model_dir, tj)
    tokens, types = [], []
    for i in range(p.n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        info = added.get(i)
        if info is None:
            types.append(int(TokenType.NORMAL))
        else:
            if not info.get("normalized", True):
                text = tk.decode(tk.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) or text
            if info.get("special") or looks_special(text):
                types.append(int(TokenType.CONTROL))
            else:
                text = text.replace("\u2581", " ")
                types.append(int(TokenType.USER_DEFINED))
        tokens.append(text)
    pre, how = pre_tokenizer_name(tk, tj)
    special = gguf.SpecialVocab(model_dir, load_merges=True)
    return Vocab("gpt2", pre, tokens, types, None, special, f"byte-level BPE tokenizer.json, pre '{pre}' ({how})")


def _llama_hf(model_dir: str, path: str, tj: dict, p: HFParams) -> Vocab:
    tk = _hf_tokenizer(path)
    by_id = _vocab_by_id(tk, p, path)
    added = _added_tokens(model_dir, tj)
    tokens, types, scores = [], [], []
    for i in range(p.n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            scores.append(-10000.0)
            continue
        info = added.get(i)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            kind = TokenType.BYTE
        elif info is not None:
            kind = TokenType.CONTROL if (info.get("special") or looks_special(text)) else TokenType.USER_DEFINED
        else:
            kind = TokenType.NORMAL
        tokens.append(text)
        types.append(int(kind))
        scores.append(-1000.0 if info is not None else -float(i))
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, scores, special, "SentencePiece-style BPE tokenizer.json")


def sampling_defaults(gen: dict) -> Dict[str, float]:
    """generation_config.json sampling values that have a GGUF key (general.sampling.*)."""
    keys = {"temperature": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p"}
    return {keys[k]: gen[k] for k in keys if isinstance(gen.get(k), (int, float))}


__all__ = ["Vocab", "VocabError", "load_vocab", "sampling_defaults"]
