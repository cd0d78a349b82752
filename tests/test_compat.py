"""The `llama_cpp` package served by pyinfer (compat/), imported from compat/src without
installing it, in subprocesses (so that this process never has a `llama_cpp` of its own,
and the opt-in comparisons with the real llama-cpp-python are not fooled).

One probe subprocess loads `llama_cpp.Llama` on SmolLM2 and records what the package gives;
the tests compare it with independent oracles in this process: pyinfer's own `Llama` and
GGUF tokenizer (texts, pieces, token ids, logits), llama-cpp-python 0.3.36's constant values
(hard-coded below from its source), hand-worked prompt-lookup drafts and llama.cpp's
detokenizer clean-up rules worked by hand.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
COMPAT_SRC = ROOT / "compat" / "src"
N_CTX = 256
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name a colour."}]
TEXTS = ["", "Hello world", " leading space", "<|im_start|>user\nHi<|im_end|>\n",
         "naïve café 日本語 🙂", "a\n\n\tb  c", "x" * 300, "Hello , world . it 's"]
FLAGS = [(True, True), (True, False), (False, True), (False, False)]
MODULES = ["llama_cpp", "llama_cpp.llama", "llama_cpp.llama_cpp", "llama_cpp.llama_types",
           "llama_cpp.llama_chat_format", "llama_cpp.llama_grammar", "llama_cpp.llama_cache",
           "llama_cpp.llama_tokenizer", "llama_cpp.llama_speculative", "llama_cpp._logger",
           "llama_cpp._internals", "llama_cpp.server", "llama_cpp.server.app",
           "llama_cpp.server.settings", "llama_cpp.server.__main__"]
# what `from llama_cpp import *` gives in llama-cpp-python 0.3.36 that clients use
STAR_NAMES = ["Llama", "LlamaGrammar", "LlamaCache", "LlamaRAMCache", "LlamaDiskCache",
              "BaseLlamaCache", "LlamaState", "LogitsProcessorList", "StoppingCriteriaList",
              "LlamaTokenizer", "ChatCompletionRequestUserMessage", "Completion",
              "CreateChatCompletionResponse", "llama_vocab_p", "llama_model_get_vocab",
              "llama_token_to_piece", "llama_tokenize", "llama_batch", "llama_token",
              "LLAMA_DEFAULT_SEED", "LLAMA_TOKEN_ATTR_CONTROL"]

# llama-cpp-python 0.3.36's constants (tests/data/llama_cpp_python_constants.json says how
# they were taken): the oracle of the constants test
LLAMA_CPP_PYTHON_CONSTANTS = json.loads(
    (Path(__file__).parent / "data" / "llama_cpp_python_constants.json").read_text())["constants"]


def compat_env(*extra_paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(COMPAT_SRC), *map(str, extra_paths),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_compat(code, *args, extra_paths=(), timeout=300):
    """Run `code` with compat/src first on sys.path; its last stdout line, parsed as JSON."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          env=compat_env(*extra_paths), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The probe: everything the tests below check of the package, recorded in one process.
PROBE = r'''
import ctypes, importlib, inspect, json, sys, traceback
import numpy as np

model_path, out_dir = sys.argv[1], sys.argv[2]
MODULES, STAR_NAMES, TEXTS, FLAGS = json.loads(sys.argv[3])
result = {}

def section(name):
    def run(fn):
        try:
            result[name] = fn()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
    return run

@section("layout")
def _():
    for m in MODULES:
        importlib.import_module(m)
    import llama_cpp, pyinfer, packaging.version
    star = {}
    exec("from llama_cpp import *", star)
    v = packaging.version.Version(llama_cpp.__version__)
    return {"missing": [n for n in STAR_NAMES if n not in star],
            "version": llama_cpp.__version__, "release": list(v.release), "local": v.local,
            "pyinfer_version": llama_cpp.__pyinfer_version__,
            "subclass": issubclass(llama_cpp.Llama, pyinfer.Llama),
            "same_signature": inspect.signature(llama_cpp.Llama.__init__)
                              == inspect.signature(pyinfer.Llama.__init__),
            "logger": llama_cpp._logger.logger.name,
            "constants": {n: getattr(llama_cpp, n) for n in dir(llama_cpp)
                          if n.startswith(("LLAMA_", "GGML_"))}}

import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
llm = llama_cpp.Llama(model_path, n_ctx=256, n_threads=2, verbose=False)

@section("generate")
def _():
    greedy = dict(max_tokens=16, temperature=0.0)
    text = llm("The capital of France is", **greedy)["choices"][0]["text"]
    chat = llm.create_chat_completion([{"role": "user", "content": "Name a colour."}],
                                      **greedy)["choices"][0]["message"]["content"]
    drafted = llama_cpp.Llama(model_path, n_ctx=256, n_threads=2, verbose=False,
                              draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4))
    return {"text": text, "chat": chat, "pointer_types": [type(llm.model).__name__,
                                                          type(llm.ctx).__name__],
            "drafted": drafted("The capital of France is", **greedy)["choices"][0]["text"]}

@section("vocab")
def _():
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    size, buf = 32, ctypes.create_string_buffer(32)
    pieces = {"special": [], "plain": []}
    for special, key in ((True, "special"), (False, "plain")):
        for t in range(n):      # as outlines builds its vocabulary: retry when too small
            k = llama_cpp.llama_token_to_piece(vocab, t, buf, size, 0, special)
            if k < 0:
                big = ctypes.create_string_buffer(-k)
                assert llama_cpp.llama_token_to_piece(vocab, t, big, -k, 0, special) == -k
                pieces[key].append(big.raw[:-k].hex())
            else:
                pieces[key].append(buf.raw[:k].hex())
    tokenized = []
    arr = (llama_cpp.llama_token * 1024)()
    for text in TEXTS:
        data = text.encode()
        for add, parse in FLAGS:
            k = llama_cpp.llama_tokenize(vocab, data, len(data), arr, 1024, add, parse)
            short = llama_cpp.llama_tokenize(vocab, data, len(data), arr, max(k - 1, 0), add, parse)
            out = ctypes.create_string_buffer(4096)
            detok = {}
            for rm in (False, True):
                for unparse in (False, True):
                    m = llama_cpp.llama_detokenize(vocab, arr, k, out, 4096, rm, unparse)
                    detok[f"{rm}-{unparse}"] = out.raw[:m].hex()
            tokenized.append({"ids": list(arr[:k]), "short": short, "detok": detok})
    # a too-small buffer gets minus the size needed and is left alone
    tiny = ctypes.create_string_buffer(b"\xaa" * 4, 4)
    long_token = max(range(n), key=lambda t: len(bytes.fromhex(pieces["plain"][t])))
    too_small = llama_cpp.llama_token_to_piece(vocab, long_token, tiny, 4, 0, False)
    space_token = next(t for t in range(n) if pieces["plain"][t].startswith("20")
                       and len(pieces["plain"][t]) > 4)
    k = llama_cpp.llama_token_to_piece(vocab, space_token, buf, size, 1, False)
    # the C entry point C code calls (llguidance), through a raw function pointer
    from llama_cpp.llama_cpp import _lib
    addr = ctypes.cast(_lib.llama_tokenize, ctypes.c_void_p).value
    cfn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                           ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool,
                           ctypes.c_bool)(addr)
    c_text = "naïve <|im_end|> café".encode()
    c_k = cfn(vocab, c_text, len(c_text), arr, 1024, True, True)
    errors = {}
    for what, call in (("null", lambda: llama_cpp.llama_vocab_n_tokens(None)),
                       ("model_as_vocab", lambda: llama_cpp.llama_vocab_n_tokens(llm.model)),
                       ("vocab_as_ctx", lambda: llama_cpp.llama_n_ctx(vocab))):
        try:
            call()
            errors[what] = None
        except ValueError as e:
            errors[what] = str(e)
    meta = ctypes.create_string_buffer(8)
    meta_n = llama_cpp.llama_model_meta_val_str(llm.model, b"general.architecture", meta, 8)
    return {
        "n_tokens": n, "n_vocab_deprecated": llama_cpp.llama_n_vocab(vocab),
        "type": llama_cpp.llama_vocab_type(vocab), "pieces": pieces,
        "texts": [llama_cpp.llama_vocab_get_text(vocab, t).decode() for t in range(n)],
        "attrs": [llama_cpp.llama_token_get_attr(vocab, t) for t in range(n)],
        "eog": [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "specials": {s: getattr(llama_cpp, f"llama_vocab_{s}")(vocab)
                     for s in ("bos", "eos", "eot", "nl", "pad", "sep")},
        "add_bos": llama_cpp.llama_vocab_get_add_bos(vocab),
        "tokenized": tokenized, "too_small": [too_small, tiny.raw.hex(), long_token],
        "lstrip": [space_token, buf.raw[:k].hex()],
        "c_entry": list(arr[:c_k]), "errors": errors,
        "same_vocab": llama_cpp.llama_model_get_vocab(llm.model) == vocab,
        "via_handle": llama_cpp.llama_model_get_vocab(llm._model) == vocab,
        "model": {"n_ctx_train": llama_cpp.llama_model_n_ctx_train(llm.model),
                  "n_embd": llama_cpp.llama_model_n_embd(llm.model),
                  "n_layer": llama_cpp.llama_model_n_layer(llm.model),
                  "meta": [meta_n, meta.value.decode()],
                  "meta_count": llama_cpp.llama_model_meta_count(llm.model),
                  "chat_template": llama_cpp.llama_model_chat_template(llm.model, None).decode(),
                  "n_ctx": llama_cpp.llama_n_ctx(llm.ctx),
                  "get_model": llama_cpp.llama_get_model(llm.ctx) == llm.model}}

@section("decode")
def _():
    out = {}
    for logits_all in (True, False):
        m = llama_cpp.Llama(model_path, n_ctx=256, n_threads=2, verbose=False,
                            logits_all=logits_all)
        ids = m.tokenize(b"The capital of France is Paris, and the capital of Italy is")
        batch = llama_cpp.llama_batch_init(64, 0, 1)
        mem = llama_cpp.llama_get_memory(m.ctx)
        def decode(start, stop, outputs):
            batch.n_tokens = stop - start
            for j in range(stop - start):
                batch.token[j], batch.pos[j] = ids[start + j], start + j
                batch.n_seq_id[j], batch.seq_id[j][0] = 1, 0
                batch.logits[j] = (start + j) in outputs
            assert llama_cpp.llama_decode(m.ctx, batch) == 0
            n_out = sum(1 for p in range(start, stop) if p in outputs)
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits(m.ctx),
                                         shape=(n_out, m.n_vocab())).copy()
        first = decode(0, 8, {3, 7})
        last_ith = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1),
                                         shape=(m.n_vocab(),)).copy()
        middle = llama_cpp.llama_memory_seq_rm(mem, 0, 2, 4)      # not a tail: refused
        tail = llama_cpp.llama_memory_seq_rm(mem, -1, 5, -1)      # as guidance does
        n_after_rm = m.n_tokens
        second = decode(5, len(ids), set(range(5, len(ids))))
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.seq_id[0][0], batch.logits[0] = 1, len(ids), 1, 1
        try:
            llama_cpp.llama_decode(m.ctx, batch)
            other_seq = None
        except ValueError as e:
            other_seq = str(e)
        batch.seq_id[0][0], batch.pos[0] = 0, 3
        try:
            llama_cpp.llama_decode(m.ctx, batch)
            gap = None
        except ValueError as e:
            gap = str(e)
        llama_cpp.llama_batch_free(batch)
        key = "all" if logits_all else "last"
        np.save(f"{out_dir}/{key}_first.npy", first)
        np.save(f"{out_dir}/{key}_second.npy", second)
        np.save(f"{out_dir}/{key}_last_ith.npy", last_ith)
        out[key] = {"ids": ids, "middle": middle, "tail": tail, "n_after_rm": n_after_rm,
                    "n_tokens": m.n_tokens, "other_seq": other_seq, "gap": gap,
                    "input_ids": m.input_ids[:m.n_tokens].tolist()}
    return out

@section("drafts")
def _():
    f = LlamaPromptLookupDecoding.find_candidate_pred_tokens
    cases = [([1, 2, 3, 1, 2, 3, 1, 2, 3], 3, 2), ([1, 2, 3, 4, 5, 6, 7, 8, 9], 3, 2),
             ([1, 2, 3, 4, 2, 5, 6, 2], 2, 4), ([7, 8, 9, 7, 8], 2, 10), ([4], 2, 3), ([], 2, 3),
             ([5, 6, 5, 6, 5], 1, 3)]
    got = [f(np.array(ids, dtype=np.intc), n, k).tolist() for ids, n, k in cases]
    call = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=3)(
        np.array([9, 1, 2, 8, 1, 2], dtype=np.intc))
    return {"got": got, "call": call.tolist(), "dtype": str(call.dtype),
            "empty_dtype": str(f(np.array([1, 2, 3], dtype=np.intc), 3, 2).dtype)}

@section("clean_spaces")
def _():
    from llama_cpp._vocab import clean_spaces
    cases = ["Hello , world .", "it ' s", "I 'm here", "they 're , we 've", "don 't", "I 'll",
             "a 'x", " .", "a ' ' b", "x ?! y", "", "'"]
    return {c: clean_spaces(c.encode()).decode() for c in cases}

print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def probe(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    res = run_compat(PROBE, smollm2, out, json.dumps([MODULES, STAR_NAMES, TEXTS, FLAGS]),
                     timeout=600)
    return res, out


def section(probe, name):
    res, _ = probe
    got = res[name]
    assert not (isinstance(got, dict) and "error" in got), got.get("error")
    return got


@pytest.fixture(scope="module")
def oracle(smollm2):
    llm = Llama(str(smollm2), n_ctx=N_CTX, n_threads=2, verbose=False)
    yield llm
    llm.close()


def test_every_module_of_the_layout_imports(probe):
    got = section(probe, "layout")
    assert got["missing"] == []
    assert got["subclass"] and got["same_signature"]
    assert got["logger"] == "llama-cpp-python"


def test_version_names_the_api_and_pyinfer(probe):
    import pyinfer
    got = section(probe, "layout")
    assert got["release"] == [0, 3, 36]                 # parsed by packaging, as pip would
    assert got["local"] == "pyinfer." + pyinfer.__version__
    assert got["pyinfer_version"] == pyinfer.__version__


def test_constants_equal_llama_cpp_python(probe):
    got = section(probe, "layout")["constants"]
    assert {k: got.get(k) for k in LLAMA_CPP_PYTHON_CONSTANTS} == LLAMA_CPP_PYTHON_CONSTANTS
    assert got["LLAMA_MAX_DEVICES"] == 1


def test_llama_generates_what_pyinfer_generates(probe, oracle):
    got = section(probe, "generate")
    greedy = dict(max_tokens=16, temperature=0.0)
    oracle.reset()
    assert got["text"] == oracle(PROMPT, **greedy)["choices"][0]["text"]
    oracle.reset()
    chat = oracle.create_chat_completion(CHAT, **greedy)
    assert got["chat"] == chat["choices"][0]["message"]["content"]
    assert got["drafted"] == got["text"]          # a draft model never changes greedy output
    assert got["pointer_types"] == ["int", "int"]


def test_token_pieces_and_texts_for_every_token(probe, smollm2):
    got = section(probe, "vocab")
    tok = Tokenizer.from_gguf(str(smollm2))
    n = tok.n_vocab
    assert got["n_tokens"] == got["n_vocab_deprecated"] == n
    assert got["type"] == 2                                         # BPE
    assert [bytes.fromhex(p) for p in got["pieces"]["special"]] == \
        [tok.token_to_piece(t, special=True) for t in range(n)]
    assert [bytes.fromhex(p) for p in got["pieces"]["plain"]] == \
        [tok.token_to_piece(t, special=False) for t in range(n)]
    assert got["texts"] == [tok.token_text(t) for t in range(n)]
    assert got["attrs"] == [tok.token_attr(t) for t in range(n)]
    assert set(got["eog"]) == set(tok.eog_ids)
    assert got["specials"] == {"bos": tok.bos_id, "eos": tok.eos_id, "eot": tok.eot_id,
                               "nl": tok.nl_id, "pad": tok.pad_id, "sep": tok.sep_id}
    assert got["add_bos"] == tok.add_bos
    assert got["same_vocab"] and got["via_handle"]


def test_buffer_contracts(probe, smollm2):
    got = section(probe, "vocab")
    tok = Tokenizer.from_gguf(str(smollm2))
    n_needed, untouched, token = got["too_small"]
    assert n_needed == -len(tok.token_to_piece(token)) and n_needed < -4
    assert untouched == "aa" * 4                    # nothing written into a short buffer
    token, stripped = got["lstrip"]
    assert bytes.fromhex(stripped) == tok.token_to_piece(token)[1:]
    for case in got["tokenized"]:
        assert case["short"] == (-len(case["ids"]) if case["ids"] else 0)


def test_llama_tokenize_round_trips_as_llama_tokenize(probe, oracle):
    got = section(probe, "vocab")
    tok = oracle._vocab
    cases = iter(got["tokenized"])
    for text in TEXTS:
        for add, parse in FLAGS:
            case = next(cases)
            ids = oracle.tokenize(text.encode(), add_bos=add, special=parse)
            assert case["ids"] == ids, (text, add, parse)
            for rm in (False, True):
                keep = ids[1:] if rm and tok.add_bos and ids[:1] == [tok.bos_id] else ids
                keep = keep[:-1] if rm and tok.add_eos and keep[-1:] == [tok.eos_id] else keep
                for unparse in (False, True):
                    want = b"".join(tok.token_to_piece(t, special=unparse) for t in keep)
                    assert bytes.fromhex(case["detok"][f"{rm}-{unparse}"]) == want
            if not parse:
                assert tok.detokenize(ids) == text.encode() or tok.add_bos


def test_c_entry_point_tokenizes_like_llama_tokenize(probe, oracle):
    got = section(probe, "vocab")
    assert got["c_entry"] == oracle.tokenize("naïve <|im_end|> café".encode(), add_bos=True,
                                             special=True)


def test_pointers_are_checked(probe):
    errors = section(probe, "vocab")["errors"]
    assert "NULL" in errors["null"]
    assert "not a llama_vocab pointer" in errors["model_as_vocab"]
    assert "not a llama_context pointer" in errors["vocab_as_ctx"]


def test_model_facts(probe, oracle):
    got = section(probe, "vocab")["model"]
    md = oracle.metadata
    assert got["n_ctx_train"] == int(md["llama.context_length"])
    assert got["n_embd"] == int(md["llama.embedding_length"]) == oracle.n_embd()
    assert got["n_layer"] == int(md["llama.block_count"])
    assert got["meta"] == [len("llama"), "llama"[:7]]         # snprintf: truncated, NUL-ended
    assert got["meta_count"] == len(md)
    assert got["chat_template"] == md["tokenizer.chat_template"]
    assert got["n_ctx"] == oracle.n_ctx() and got["get_model"]


def eval_rows(smollm2, ids, pieces):
    """Logits rows of a pyinfer Llama (logits_all) that evaluates `ids` in these pieces."""
    ref = Llama(str(smollm2), n_ctx=N_CTX, n_threads=2, verbose=False, logits_all=True)
    try:
        done = 0
        for n in pieces:
            ref.eval(ids[done:done + n])
            done += n
        return ref.scores[:len(ids)].copy()
    finally:
        ref.close()


def test_llama_decode_gives_the_logits_of_eval(probe, smollm2):
    # decode(0..8, outputs 3 and 7); drop the tail from 5; decode(5..end, every output).
    # With logits_all each batch is one eval; without, a batch is evaluated in pieces that
    # end at each output position (the oracle evaluates the same pieces).
    got = section(probe, "decode")
    _, out = probe
    ids = got["all"]["ids"]
    n = len(ids)
    oracles = {"all": eval_rows(smollm2, ids, [5, n - 5]),
               "last": eval_rows(smollm2, ids, [4, 1] + [1] * (n - 5))}
    first_rows = {"all": eval_rows(smollm2, ids, [8]), "last": eval_rows(smollm2, ids, [4, 4])}
    for key in ("all", "last"):
        g = got[key]
        assert (g["middle"], g["tail"], g["n_after_rm"]) == (False, True, 5)
        assert g["n_tokens"] == n and g["input_ids"] == ids
        assert "seq_id 0" in g["other_seq"] and "do not continue" in g["gap"]
        np.testing.assert_array_equal(np.load(out / f"{key}_first.npy"), first_rows[key][[3, 7]])
        np.testing.assert_array_equal(np.load(out / f"{key}_last_ith.npy"), first_rows[key][7])
        np.testing.assert_array_equal(np.load(out / f"{key}_second.npy"), oracles[key][5:])


def test_prompt_lookup_drafts(probe):
    # worked by hand: the earliest earlier occurrence of the last n-gram (n from max down
    # to 1) gives what followed it, at most num_pred_tokens, never past the end
    got = section(probe, "drafts")
    assert got["got"] == [[1, 2], [], [3, 4, 2, 5], [9, 7, 8], [], [], [6, 5, 6]]
    assert got["call"] == [8, 1, 2] and got["dtype"] == "int32"
    assert got["empty_dtype"] == "int32"


def test_clean_spaces_follows_llama_cpp(probe):
    # llama.cpp's detokenizer clean-up (BPE vocabularies with clean_spaces): its three
    # passes worked by hand on each text
    got = section(probe, "clean_spaces")
    assert got == {"Hello , world .": "Hello, world.", "it ' s": "it's",
                   "I 'm here": "I'm here", "they 're , we 've": "they're, we've",
                   "don 't": "don 't", "I 'll": "I 'll", "a 'x": "a 'x", " .": ".",
                   "a ' ' b": "a'' b", "x ?! y": "x?! y", "": "", "'": "'"}


def test_server_help():
    proc = subprocess.run([sys.executable, "-m", "llama_cpp.server", "--help"],
                          env=compat_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m llama_cpp.server")
    for flag in ("--model", "--n_ctx", "--n_gpu_layers", "--host", "--port", "--config_file"):
        assert flag in proc.stdout


def test_server_serves_the_model(smollm2, oracle):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2),
                             "--n_ctx", str(N_CTX), "--n_threads", "2", "--port", str(port)],
                            env=compat_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                models = httpx.get(f"{url}/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        assert models["data"]
        body = httpx.post(f"{url}/completions", json={"prompt": PROMPT, "max_tokens": 8,
                                                      "temperature": 0.0, "repeat_penalty": 1.0},
                          timeout=120).json()
        oracle.reset()
        want = oracle(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        assert body["choices"][0]["text"] == want
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def fake_site(tmp_path, name):
    site = tmp_path / "site"
    info = site / "llama_cpp_python-0.3.36.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.36\n")
    return site


@pytest.mark.parametrize("name", ["llama_cpp_python", "llama-cpp-python", "Llama.CPP_python"])
def test_refuses_to_import_beside_llama_cpp_python(tmp_path, name):
    proc = subprocess.run(
        [sys.executable, "-c", "import llama_cpp"], capture_output=True, text=True,
        env=compat_env(fake_site(tmp_path, name)), timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("ImportError: llama_cpp: both llama-cpp-python 0.3.36")
    assert "pip uninstall -y llama-cpp-python" in err and "pyinfer-llama-cpp" in err


def test_imports_beside_an_unrelated_distribution(tmp_path):
    site = fake_site(tmp_path, "llama-cpp-python-helper")
    got = run_compat("import json, llama_cpp; print(json.dumps(llama_cpp.__version__))",
                     extra_paths=[site])
    assert got.startswith("0.3.36+pyinfer.")
