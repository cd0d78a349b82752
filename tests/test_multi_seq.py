"""Several sequences in one engine (issue 19): a KV cache of one stream per sequence,
batched forwards over tokens of several sequences, and batch invariance: a sequence's
logits are bit-identical whether its tokens run alone or batched with others.

Oracles: the same engine decoding one token at a time (decode([t]) is the plain path every
generation used before), and, per op, the single-row product and a one-stream cache."""
import numpy as np
import pytest

from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, quantize


def _engine(path, n_seq, **kw):
    return Engine(path, ContextSettings(n_ctx=kw.pop("n_ctx", 256), n_threads=2, n_seq_max=n_seq, **kw))


# ---- ops ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool():
    p = ThreadPool(3)
    yield p
    p.close()


def _mm(pool, wq, t, K, M, b, rowwise, repack=False):
    with Context(64 << 20) as ctx:
        w = ctx.new_tensor(t, (K, M))
        w.set_data(wq)
        if repack:
            w.repack()
        ctx.rowwise_products = rowwise
        y = ctx.mul_mat(w, ctx.from_numpy(b))
        Graph(ctx).build(y).plan(3).compute(pool)
        return y.numpy().copy()


ROW_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("name", ROW_TYPES)
def test_rowwise_product_equals_single_rows(pool, name):
    """gs_mul_mat_rowwise: every row of a batch of 2..17 rows equals that row's product
    alone, for every weight type (the plain product's batched orders do not, for F32/F16/
    BF16 and the K-quants: that is why the batch of several sequences uses it)."""
    rng = np.random.default_rng(1)
    K, M = 512, 48
    t = GGMLType[name]
    w = rng.standard_normal((M, K)).astype(np.float32)
    wq = w if name == "F32" else quantize(w, t)
    for n in (2, 5, 8, 17):
        b = rng.standard_normal((n, K)).astype(np.float32)
        full = _mm(pool, wq, t, K, M, b, True)
        for i in range(n):
            np.testing.assert_array_equal(full[i], _mm(pool, wq, t, K, M, b[i:i + 1], False)[0])


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K"])
def test_rowwise_repacked_equals_single_rows(pool, name):
    """Repacked weights (the interleaved Q4_0 layout, Q4_K's 4-row steps): the rowwise
    product of 2..17 rows equals each row's repacked single-row product."""
    rng = np.random.default_rng(2)
    t = GGMLType[name]
    w = quantize(rng.standard_normal((16, 512)).astype(np.float32), t)
    for n in (2, 4, 9, 17):
        b = rng.standard_normal((n, 512)).astype(np.float32)
        full = _mm(pool, w, t, 512, 16, b, True, repack=True)
        for i in range(n):
            np.testing.assert_array_equal(full[i], _mm(pool, w, t, 512, 16, b[i:i + 1], False, repack=True)[0])


@pytest.mark.parametrize("kv", ["f16", "f32", "q8_0"])
@pytest.mark.parametrize("window", [0, 5])
def test_attention_streams_equal_separate_caches(pool, kv, window):
    """gs_attention with n_stream: each token of a batch spanning 3 streams gets exactly
    what a one-stream cache holding only its sequence gives for that sequence's tokens."""
    rng = np.random.default_rng(3)
    D, H, Hkv, L = 64, 4, 2, 64
    t = {"f16": GGMLType.F16, "f32": GGMLType.F32, "q8_0": GGMLType.Q8_0}[kv]
    caches = [rng.standard_normal((L, Hkv * D)).astype(np.float32) for _ in range(3)]
    # tokens: stream 0 positions 10..12 (a prompt chunk), stream 1 position 40, stream 2 position 3
    toks = [(0, 10), (0, 11), (0, 12), (1, 40), (2, 3)]
    q = rng.standard_normal((len(toks), H, D)).astype(np.float32)

    def attend(cache_rows, slots, qs, n_stream):
        with Context(64 << 20) as ctx:
            rows = cache_rows if t == GGMLType.F32 else \
                (cache_rows.astype(np.float16) if t == GGMLType.F16 else quantize(cache_rows, t))
            k = ctx.new_tensor(t, (Hkv * D, len(cache_rows)))
            k.set_data(rows)
            kk = ctx.view(k, (D, Hkv, len(cache_rows)), (k.nb[0], k.nb[1] // Hkv, k.nb[1]))
            out = ctx.attention(ctx.from_numpy(qs), kk, kk, ctx.from_numpy(np.array(slots, np.int32)),
                                0.125, window=window, n_stream=n_stream)
            Graph(ctx).build(out).plan(3).compute(pool)
            return out.numpy().copy()

    got = attend(np.concatenate(caches), [s * L + p for s, p in toks], q, L)
    for s in range(3):
        idx = [i for i, (ts, _) in enumerate(toks) if ts == s]
        want = attend(caches[s], [toks[i][1] for i in idx], q[idx], 0)
        np.testing.assert_array_equal(got[idx], want)


# ---- engine -------------------------------------------------------------------------------

def _greedy_alone(eng, seq, prompt, n):
    """Greedy tokens and the logits they were chosen from, one token per forward."""
    eng.truncate(0, seq=seq)
    logits, toks, seen = eng.decode(prompt, seq=seq), [], []
    for _ in range(n):
        seen.append(logits)
        toks.append(int(np.argmax(logits)))
        logits = eng.decode([toks[-1]], seq=seq)
    return toks, seen


def _greedy_batched(eng, prompts, n):
    """Greedy continuations of all prompts, the sequences decoding together in batches whose
    composition changes (every third step only some sequences take part)."""
    last = [eng.decode(p, seq=i) for i, p in enumerate(prompts)]
    toks, seen = [[] for _ in prompts], [[] for _ in prompts]
    for step in range(n):
        for i in range(len(prompts)):
            seen[i].append(last[i])
            toks[i].append(int(np.argmax(last[i])))
        active = list(range(len(prompts)))
        if step % 3 == 2:
            active = active[::-1][:max(1, len(active) - 1)]
        for i, out in zip(active, eng.decode_batch([(i, [toks[i][-1]]) for i in active])):
            last[i] = out[-1]
        for i in set(range(len(prompts))) - set(active):
            last[i] = eng.decode([toks[i][-1]], seq=i)
    return toks, seen


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_batched_sequences_bit_identical_smollm2(smollm2, kv):
    """Four sequences of different lengths decoded together give, token for token, the
    logits each gets decoding alone."""
    eng = _engine(smollm2, 4, kv_type=kv)
    try:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(10, 1000, size=n).tolist() for n in (5, 17, 40, 3)]
        toks, seen = _greedy_batched(eng, prompts, 10)
        for i, p in enumerate(prompts):
            want_toks, want_seen = _greedy_alone(eng, i, p, 10)
            assert toks[i] == want_toks
            for a, b in zip(seen[i], want_seen):
                np.testing.assert_array_equal(a, b)
    finally:
        eng.close()


def test_batched_and_verified_tokens_bit_identical_gemma3(gemma3):
    """Gemma 3 (Q4_K/Q6_K/Q5_0/Q8_0 weights, sliding-window layers, a Q4_0 cache with
    its rotations): a batch of 8 sequences, and 3 tokens of one sequence verified in one
    forward, give exactly the one-token-at-a-time logits."""
    _check_batch_and_verify(_engine(gemma3, 8, kv_type="q4_0", n_ctx=300), [2, 100, 200, 300, 400])


def _check_batch_and_verify(eng, prompt):
    """Sequence s holds prompt[:2 + s % 4]; a batch of one token per sequence, and three
    tokens of sequence 0 verified in one forward, equal decoding them one by one. Closes eng."""
    try:
        n = eng.n_seq
        for s in range(n):
            eng.decode(prompt[:2 + s % 4], seq=s)
        out = eng.decode_batch([(s, [5 + s]) for s in range(n)])
        for s in range(n):
            eng.truncate(2 + s % 4, seq=s)
            np.testing.assert_array_equal(out[s][-1], eng.decode([5 + s], seq=s))
        eng.truncate(2, seq=0)
        verified = eng.decode_batch([(0, [7, 8, 9])])[0]
        eng.truncate(2, seq=0)
        np.testing.assert_array_equal(verified, np.stack([eng.decode([t], seq=0) for t in (7, 8, 9)]))
    finally:
        eng.close()


def test_single_sequence_engine_unchanged(smollm2):
    """With n_seq_max > 1, a sequence's prompt and decode logits are those of a
    one-sequence engine (the streams do not change the attention's arithmetic)."""
    one, many = _engine(smollm2, 1), _engine(smollm2, 3)
    try:
        p = list(range(20, 60))
        np.testing.assert_array_equal(one.decode(p), many.decode(p, seq=2))
        np.testing.assert_array_equal(one.decode([7]), many.decode([7], seq=2))
    finally:
        one.close()
        many.close()


def test_copy_prefix_and_truncate_are_cache_operations(smollm2):
    eng = _engine(smollm2, 3)
    try:
        shared = list(range(100, 140))
        eng.decode(shared, seq=0)
        eng.copy_prefix(0, 2, 30)           # sequence 2 starts from the first 30 tokens
        assert eng.seq_pos[2] == 30
        got = eng.decode(shared[30:] + [5], seq=2)
        eng.truncate(0, seq=1)
        want = eng.decode(shared + [5], seq=1)
        np.testing.assert_array_equal(got, want)
        eng.truncate(10, seq=2)
        assert eng.seq_pos == [40, 41, 10]
        np.testing.assert_array_equal(eng.decode(shared[10:] + [5], seq=2), want)
    finally:
        eng.close()


def test_multi_sequence_errors(smollm2, tiny_path):
    eng = _engine(smollm2, 2, n_ctx=32)
    try:
        with pytest.raises(ValueError, match="sequence id 2"):
            eng.decode([1], seq=2)
        with pytest.raises(ValueError, match="appears twice"):
            eng.decode_batch([(0, [1]), (0, [2])])
        with pytest.raises(ValueError, match="exceeds n_batch"):
            eng.decode_batch([(0, [1] * 20), (1, [1] * 13)])
        eng.decode([1] * 20, seq=0)
        with pytest.raises(ValueError, match="exceed context window"):
            eng.decode_batch([(1, [1]), (0, [1] * 13)])
        assert eng.seq_pos == [20, 0]      # nothing ran
        with pytest.raises(ValueError, match="out of range"):
            eng.decode_batch([(1, [10 ** 7])])
        with pytest.raises(ValueError, match="cannot copy"):
            eng.copy_prefix(1, 0, 5)
        eng.decode([1, 2], seq=1)          # still usable after the refusals
    finally:
        eng.close()
    with pytest.raises(ValueError, match="n_seq_max"):
        Engine(tiny_path, ContextSettings(n_ctx=32, n_seq_max=0))


# ---- sequences and the one decode loop ------------------------------------------------------

def test_llama_sequences_in_threads_equal_sequential(smollm2):
    """Two threads, each completing on its own Sequence of one Llama (n_seq_max=3) with
    `using`, get the texts the Llama's own sequence gives for the same prompts one after
    another; the own sequence is untouched by them."""
    import threading
    from pyinfer import Llama
    llm = Llama(smollm2, n_seq_max=3, n_ctx=256, n_threads=2, verbose=False)
    try:
        prompts = ["The capital of France is", "Once upon a time"]
        want = [llm.create_completion(p, max_tokens=12, temperature=0)["choices"][0]["text"] for p in prompts]
        own_tokens = llm.n_tokens
        seqs = [llm.sequence(1), llm.sequence(2)]
        got = {}

        def run(i):
            with llm.using(seqs[i]):
                got[i] = llm.create_completion(prompts[i], max_tokens=12, temperature=0)["choices"][0]["text"]
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [got[0], got[1]] == want
        assert llm.n_tokens == own_tokens
        assert [s.n_tokens for s in seqs] == llm._engine.seq_pos[1:]
        with pytest.raises(ValueError, match="sequence id 3"):
            llm.sequence(3)
    finally:
        llm.close()


def test_generate_step_is_the_decode_loop(smollm2):
    """generate_step on a bare Sequence yields the greedy tokens Llama.generate yields, with
    the logits they came from (logprobs a normalised log-softmax), and keeps the shared
    prefix of a second prompt."""
    from pyinfer import Llama
    from pyinfer.generate import generate_step
    from pyinfer.sampling import Sampler, SamplingSettings
    llm = Llama(smollm2, n_seq_max=2, n_ctx=128, n_threads=2, verbose=False)
    try:
        prompt = llm.tokenize(b"The history of Rome")
        gen = llm.generate(prompt, temp=0.0)
        want = [next(gen) for _ in range(6)]
        gen.close()
        seq = llm.sequence(1)
        steps = generate_step(seq, prompt, Sampler(SamplingSettings(temperature=0.0)))
        got = [next(steps) for _ in range(6)]
        steps.close()
        assert [s.token for s in got] == want
        for s in got:
            assert int(np.argmax(s.logits)) == s.token
            assert abs(float(np.exp(s.logprobs.astype(np.float64)).sum()) - 1.0) < 1e-4
        kept = []
        steps = generate_step(seq, prompt[:-1] + [want[0]], Sampler(SamplingSettings(temperature=0.0)),
                              on_reuse=lambda k, r: kept.append((k, r)))
        next(steps)
        steps.close()
        assert kept and kept[0][0] == len(prompt) - 1
    finally:
        llm.close()


def test_batched_sequences_bit_identical_powerinfer(tmp_path):
    """A PowerInfer file (predictor per token, neuron-sparse FFN): batched decode tokens and
    verified drafts equal one-token-at-a-time decoding too."""
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "tiny.powerinfer.gguf"
    script = Path(__file__).resolve().parent.parent / "scripts" / "make_synthetic_sparse.py"
    subprocess.run([sys.executable, str(script), "--shape", "tiny", "--vocab", "tiny", "--out", str(out)],
                   check=True, capture_output=True)
    _check_batch_and_verify(_engine(str(out), 4, n_ctx=64), [2, 100, 200, 30, 40])


def test_stream_stays_on_its_sequence_across_threads(smollm2):
    """A completion stream made inside `using(seq)` in one thread and read in other threads
    (as a server's worker threads do) keeps evaluating on seq: the text equals the plain
    one and the Llama's own sequence is untouched."""
    import threading
    from pyinfer import Llama
    llm = Llama(smollm2, n_seq_max=2, n_ctx=256, n_threads=2, verbose=False)
    try:
        want = llm.create_completion("The ocean is", max_tokens=10, temperature=0)["choices"][0]["text"]
        llm.reset()
        seq = llm.sequence(1)
        with llm.using(seq):
            stream = llm.create_completion("The ocean is", max_tokens=10, temperature=0, stream=True)
        pieces = []

        def pull():
            pieces.append(next(stream, None))
        while True:
            t = threading.Thread(target=pull)
            t.start()
            t.join()
            if pieces[-1] is None:
                break
        assert "".join(p["choices"][0]["text"] for p in pieces[:-1]) == want
        assert llm.n_tokens == 0 and seq.n_tokens > 0
    finally:
        llm.close()
