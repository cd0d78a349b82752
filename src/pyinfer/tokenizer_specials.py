"""llama.cpp's text-based rules for special tokens, applied to a loaded vocabulary.

When the GGUF metadata does not name the end-of-turn, end-of-message or fill-in-the-middle
tokens, llama.cpp looks for well-known token texts; tokens found that way become control
tokens, as do the texts that end generation; control tokens named "unused" are unused; a few
vocabularies get fixes (gpt-oss's "<|end|>", Gemma 4's "</s>", Phi-3's right-stripping
specials, the "<mask>" of jina/nomic embedding models).

Where several texts of one list are present (Llama 3 has both "<|eot_id|>" and
"<|end_of_text|>"), llama.cpp takes the first its `std::unordered_map<std::string, int>` of
token texts yields. `map_iteration_rank` reproduces that order for GCC's libstdc++ (llama.cpp's
Linux builds, llama-cpp-python's wheels): std::hash<std::string> is libstdc++'s `_Hash_bytes`
(a MurmurHash64A variant, seed 0xc70f6907); the map, filled in id order, grows through the
bucket counts of BUCKETS (a rehash when an insert would exceed one element per bucket); a node
inserted into an empty bucket goes to the front of the node list, any other to the front of its
bucket's run; a rehash walks the old list, placing each node the same way.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

TOKEN_NULL = -1
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 1 << 4, 1 << 5, 1 << 7, 1 << 8

# slot -> texts llama.cpp recognizes for it when the metadata names no token
SLOT_TEXTS = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
            "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# texts that end generation
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
             "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
             "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
             "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")
# gpt-oss channel markers are always rendered
ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# --- libstdc++ unordered_map iteration order ------------------------------------------------

BUCKETS = (13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933,
           351061, 712697, 1447153, 2938679, 5967347, 12117689, 24607243)
_MUL = np.uint64(0xC6A4A7935BD1E995)
_SEED = 0xC70F6907
_47 = np.uint64(47)


def _shift_mix(v: np.ndarray) -> np.ndarray:
    return v ^ (v >> _47)


def std_string_hashes(texts: Sequence[bytes]) -> np.ndarray:
    """libstdc++'s std::hash<std::string> of each text (64-bit), vectorized per length."""
    n = len(texts)
    out = np.empty(n, np.uint64)
    lengths = np.fromiter((len(t) for t in texts), np.int64, n)
    with np.errstate(over="ignore"):
        for length in np.unique(lengths).tolist():
            idx = np.nonzero(lengths == length)[0]
            m = len(idx)
            h = np.full(m, _SEED ^ (length * 0xC6A4A7935BD1E995 & (2 ** 64 - 1)), np.uint64)
            if length:
                buf = np.frombuffer(b"".join([texts[i] for i in idx]), np.uint8).reshape(m, length)
                blocks, rest = divmod(length, 8)
                if blocks:
                    words = np.ascontiguousarray(buf[:, :blocks * 8]).view("<u8")
                    for k in range(blocks):
                        h ^= _shift_mix(words[:, k] * _MUL) * _MUL
                        h *= _MUL
                if rest:
                    tail = np.zeros((m, 8), np.uint8)
                    tail[:, :rest] = buf[:, blocks * 8:]
                    h ^= tail.view("<u8")[:, 0]
                    h *= _MUL
            out[idx] = _shift_mix(_shift_mix(h) * _MUL)
    return out


def map_iteration_order(hashes: np.ndarray) -> np.ndarray:
    """Ids in the order a std::unordered_map filled with ids 0, 1, ... (by these hashes)
    iterates them."""
    n = len(hashes)
    order = np.empty(0, np.int64)
    start = 0
    for nb in BUCKETS:
        if start >= n:
            break
        nbu = np.uint64(nb)
        if len(order):  # rehash: buckets by reverse first appearance, nodes reversed within
            _, first, inv = np.unique((hashes[order] % nbu).astype(np.int64), return_index=True,
                                      return_inverse=True)
            order = order[np.lexsort((-np.arange(len(order)), -first[inv]))]
        new = np.arange(start, min(n, nb))
        b_old = (hashes[order] % nbu).astype(np.int64)
        b_new = (hashes[new] % nbu).astype(np.int64)
        pos, ins = np.arange(len(order)), np.arange(len(new))
        rank = np.full(nb, -1, np.int64)            # first position of each existing bucket
        rank[b_old[::-1]] = pos[::-1]
        exists = rank[b_new] >= 0
        created = np.full(nb, -1, np.int64)         # first insert into each new bucket
        created[b_new[~exists][::-1]] = ins[~exists][::-1]
        # new buckets first (latest created first), then the old ones in order; within a
        # bucket the new nodes (latest first), then the old ones in order
        tier = np.concatenate([exists.astype(np.int64), np.ones(len(order), np.int64)])
        group = np.concatenate([np.where(exists, rank[b_new], -created[b_new]), rank[b_old]])
        tier_in = np.concatenate([np.zeros(len(new), np.int64), np.ones(len(order), np.int64)])
        within = np.concatenate([-ins, pos])
        order = np.concatenate([new, order])[np.lexsort((within, tier_in, group, tier))]
        start = min(n, nb)
    return order


def map_iteration_rank(texts: Sequence[bytes], ids: Iterable[int]) -> Dict[int, int]:
    """Position of each of `ids` in llama.cpp's token-text map iteration."""
    order = map_iteration_order(std_string_hashes(texts))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return {i: int(rank[i]) for i in ids}


# --- the rules ------------------------------------------------------------------------------

class SpecialRules:
    """Applies llama.cpp's load-time special-token rules to `attrs` and `ids` in place.

    texts: token texts by id; by_text: text -> id; attrs: attribute bits by id; ids: special
    ids by slot name (bos, eos, eot, eom, unk, sep, pad, mask, fim_*), -1 for none.
    """

    def __init__(self, texts: Sequence[bytes], by_text: Dict[bytes, int], attrs: List[int],
                 ids: Dict[str, int]):
        self.texts, self.by_text, self.attrs, self.ids = texts, by_text, attrs, ids
        self._rank: Optional[Dict[int, int]] = None

    def _id(self, text: str) -> Optional[int]:
        return self.by_text.get(text.encode("utf-8"))

    def _present(self, texts: Iterable[str]) -> List[int]:
        return [i for i in map(self._id, texts) if i is not None]

    def _first_in_map_order(self, found: List[int]) -> int:
        if len(found) == 1:
            return found[0]
        if self._rank is None:
            cands = {self._id(t) for texts in SLOT_TEXTS.values() for t in texts} - {None}
            self._rank = map_iteration_rank(self.texts, cands)
        return min(found, key=self._rank.__getitem__)

    def apply(self) -> frozenset:
        """Detect the unnamed slots, mark control/unused tokens; returns the EOG ids."""
        attrs, ids = self.attrs, self.ids
        for slot, texts in SLOT_TEXTS.items():
            if ids.get(slot, TOKEN_NULL) != TOKEN_NULL:
                continue
            found = self._present(texts)
            ids[slot] = self._first_in_map_order(found) if found else TOKEN_NULL
            if found:
                attrs[ids[slot]] |= ATTR_CONTROL
        for i, t in enumerate(self.texts):
            if attrs[i] & ATTR_CONTROL and b"unused" in t:
                attrs[i] |= ATTR_UNUSED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] != TOKEN_NULL}
        for i in self._present(EOG_TEXTS):
            eog.add(i)
            attrs[i] |= ATTR_CONTROL
        for i in self._present(ALWAYS_RENDERED):
            attrs[i] = ATTR_USER_DEFINED
        eog |= {ids[k] for k in ("eos", "eot", "eom") if ids.get(k, TOKEN_NULL) != TOKEN_NULL}
        in_eog = {self.texts[i] for i in eog if 0 <= i < len(self.texts)}
        end = self._id("<|end|>")
        has_call = b"<|call|>" in in_eog or b"<|calls|>" in in_eog
        if end in eog and has_call and (b"<|return|>" in in_eog or b"<|flush|>" in in_eog):
            eog.discard(end)  # harmony-style vocabularies: <|end|> ends a message only
            attrs[end] = ATTR_USER_DEFINED
        s_id = self._id("</s>")
        if s_id in eog and (b"<|tool_response>" in in_eog or b"<|plamo:eos|>" in in_eog):
            eog.discard(s_id)  # gemma4 and plamo have a normal </s>
            attrs[s_id] = ATTR_NORMAL
        return frozenset(eog)

    def fix_attributes(self, pre: str, arch: str, model_name: str) -> None:
        """llama.cpp's per-model LSTRIP/RSTRIP attributes (after the partition order is set)."""
        attrs = self.attrs
        name = model_name.lower()

        def set_attr(text: str, bit: int, on: bool) -> None:
            i = self._id(text)
            if i is not None:
                attrs[i] = attrs[i] | bit if on else attrs[i] & ~bit

        if (any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
                or any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3"))):
            set_attr("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:  # Phi-3 special tokens eat following spaces
            for i, a in enumerate(attrs):
                if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                    attrs[i] |= ATTR_RSTRIP
            set_attr("</s>", ATTR_RSTRIP, True)
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                set_attr(text, ATTR_RSTRIP, False)
        elif "modern-bert" in name:
            set_attr("[MASK]", ATTR_LSTRIP, True)
