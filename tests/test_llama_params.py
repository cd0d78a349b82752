"""What code written against llama-cpp-python reads of llama.cpp's structs and handles on a
Llama: model_params / context_params (filled by llama-cpp-python's rules, recomputed here
from the keywords and the GGUF metadata), _model / _ctx / model / ctx, _is_recurrent /
_is_hybrid (llama.cpp's architecture lists), n_gpu_layers without CUDA (runs on the CPU,
same logits) and draft_model (accepted, plain decoding, same greedy tokens)."""
import multiprocessing
import warnings

import gguf
import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.llama_tokenizer import LlamaTokenizer
from pyinfer.offload import GPUUnavailableError, cuda_status
from tiny_chat_model import write_tiny_chat_model

NO_CUDA = not cuda_status()[0]


def test_context_params_follow_llama_cpp_python(tiny_path):
    cpus = multiprocessing.cpu_count()
    n_ctx_train = int(gguf.GGUFReader(tiny_path).fields["llama.context_length"].contents())
    with Llama(tiny_path, n_ctx=100, n_batch=64, n_ubatch=16, verbose=False) as m:
        p = m.context_params
        assert (p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max) == (100, 64, 16, 1)
        assert m.n_ctx() == 256          # what is in effect: llama.cpp pads to 256
        assert (p.n_threads, p.n_threads_batch) == (max(cpus // 2, 1), cpus)
        assert (p.rope_scaling_type, p.pooling_type, p.attention_type) == (-1, -1, -1)
        assert (p.rope_freq_base, p.rope_freq_scale, p.yarn_ext_factor) == (0.0, 0.0, -1.0)
        assert (p.yarn_attn_factor, p.yarn_beta_fast, p.yarn_beta_slow) == (1.0, 32.0, 1.0)
        assert p.yarn_orig_ctx == 0
        assert (p.type_k, p.type_v, p.flash_attn_type) == (1, 1, 0)      # F16, disabled
        assert (p.embeddings, p.offload_kqv, p.no_perf) == (False, True, False)
        assert (p.op_offload, p.swa_full) == (True, True)
        assert isinstance(p.rope_freq_base, float) and isinstance(p.n_ctx, int)
    kw = dict(n_ctx=0, n_batch=1024, n_threads=3, n_threads_batch=5, flash_attn=True, embedding=True,
              rope_freq_base=500.0, rope_scaling_type=1, pooling_type=1, no_perf=True, op_offload=False)
    with Llama(tiny_path, verbose=False, **kw) as m:
        p = m.context_params
        assert (p.n_ctx, p.n_batch, p.n_ubatch) == (n_ctx_train, n_ctx_train, min(n_ctx_train, 512))
        assert (p.n_threads, p.n_threads_batch, p.flash_attn_type, p.embeddings) == (3, 5, 1, True)
        assert (p.rope_freq_base, p.rope_scaling_type, p.pooling_type) == (500.0, 1, 1)
        assert (p.no_perf, p.op_offload) == (True, False)


def test_model_params_follow_llama_cpp_python(tiny_path):
    over = {"llama.rope.freq_base": 500.0}
    with Llama(tiny_path, n_gpu_layers=-1, split_mode=0, main_gpu=1, tensor_split=[1.0, 2.0],
               kv_overrides=over, use_mmap=False, verbose=False) as m:
        p = m.model_params
        assert p.n_gpu_layers == 0x7FFFFFFF       # -1: all layers, as llama-cpp-python stores it
        assert (p.split_mode, p.main_gpu, p.tensor_split, p.kv_overrides) == (0, 1, [1.0, 2.0], over)
        assert p.load_mode == 1                   # MMAP: pyinfer always maps the weights
        assert (p.vocab_only, p.check_tensors, p.use_extra_bufts) == (False, False, True)
    with Llama(tiny_path, n_gpu_layers=3, vocab_only=True, use_extra_bufts=False, verbose=False) as m:
        assert (m.model_params.n_gpu_layers, m.model_params.vocab_only) == (3, True)
        assert m.model_params.use_extra_bufts is False


def test_model_and_context_handles(tiny_path):
    r = gguf.GGUFReader(tiny_path)
    with Llama(tiny_path, n_ctx=64, verbose=False) as m:
        assert m.model is m._model.model and m.ctx is m._ctx.ctx and m._ctx.model is m._model
        h = m._model
        assert h.vocab is m._vocab and h.params is m.model_params and m._ctx.params is m.context_params
        assert h.n_vocab() == m.n_vocab() == len(r.fields["tokenizer.ggml.tokens"].data)
        assert h.n_embd() == m.n_embd() == int(r.fields["llama.embedding_length"].contents())
        assert h.n_ctx_train() == int(r.fields["llama.context_length"].contents())
        assert h.n_params() == sum(int(t.n_elements) for t in r.tensors)
        assert h.size() == sum(int(t.n_bytes) for t in r.tensors)
        assert h.metadata() == m.metadata
        assert m._ctx.n_ctx() == m.n_ctx() and m._ctx.pooling_type() == m.pooling_type()
        assert (h.token_bos(), h.token_eos(), h.token_nl()) == (m.token_bos(), m.token_eos(), m.token_nl())
        assert h.token_cls() == m.token_bos() and (m._token_eos, m._token_nl) == (m.token_eos(), m.token_nl())
        assert h.tokenize(b"the", add_bos=False, special=False) == m.tokenize(b"the", add_bos=False)
        assert h.detokenize([116, 257]) == b"the" and h.token_to_piece(257) == b"he"
        assert h.token_get_text(257) == "he" and h.add_bos_token() is False
        assert (h.token_prefix(), h.token_suffix(), h.token_middle()) == (-1, -1, -1)
        assert m._is_recurrent is False and m._is_hybrid is False
    # llama-cpp-python's test_llama_cpp_tokenization: a vocab-only Llama has a context too
    with Llama(tiny_path, vocab_only=True, verbose=False) as v:
        assert v._ctx.ctx is not None and v._ctx.n_ctx() == v.n_ctx()


@pytest.mark.parametrize("arch, recurrent, hybrid", [("mamba", True, False), ("rwkv7", True, False),
                                                    ("falcon-h1", False, True), ("qwen2", False, False)])
def test_recurrent_and_hybrid_come_from_the_architecture(tmp_path, arch, recurrent, hybrid):
    path = str(write_tiny_chat_model(tmp_path / f"{arch}.gguf", arch=arch))
    with Llama(path, vocab_only=True, verbose=False) as v:     # the vocabulary loads for any arch
        assert (v._is_recurrent, v._is_hybrid) == (recurrent, hybrid)


def test_tokenizer_wrapper(tiny_path):
    tok = LlamaTokenizer.from_ggml_file(tiny_path)
    assert tok.encode("the", add_bos=False) == [116, 257] and tok.decode([116, 257]) == "the"
    with Llama(tiny_path, verbose=False) as m:
        t = m.tokenizer()
        assert t._model is m._model
        assert t.detokenize([257], prev_tokens=[116]) == b"he"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a usable CUDA device")
def test_n_gpu_layers_without_cuda_runs_on_the_cpu(tiny_path, capsys):
    """As llama-cpp-python's CPU build: n_gpu_layers is accepted, the model runs on the CPU
    (the same logits), and verbose mode says so once; vram_budget still refuses."""
    plain = Llama(tiny_path, n_ctx=64, verbose=False)
    plain.eval([5, 6, 7])
    for ngl in (-1, 99):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m = Llama(tiny_path, n_ctx=64, n_gpu_layers=ngl, verbose=False)
        m.eval([5, 6, 7])
        np.testing.assert_array_equal(m._logits, plain._logits)
        assert m._engine.offload_plan is None
        m.close()
    assert capsys.readouterr().err == ""
    Llama(tiny_path, n_ctx=64, n_gpu_layers=-1, verbose=True).close()
    err = capsys.readouterr().err
    assert err.count("pyinfer: note: n_gpu_layers=-1: no usable CUDA GPU (") == 1
    assert "runs on the CPU" in err and "backend CPU" in err
    with pytest.raises(GPUUnavailableError, match="vram_budget=1.0 needs a CUDA GPU"):
        Llama(tiny_path, n_gpu_layers=-1, vram_budget=1.0, verbose=False)
    plain.close()


class _RepeatLastDraft:
    """A draft model (llama-cpp-python's LlamaDraftModel protocol) proposing the last
    token three times: drafts a verifier would mostly reject."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, /, **kwargs):
        self.calls += 1
        return np.full(3, input_ids[-1], dtype=np.intc)


def test_draft_model_verifies_drafts_with_the_same_greedy_tokens(tiny_path):
    """draft_model (any callable, as llama-cpp-python's LlamaDraftModel): its guesses are
    verified, the text and usage are those of plain decoding, every position's logits kept."""
    with Llama(tiny_path, n_ctx=128, verbose=False) as plain:
        want = plain([5, 6], max_tokens=24, temperature=0.0)
        chat_want = plain.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=12,
                                                 temperature=0.0)
    with Llama(tiny_path, n_ctx=128, draft_model=_RepeatLastDraft(), verbose=False) as m:
        got = m([5, 6], max_tokens=24, temperature=0.0)
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        assert got["usage"] == want["usage"]
        chat = m.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=12, temperature=0.0)
        assert chat["choices"][0]["message"] == chat_want["choices"][0]["message"]
        assert m.scores.shape[0] == m.n_ctx()      # logits of every position, as llama-cpp-python
        assert m.spec_stats.drafted > 0
    with pytest.raises(TypeError, match="draft_model must be a LlamaDraftModel"):
        Llama(tiny_path, draft_model="prompt-lookup", verbose=False)


def test_retired_keywords_clients_pass_are_ignored_silently(tiny_path, recwarn):
    """LangChain passes n_parts/f16_kv (and device for embeddings), which llama-cpp-python
    ignores; a misspelt keyword still warns."""
    import warnings
    from pyinfer import Llama
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Llama(tiny_path, n_ctx=32, verbose=False, n_parts=-1, f16_kv=True, device="cpu").close()
    with pytest.warns(RuntimeWarning, match="n_ctxx"):
        Llama(tiny_path, n_ctx=32, verbose=False, n_ctxx=5).close()
