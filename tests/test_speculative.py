"""Speculative decoding (issue 19): drafts verified in one forward, output identical to
decoding without a draft — greedy and sampled — for prompt lookup and a draft model.

Oracle: the same model without a draft (one token per forward)."""
import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.speculative import LlamaDraftLlama, LlamaPromptLookupDecoding

CODE = '''def area(width, height):
    """Return the area of a rectangle."""
    return width * height


def perimeter(width, height):
    """Return the perimeter of a rectangle."""
    return 2 * (width + height)
'''
PROMPT = ("Rename `width` to `w` in this code and write the code again.\n\n```python\n" + CODE +
          "```\n\n```python\n")


@pytest.fixture(scope="module")
def plain(smollm2):
    m = Llama(smollm2, n_ctx=512, n_threads=2, verbose=False)
    yield m
    m.close()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_p=0.9, seed=7)])
def test_prompt_lookup_output_identical(smollm2, plain, sampling):
    spec = Llama(smollm2, n_ctx=512, n_threads=2, verbose=False,
                 draft_model=LlamaPromptLookupDecoding(num_pred_tokens=8))
    try:
        plain.reset()        # the whole prompt evaluated as one batch, as in the fresh `spec`
        want = plain.create_completion(PROMPT, max_tokens=80, **sampling)["choices"][0]["text"]
        got = spec.create_completion(PROMPT, max_tokens=80, **sampling)["choices"][0]["text"]
        assert got == want
        st = spec.spec_stats
        assert st.drafted > 0 and st.steps > 0 and 0 <= st.accepted <= st.drafted
        if sampling["temperature"] == 0.0:
            assert st.accepted > 0        # the code is repeated: some guesses must hold
    finally:
        spec.close()


def test_draft_model_output_identical_and_accepted(smollm2, plain):
    """The same model as its own draft: every greedy guess is accepted, and the text is the
    plain one; the stream yields the same tokens as plain generate."""
    draft = Llama(smollm2, n_ctx=512, n_threads=2, verbose=False)
    spec = Llama(smollm2, n_ctx=512, n_threads=2, verbose=False,
                 draft_model=LlamaDraftLlama(draft, num_pred_tokens=4))
    try:
        plain.reset()
        want = plain.create_completion("The three primary colors are", max_tokens=24,
                                       temperature=0)["choices"][0]["text"]
        got = spec.create_completion("The three primary colors are", max_tokens=24,
                                     temperature=0)["choices"][0]["text"]
        assert got == want
        assert spec.spec_stats.accepted > 0
        assert spec.spec_stats.accepted >= 0.9 * spec.spec_stats.drafted - 4
        tokens = plain.tokenize(b"Hello there")
        plain.reset()
        g1, g2 = plain.generate(tokens, temp=0.0), spec.generate(tokens, temp=0.0)
        assert [next(g1) for _ in range(10)] == [next(g2) for _ in range(10)]
        g1.close()
        g2.close()
    finally:
        spec.close()
        draft.close()


def test_draft_model_vocabulary_checked(smollm2, tiny_path):
    tiny = Llama(tiny_path, verbose=False)
    try:
        with pytest.raises(ValueError, match="vocabulary"):
            Llama(smollm2, n_ctx=64, verbose=False, draft_model=LlamaDraftLlama(tiny))
    finally:
        tiny.close()


def test_prompt_lookup_candidates():
    f = LlamaPromptLookupDecoding.find_candidate_pred_tokens
    ids = np.array([1, 2, 3, 4, 1, 2], dtype=np.intc)
    assert f(ids, 2, 10).tolist() == [3, 4, 1, 2]
    assert f(ids, 2, 2).tolist() == [3, 4]
    assert f(np.array([5, 6, 7]), 2, 4).tolist() == []


def test_compat_names_are_pyinfer_drafts():
    """The llama_cpp package (compat/src, run in a subprocess as tests/test_compat.py does)
    serves pyinfer's draft models."""
    import subprocess
    import sys
    from pathlib import Path
    src = Path(__file__).resolve().parent.parent / "compat" / "src"
    code = ("import llama_cpp.llama_speculative as ls, pyinfer.speculative as ps; "
            "assert ls.LlamaPromptLookupDecoding is ps.LlamaPromptLookupDecoding; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(src)})
    assert out.stdout.strip() == "ok", out.stderr
