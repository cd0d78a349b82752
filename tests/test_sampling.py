"""The sampler chain on hand-made distributions, and its RNG against std::mt19937."""
import numpy as np
import pytest

from pyinfer.sampling import (LLAMA_DEFAULT_SEED, CppRandom, LogitsProcessorList, Sampler,
                              SamplingSettings, StoppingCriteriaList, apply_logit_bias,
                              apply_penalties, check_logit_bias, draw, min_p, resolve_seed,
                              top_k, top_p, typical_p)

# probabilities 0.5, 0.25, 0.15, 0.10 for ids 2, 0, 3, 1
PROBS = np.array([0.25, 0.10, 0.50, 0.15])
LOGITS = np.log(PROBS).astype(np.float32)
IDS = np.arange(4)


def test_top_k_sorts_and_cuts():
    ids, lg = top_k(IDS, LOGITS, 2)
    assert ids.tolist() == [2, 0]
    assert lg.tolist() == sorted(lg.tolist(), reverse=True)
    assert top_k(IDS, LOGITS, 0)[0].tolist() == [0, 1, 2, 3]   # k <= 0: unchanged, unsorted
    assert top_k(IDS, LOGITS, 10)[0].tolist() == [2, 0, 3, 1]


@pytest.mark.parametrize("p,want", [(0.5, [2]), (0.6, [2, 0]), (0.75, [2, 0]), (0.8, [2, 0, 3]),
                                    (1.0, [0, 1, 2, 3])])
def test_top_p_smallest_prefix_with_mass(p, want):
    assert top_p(IDS, LOGITS, p)[0].tolist() == want


def test_min_p_relative_to_best_keeps_order():
    assert min_p(IDS, LOGITS, 0.3)[0].tolist() == [0, 2, 3]     # >= 0.3 * 0.5
    assert min_p(IDS, LOGITS, 0.6)[0].tolist() == [2]
    assert min_p(IDS, LOGITS, 0.0)[0].tolist() == [0, 1, 2, 3]


def test_typical_p_keeps_tokens_nearest_the_entropy():
    entropy = -(PROBS * np.log(PROBS)).sum()
    nearest = int(np.argmin(np.abs(-np.log(PROBS) - entropy)))
    ids, _ = typical_p(IDS, LOGITS, 0.1)
    assert ids.tolist() == [nearest]


def test_penalties_match_llama_cpp_rule():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_penalties(logits, [0, 1, 0], repeat=2.0, frequency=0.1, presence=0.5)
    np.testing.assert_allclose(out, [2.0 / 2 - 0.2 - 0.5, -2.0 * 2 - 0.1 - 0.5, 1.0, 0.5], rtol=1e-6)


def test_mt19937_stream_and_canonical_double():
    r = CppRandom(5489)                 # std::mt19937's default seed
    assert r._bits.random_raw(3).tolist() == [3499211612, 581869302, 3890346734]
    r = CppRandom(5489)
    u = r.uniform()                     # generate_canonical: (first + second * 2^32) / 2^64
    assert u == (3499211612 + 581869302 * 2.0 ** 32) / 2.0 ** 64
    assert 0.0 <= u < 1.0


def test_seed_resolution():
    assert resolve_seed(42) == 42
    assert resolve_seed(2 ** 32 + 5) == 5                      # C uint32
    # None, -1 and LLAMA_DEFAULT_SEED pick random seeds
    seeds = [resolve_seed(s) for s in (None, -1, LLAMA_DEFAULT_SEED, None, -1)]
    assert all(0 <= s < 2 ** 32 for s in seeds) and len(set(seeds)) == 5


def test_draw_frequencies_follow_softmax():
    rng = CppRandom(1)
    n = 20000
    counts = np.bincount([draw(IDS, LOGITS, rng) for _ in range(n)], minlength=4)
    # binomial standard error at p=0.5 is ~0.0035: 5 sigma
    np.testing.assert_allclose(counts / n, PROBS, atol=0.018)


def test_sampler_greedy_and_seeded_reproducible():
    s = Sampler(SamplingSettings(temperature=0.0))
    assert s.sample(LOGITS) == 2
    a = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    b = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    assert [a.sample(LOGITS) for _ in range(20)] == [b.sample(LOGITS) for _ in range(20)]


def test_single_candidate_still_advances_the_rng():
    a = Sampler(SamplingSettings(temperature=1.0, top_k=1, seed=3))
    b = CppRandom(3)
    a.sample(LOGITS)
    b.uniform()
    assert a.rng.uniform() == b.uniform()


def test_logits_processor_and_bias_and_penalty_history():
    ban_2 = LogitsProcessorList([lambda ids, scores: np.where(np.arange(4) == 2, -np.inf, scores)])
    s = Sampler(SamplingSettings(temperature=0.0), ban_2)
    assert s.sample(LOGITS, np.array([5], dtype=np.intc)) == 0
    s = Sampler(SamplingSettings(temperature=0.0, logit_bias={1: 10.0}))
    assert s.sample(LOGITS) == 1
    s = Sampler(SamplingSettings(temperature=0.0, repeat_penalty=10.0, penalty_last_n=2))
    s.accept(2)
    assert s.sample(LOGITS) == 0            # 2 is penalized: log(0.5)*10 < log(0.25)
    s.accept(0), s.accept(0)                 # 2 falls out of the last-2 window
    assert s.sample(LOGITS) == 2


def test_negative_temperature_samples_the_plain_softmax():
    s = Sampler(SamplingSettings(temperature=-1.0, top_k=1, seed=11))
    picks = {s.sample(LOGITS) for _ in range(200)}
    assert picks == {0, 1, 2, 3}            # no top-k applied


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat_moves_mu_toward_tau(mode):
    flat = np.zeros(64, dtype=np.float32)   # surprise 6 bits for every token
    s = Sampler(SamplingSettings(temperature=1.0, mirostat_mode=mode, mirostat_tau=3.0,
                                 mirostat_eta=0.5, seed=5))
    mu0 = s.mu
    tok = s.sample(flat)
    assert 0 <= tok < 64
    assert s.mu < mu0                       # observed surprise above tau lowers mu
    peaked = np.array([10.0] + [0.0] * 63, dtype=np.float32)
    s = Sampler(SamplingSettings(temperature=1.0, mirostat_mode=mode, mirostat_tau=3.0,
                                 mirostat_eta=0.5, seed=5))
    assert s.sample(peaked) == 0
    assert s.mu > 6.0                       # a near-certain token has surprise ~0 < tau


def test_stopping_criteria_list_any():
    crit = StoppingCriteriaList([lambda ids, lg: False, lambda ids, lg: len(ids) > 2])
    assert not crit(np.array([1, 2]), np.zeros(3))
    assert crit(np.array([1, 2, 3]), np.zeros(3))


def test_logit_bias_ids_are_checked():
    """A negative id would be numpy's index from the end (llama-cpp-python biases the last
    token for -1), one past the vocabulary an IndexError mid-generation: both are a
    ValueError naming the id, before anything is sampled."""
    assert check_logit_bias({"3": 1, 0: -np.inf}) == {3: 1.0, 0: -np.inf}
    assert check_logit_bias(None) == {}
    for bad, match in (({-1: 5.0}, "token id -1 is out of range"),
                       ({"x": 1.0}, "must be integers, got 'x'"),
                       ({1.5: 1.0}, "must be integers"),
                       ({2: float("nan")}, "must be a number or -inf"),
                       ({2: float("inf")}, "must be a number or -inf")):
        with pytest.raises(ValueError, match=match):
            check_logit_bias(bad)
        with pytest.raises(ValueError, match=match):
            SamplingSettings(logit_bias=bad)
    with pytest.raises(ValueError, match=r"token id 4 is out of range \(0 to 3\)"):
        check_logit_bias({4: 1.0}, n_vocab=4)
    with pytest.raises(ValueError, match=r"token id 4 is out of range \(0 to 3\)"):
        apply_logit_bias(LOGITS, {4: 1.0})
    with pytest.raises(ValueError, match="token id -1"):
        apply_logit_bias(LOGITS, {-1: 1.0})          # never LOGITS[-1]
    out = apply_logit_bias(LOGITS, {3: 2.0})
    assert out[3] == LOGITS[3] + 2.0 and (out[:3] == LOGITS[:3]).all()
    s = Sampler(SamplingSettings(temperature=0.0, logit_bias={7: 1.0}))
    with pytest.raises(ValueError, match="token id 7 is out of range"):
        s.sample(LOGITS)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_chat_model import write_tiny_chat_model
    from pyinfer import Llama
    path = write_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    llm = Llama(str(path), n_ctx=64, verbose=False)
    yield llm
    llm.close()


def test_llama_refuses_bad_logit_bias(tiny_llama):
    """The Python API: a negative or out-of-range id raises ValueError (a negative one when
    the call is made, before the prompt is evaluated), and a valid one still works."""
    n_vocab = tiny_llama.n_vocab()
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tiny_llama.create_completion("ab", max_tokens=2, logit_bias={-1: 5.0})
    with pytest.raises(ValueError, match=f"token id {n_vocab} is out of range"):
        tiny_llama.create_completion("ab", max_tokens=2, logit_bias={n_vocab: 5.0})
    z = tiny_llama.tokenize(b"z", add_bos=False)[0]
    tiny_llama.reset()
    out = tiny_llama.create_completion("ab", max_tokens=1, temperature=0.0,
                                       logit_bias={z: 100.0})
    assert out["choices"][0]["text"] == "z"


def test_llama_refuses_bad_logit_bias_ids_before_generating(tmp_path):
    """Through Llama: a negative id and an id past the vocabulary are ValueErrors at call time
    (llama-cpp-python would bias the last token / fail mid-generation), a valid one applies."""
    import pytest
    from pyinfer import Llama
    from tiny_chat_model import write_tiny_chat_model
    path = str(write_tiny_chat_model(tmp_path / "m.gguf"))
    with Llama(path, n_ctx=64, verbose=False) as llm:
        n = llm.n_vocab()
        for bad in ({-1: 5.0}, {n: 5.0}):
            with pytest.raises(ValueError, match="out of range"):
                llm("hello", max_tokens=2, logit_bias=bad)
        forced = llm.tokenize(b"z", add_bos=False)[0]
        out = llm("hello", max_tokens=1, temperature=0.0, logit_bias={forced: 1e4})
        assert llm.tokenize(out["choices"][0]["text"].encode(), add_bos=False) == [forced]
