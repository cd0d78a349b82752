"""Naming a BPE tokenizer's pre-tokenizer the way llama.cpp's converter does.

llama.cpp encodes a fixed probe text with the model's tokenizer (special tokens
added as the tokenizer adds them), hashes ``str(ids)`` with SHA-256 and looks
the digest up in a table of known tokenizers. ``KNOWN_HASHES`` is that table
for the pre-tokenizer names pyinfer's tokenizer implements (digests as
published by llama.cpp's converter). When the digest is unknown we fall back
to the pre-tokenizer description in tokenizer.json (its split regex or
ByteLevel/Digits steps), and finally to ``default`` with a warning.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Optional, Tuple

log = logging.getLogger("convert")

# The probe text of llama.cpp's converter (its exact characters matter for the hashes).
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
    "?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of PROBE_TEXT)) -> tokenizer.ggml.pre
KNOWN_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",       # Llama 3
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "mpt",             # also OLMo
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
}

# split regexes as tokenizer.json spells them -> tokenizer.ggml.pre (fallback for unknown digests)
_CONTRACTIONS_I = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
KNOWN_SPLIT_REGEXES = {
    _CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    _CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}


def probe_hash(tokenizer) -> str:
    """SHA-256 of str(ids) of the probe text, encoded by a `tokenizers.Tokenizer`."""
    ids = tokenizer.encode(PROBE_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _describe(pre: Optional[dict]) -> Tuple[list, Optional[str]]:
    """(kinds of steps, first Split regex) of a tokenizer.json pre_tokenizer."""
    if not pre:
        return [], None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds, regex = [], None
    for s in steps:
        kind = s.get("type")
        if kind == "Digits":
            kind += "/individual" if s.get("individual_digits") else ""
        elif kind == "ByteLevel":
            kind += "/regex" if s.get("use_regex", True) else ""
        elif kind == "Split" and regex is None:
            regex = (s.get("pattern") or {}).get("Regex")
        kinds.append(kind)
    return kinds, regex


def pre_tokenizer_name(tokenizer, tokenizer_json: dict) -> Tuple[str, str]:
    """(tokenizer.ggml.pre, how it was found) for a byte-level BPE tokenizer."""
    digest = probe_hash(tokenizer)
    if digest in KNOWN_HASHES:
        return KNOWN_HASHES[digest], f"known tokenizer (probe hash {digest[:12]})"
    kinds, regex = _describe(tokenizer_json.get("pre_tokenizer"))
    if regex is not None and regex in KNOWN_SPLIT_REGEXES:
        return KNOWN_SPLIT_REGEXES[regex], "split regex of tokenizer.json"
    if kinds == ["Digits/individual", "ByteLevel/regex"]:
        return "smollm", "pre-tokenizer steps of tokenizer.json (digits, then GPT-2 byte level)"
    if kinds == ["ByteLevel/regex"]:
        return "gpt-2", "pre-tokenizer steps of tokenizer.json (GPT-2 byte level)"
    log.warning("BPE pre-tokenizer not recognised (probe hash %s, steps %s); writing 'default', "
                "which may split text differently from the original tokenizer", digest, kinds)
    return "default", "unrecognised: default"
