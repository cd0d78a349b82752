"""A tiny random llama model with a usable byte-level BPE vocabulary and a chat template.

`write_tiny_chat_model(path)` takes the random weights of reference.tiny_model.write_tiny_llama
and replaces its placeholder vocabulary: the 256 GPT-2 byte characters, a few merges, and the
special tokens <|im_start|> (BOS) and <|im_end|> (EOS), so that text prompts, stop strings and
chat templates can be exercised on a model that runs in milliseconds. Its random output holds
arbitrary bytes, including broken UTF-8.
"""
import gguf
import numpy as np

from pyinfer.gguf_model import GGUFFile
from pyinfer.tokenizer_bpe import BYTE_TO_CHAR
from reference.tiny_model import write_tiny_llama

MERGES = ["Ġ t", "h e", "Ġt he", "i n", "o r", "Ġ a"]
SPECIALS = ["<|im_start|>", "<|im_end|>"]
TOKENS = list(BYTE_TO_CHAR) + [m.replace(" ", "") for m in MERGES] + SPECIALS
BOS_ID, EOS_ID = len(TOKENS) - 2, len(TOKENS) - 1
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] "
                 "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_tiny_chat_model(path, **kw):
    src = write_tiny_llama(str(path) + ".weights", n_vocab=len(TOKENS), **kw)
    r = GGUFFile(str(src)).reader     # gguf's reader, also for PowerInfer files
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(path), arch)
    for name, f in r.fields.items():
        if name.startswith(("GGUF.", "tokenizer.")) or name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(TOKENS)
    types = [gguf.TokenType.NORMAL] * (len(TOKENS) - 2) + [gguf.TokenType.CONTROL] * 2
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if kw.get("powerinfer"):
        with open(path, "r+b") as f:
            f.write(b"PWRI")
    return path
