"""`Llama`: a drop-in replacement for llama-cpp-python's `llama_cpp.Llama` (0.3.x).

    from pyinfer import Llama
    llm = Llama(model_path="model.gguf", n_ctx=2048, verbose=False)
    out = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"])
    print(out["choices"][0]["text"])

Same constructor keywords, methods, return dicts, streaming chunks and error texts as
llama-cpp-python; the keywords are resolved once by `LlamaOptions` (llama_options.py),
completions live in completion.py (fill-in-the-middle in infill.py), chat in chat.py,
`from_pretrained` in hub.py, and what code written against llama-cpp-python reads of
llama.cpp's structs (`model_params`, `context_params`, `_model`, `_ctx`) in
llama_params.py. This module keeps the sequence state:
`input_ids[:n_tokens]` are the tokens in the KV cache, `scores` their logits rows (every row
with logits_all=True, as llama-cpp-python), and `generate` reuses the longest cached prefix
of a new prompt.

Threads: the public calls of one Llama are serialised (call_lock.CallLock: a stream holds the
model until it ends), so two threads get what two sequential calls give; `close()` waits
only for the forward pass in flight, and every later call raises LlamaClosedError.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from types import GeneratorType
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import chat as chat_mod
from .call_lock import CallLock, LlamaClosedError, StreamInterruptedError  # noqa: F401
from .completion import CompletionRequest, create_completion, logits_to_logprobs
from .embedding import embed_texts
from .engine import Engine
from .gguf_model import GGUFFile
from .grammar import Automaton, GrammarMatcher, LlamaGrammar, VocabTrie
from .infill import FimTokens
from .llama_cache import BaseLlamaCache, LlamaState, longest_token_prefix
from .llama_options import (LLAMA_ATTENTION_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE,
                            LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
                            LLAMA_SPLIT_MODE_LAYER, LlamaOptions, load_report, metadata_strings)
from .llama_params import LlamaContextHandle, LlamaModelHandle
from .llama_tokenizer import LlamaTokenizer
from .sampling import (LLAMA_DEFAULT_SEED, LogitsProcessorList, Sampler, SamplingSettings,
                       StoppingCriteriaList)
from .generate import SpecStats, generate_step
from .llama_views import SequenceViews
from .sequence import Sequence as ModelSequence
from .tokenizer import Tokenizer

_GRAMMAR_CACHE_SIZE = 8     # compiled grammars a Llama keeps (by GBNF text)


def _serialised(method):
    """Run a public method as one call under the Llama's CallLock (waiting for a call or a
    stream of another thread); a generator it returns holds the lock until it ends."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._calls.call():
            out = method(self, *args, **kwargs)
        return self._calls.stream(out) if isinstance(out, GeneratorType) else out
    return call


class Llama(SequenceViews):
    """High-level interface to a GGUF model (llama-cpp-python compatible)."""

    def __init__(
        self, model_path: str, *, n_gpu_layers: int = 0, split_mode: int = LLAMA_SPLIT_MODE_LAYER,
        main_gpu: int = 0, tensor_split: Optional[List[float]] = None, vocab_only: bool = False,
        use_mmap: bool = True, use_mlock: bool = False,
        kv_overrides: Optional[Dict[str, Union[bool, int, float, str]]] = None,
        seed: int = LLAMA_DEFAULT_SEED, n_ctx: int = 512, n_batch: int = 512, n_ubatch: int = 512,
        n_threads: Optional[int] = None, n_threads_batch: Optional[int] = None,
        rope_scaling_type: Optional[int] = LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
        pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
        attention_type: int = LLAMA_ATTENTION_TYPE_UNSPECIFIED,
        rope_freq_base: float = 0.0, rope_freq_scale: float = 0.0, yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0, yarn_beta_fast: float = 32.0, yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0, logits_all: bool = False, embedding: bool = False,
        offload_kqv: bool = True, flash_attn: bool = False, op_offload: Optional[bool] = None,
        swa_full: Optional[bool] = None, no_perf: bool = False, last_n_tokens_size: int = 64,
        lora_base: Optional[str] = None, lora_scale: float = 1.0, lora_path: Optional[str] = None,
        numa: Union[bool, int] = False, chat_format: Optional[str] = None, chat_handler=None,
        draft_model=None, tokenizer=None, type_k: Optional[int] = None,
        type_v: Optional[int] = None, spm_infill: bool = False, verbose: bool = True,
        sparse_threshold: Optional[float] = None, dense: bool = False, neuron_bundle: bool = True,
        **kwargs):
        """Load `model_path`. Raises ValueError when it does not exist; options pyinfer
        cannot honour raise UnsupportedOptionError (lora_path, LongRoPE as a context option,
        KV cache types other than F16/F32/Q8_0/Q4_0 or K and V of different types).

        pyinfer's own keywords, for PowerInfer models (PWRI files with predictors):
        `sparse_threshold` overrides the file's powerinfer.sparse_threshold (a neuron is
        computed iff its predictor score >= threshold; -inf computes all, through the
        sparse operators); `dense=True` computes every neuron without the predictor;
        `neuron_bundle=False` keeps the three FFN matrices as mapped instead of repacking
        them into one record per neuron for the fused sparse FFN op."""
        t_load = time.perf_counter()
        self._engine: Optional[Engine] = None
        self._own: Optional[ModelSequence] = None
        self._active = threading.local()    # .seq: the sequence `using` made current in a thread
        opts = LlamaOptions.from_keywords(dict(locals()), kwargs)
        opts.check_supported()
        self._opts = opts
        self.verbose, self.model_path = verbose, model_path
        self.numa, self.tensor_split, self.kv_overrides = numa, tensor_split, kv_overrides
        self.lora_base, self.lora_scale, self.lora_path = lora_base, lora_scale, lora_path
        self.spm_infill, self.draft_model = spm_infill, draft_model
        self.spec_stats = SpecStats()     # speculative decoding: drafted / accepted tokens
        self.last_n_tokens_size = last_n_tokens_size
        self.cache: Optional[BaseLlamaCache] = None
        self._grammar_vocab: Optional[VocabTrie] = None     # built by the first grammar
        self._grammar_automata: Dict[str, Automaton] = {}   # GBNF text -> compiled grammar
        self._seed = opts.seed_value

        self._file = GGUFFile(model_path)
        md = {**self._file.metadata, **opts.model_overrides()}
        arch = md.get("general.architecture", "")
        n_ctx_train = int(md.get(f"{arch}.context_length", 0) or 2048)
        self.n_batch = opts.resolve_n_batch(n_ctx_train)
        self.n_threads, self.n_threads_batch = opts.resolve_threads()
        self.model_params, self.context_params = opts.model_params(), opts.context_params(n_ctx_train)
        self._vocab = Tokenizer.from_gguf(self._file.reader)
        opts.apply_tokenizer_overrides(self._vocab)
        self._fim = FimTokens.from_vocab(self._vocab)
        self.metadata: Dict[str, str] = metadata_strings(self._file.metadata)
        self._n_embd = int(md.get(f"{arch}.embedding_length", 0))
        self._model = LlamaModelHandle(self._vocab, self._file, self.metadata, self.model_params,
                                       n_ctx_train, self._n_embd, self._fim)
        self._is_recurrent, self._is_hybrid = self._model.is_recurrent, self._model.is_hybrid
        self._custom_tokenizer = tokenizer is not None
        self.tokenizer_ = tokenizer or LlamaTokenizer(self)
        if not vocab_only:
            self._engine = Engine(self._file, opts.context_settings(n_ctx_train))
            self._n_ctx = self._engine.n_ctx
            if verbose:
                print(load_report(model_path, self._engine, self.n_batch,
                                  time.perf_counter() - t_load), file=sys.stderr)
        else:
            self._n_ctx = opts.resolve_n_ctx(n_ctx_train)
        self._n_vocab = self._engine.cfg.n_vocab if self._engine else self._vocab.n_vocab
        if hasattr(draft_model, "check_vocab"):
            draft_model.check_vocab(self._n_vocab)
        self._logits_all = opts.logits_all or draft_model is not None
        self._embedding = embedding
        self._pooling = pooling_type if pooling_type != LLAMA_POOLING_TYPE_UNSPECIFIED else \
            int(md.get(f"{arch}.pooling_type", LLAMA_POOLING_TYPE_NONE))
        self._ctx = LlamaContextHandle(self._model, self.context_params, self._n_ctx, self._pooling)
        self._token_nl, self._token_eos = self._vocab.nl_id, self._vocab.eos_id

        # sequence 0: the state llama-cpp-python's input_ids / scores / n_tokens show
        self._own = self.sequence(0)

        eos, bos = self._vocab.eos_id, self._vocab.bos_id
        self.chat_handler = chat_handler
        self.chat_format, self._chat_handlers = chat_mod.setup_chat(
            self.metadata, chat_format, chat_handler,
            bos_token=self._vocab.token_text(bos) if bos != -1 else "",
            eos_token=self._vocab.token_text(eos) if eos != -1 else "", eos_id=eos,
            verbose=verbose,
            template_limits=self._opts.chat_template_limits or chat_mod.DEFAULT_CHAT_TEMPLATE_LIMITS)

    # ---- state views (as llama-cpp-python) ----------------------------------------------

    @property
    def ctx(self) -> LlamaContextHandle:
        return self._ctx.ctx

    @property
    def model(self) -> LlamaModelHandle:
        return self._model.model

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[:self.n_tokens]

    @property
    def _scores(self) -> np.ndarray:
        return self.scores[:self.n_tokens, :]

    @property
    def eval_tokens(self) -> Deque[int]:
        return deque(self.input_ids[:self.n_tokens].tolist(), maxlen=self._n_ctx)

    @property
    def eval_logits(self) -> Deque[List[float]]:
        return deque(self.scores[:self.n_tokens, :].tolist(),
                     maxlen=self._n_ctx if self._logits_all else 1)

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("this Llama was loaded with vocab_only=True: it has no weights "
                               "to evaluate")
        return self._engine

    # ---- tokens ------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        return self.tokenizer_.tokenize(text, add_bos, special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None,
                   special: bool = False) -> bytes:
        return self.tokenizer_.detokenize(tokens, prev_tokens=prev_tokens, special=special)

    def set_cache(self, cache: Optional[BaseLlamaCache]) -> None:
        self.cache = cache

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    @_serialised
    def reset(self) -> None:
        """Forget the evaluated tokens (the KV cache is overwritten from position 0)."""
        self._seq.reset()

    @_serialised
    def eval(self, tokens: Sequence[int]) -> None:
        """Append `tokens` to the sequence in n_batch chunks, keeping their logits."""
        self._require_engine()
        self._seq.eval(tokens)

    # ---- sampling --------------------------------------------------------------------------

    def _logits_at(self, idx: Optional[int]) -> np.ndarray:
        return self._seq.logits_at(idx)

    @_serialised
    def sample(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0,
               frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
               mirostat_mode: int = 0, mirostat_eta: float = 0.1, mirostat_tau: float = 5.0,
               penalize_nl: bool = True, logits_processor: Optional[LogitsProcessorList] = None,
               grammar=None, idx: Optional[int] = None) -> int:
        """Sample the next token from the logits at position idx (default: the last one).
        Inside `generate` the generation's sampler is used and these arguments are ignored;
        outside it a grammar constrains this one token from the grammar's start."""
        sampler = self._sampler or Sampler(
            self._settings(top_k, top_p, min_p, typical_p, temp, repeat_penalty,
                           frequency_penalty, presence_penalty, mirostat_mode, mirostat_tau,
                           mirostat_eta), logits_processor, self.grammar_matcher(grammar))
        token = sampler.sample(self._logits_at(idx), self._input_ids)
        sampler.accept(token)
        return token

    def _settings(self, top_k, top_p, min_p, typical_p, temp, repeat_penalty, frequency_penalty,
                  presence_penalty, mirostat_mode, mirostat_tau, mirostat_eta) -> SamplingSettings:
        return SamplingSettings(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, penalty_last_n=self.last_n_tokens_size,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            seed=self._seed)

    @_serialised
    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, typical_p: float = 1.0, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                 mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, penalize_nl: bool = True,
                 logits_processor: Optional[LogitsProcessorList] = None,
                 stopping_criteria: Optional[StoppingCriteriaList] = None,
                 grammar=None) -> Iterator[int]:
        """Yield sampled tokens after `tokens`, forever (the caller stops). With reset=True the
        longest prefix the KV cache shares with `tokens` is kept and only the rest evaluated;
        `send(ids)` appends extra ids after the yielded token."""
        settings = self._settings(top_k, top_p, min_p, typical_p, temp, repeat_penalty,
                                  frequency_penalty, presence_penalty, mirostat_mode,
                                  mirostat_tau, mirostat_eta)
        return self.generate_tokens(tokens, settings, logits_processor, stopping_criteria, reset,
                                    grammar)

    def generate_tokens(self, tokens: Sequence[int], settings: SamplingSettings,
                        logits_processor=None, stopping_criteria=None, reset: bool = True,
                        grammar=None):
        """generate_step on the current sequence with a SamplingSettings, yielding tokens
        (send(ids) appends ids): what `generate` and completions run. The sequence is bound
        here, in the caller's thread (see `using`): the stream stays on it whichever thread
        resumes it."""
        self._require_engine()
        seq = self._seq
        sampler = Sampler(settings, logits_processor, self.grammar_matcher(grammar))
        if stopping_criteria is not None and not callable(stopping_criteria):
            stopping_criteria = StoppingCriteriaList(stopping_criteria)     # a plain list
        return self._token_stream(seq, tokens, sampler, stopping_criteria, reset)

    def _token_stream(self, seq: ModelSequence, tokens, sampler, stopping_criteria, reset: bool):
        seq.sampler = sampler

        def told(kept, remaining):
            if self.verbose:
                print(f"Llama.generate: {kept} prefix-match hit, remaining {remaining} prompt "
                      "tokens to eval", file=sys.stderr)

        def evaluate(ids):         # Llama.eval (a subclass may override it), on `seq`
            with self.using(seq):
                self.eval(ids)
        steps = generate_step(seq, tokens, sampler, stopping_criteria, reuse=reset, on_reuse=told,
                              evaluate=evaluate, draft=self.draft_model, stats=self.spec_stats)
        try:
            extra = None
            while True:
                try:
                    step = steps.send(extra) if extra is not None else next(steps)
                except StopIteration:
                    return
                extra = yield step.token
                extra = list(extra) if extra else None
                seq.sampler = sampler     # a call between two steps may have reset it
        finally:
            steps.close()
            if seq.sampler is sampler:
                seq.sampler = None

    def grammar_matcher(self, grammar) -> Optional[GrammarMatcher]:
        """A fresh matcher for a LlamaGrammar (or GBNF text, or a llama_cpp.LlamaGrammar: its
        GBNF text is parsed here). The vocabulary's token trie is built on first use and kept,
        and so are the compiled grammars of the last few grammar texts with their state
        caches (a chat server making a new JSON grammar per request walks warm states)."""
        if grammar is None:
            return None
        if isinstance(grammar, str):
            grammar = LlamaGrammar.from_string(grammar)
        if not isinstance(grammar, LlamaGrammar):
            text = getattr(grammar, "_grammar", None)
            if not isinstance(text, str):
                raise TypeError(f"grammar must be a LlamaGrammar, not {type(grammar).__name__}")
            grammar = LlamaGrammar.from_string(text)
        if self._grammar_vocab is None:
            self._grammar_vocab = VocabTrie.from_tokenizer(self._vocab, self._n_vocab)
        key = (grammar._grammar, grammar.limits)      # the same text under other limits differs
        automaton = self._grammar_automata.pop(key, None) or grammar.automaton
        self._grammar_automata[key] = automaton       # most recent last
        while len(self._grammar_automata) > _GRAMMAR_CACHE_SIZE:
            self._grammar_automata.pop(next(iter(self._grammar_automata)))
        return GrammarMatcher(automaton, self._grammar_vocab)

    # ---- completions -------------------------------------------------------------------

    @_serialised
    def create_completion(
        self, prompt: Union[str, List[int]], suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16, temperature: float = 0.8, top_p: float = 0.95,
        min_p: float = 0.05, typical_p: float = 1.0, logprobs: Optional[int] = None,
        echo: bool = False, stop: Optional[Union[str, List[str]]] = None,
        frequency_penalty: float = 0.0, presence_penalty: float = 0.0, repeat_penalty: float = 1.0,
        top_k: int = 40, stream: bool = False, seed: Optional[int] = None, tfs_z: float = 1.0,
        mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
        model: Optional[str] = None, stopping_criteria: Optional[StoppingCriteriaList] = None,
        logits_processor: Optional[LogitsProcessorList] = None, grammar=None,
        logit_bias: Optional[Dict[int, float]] = None):
        """Complete `prompt` (text, or token ids used as given). Returns a `text_completion`
        dict, or with stream=True an iterator of chunks. max_tokens None or <= 0: until the
        context is full."""
        self._require_engine()
        req = CompletionRequest.from_keywords(
            prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs, echo,
            stop, frequency_penalty, presence_penalty, repeat_penalty, top_k, stream, seed,
            mirostat_mode, mirostat_tau, mirostat_eta, model, stopping_criteria,
            logits_processor, grammar, logit_bias, self.last_n_tokens_size, self._n_vocab)
        return create_completion(self, req)

    def __call__(self, prompt: str, suffix: Optional[str] = None, max_tokens: Optional[int] = 16,
                 temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, logprobs: Optional[int] = None, echo: bool = False,
                 stop: Optional[Union[str, List[str]]] = None, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                 stream: bool = False, seed: Optional[int] = None, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 model: Optional[str] = None,
                 stopping_criteria: Optional[StoppingCriteriaList] = None,
                 logits_processor: Optional[LogitsProcessorList] = None, grammar=None,
                 logit_bias: Optional[Dict[int, float]] = None):
        """Same as create_completion."""
        return self.create_completion(
            prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs, echo,
            stop, frequency_penalty, presence_penalty, repeat_penalty, top_k, stream, seed,
            tfs_z, mirostat_mode, mirostat_tau, mirostat_eta, model, stopping_criteria,
            logits_processor, grammar, logit_bias)

    @_serialised
    def create_chat_completion(
        self, messages: List[Dict[str, Any]], functions=None, function_call=None, tools=None,
        tool_choice=None, temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
        min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
        stop: Optional[Union[str, List[str]]] = None, seed: Optional[int] = None,
        response_format=None, max_tokens: Optional[int] = None, presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0, repeat_penalty: float = 1.0, tfs_z: float = 1.0,
        mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
        model: Optional[str] = None, logits_processor: Optional[LogitsProcessorList] = None,
        grammar=None, logit_bias: Optional[Dict[int, float]] = None,
        logprobs: Optional[bool] = None, top_logprobs: Optional[int] = None):
        """Reply to `messages` with the model's chat template (or chat_format / chat_handler).
        Returns a `chat.completion` dict, or with stream=True an iterator of chunks."""
        handler = (self.chat_handler or self._chat_handlers.get(self.chat_format)
                   or chat_mod.get_chat_completion_handler(self.chat_format))
        return handler(
            llama=self, messages=messages, functions=functions, function_call=function_call,
            tools=tools, tool_choice=tool_choice, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, typical_p=typical_p, logprobs=logprobs,
            top_logprobs=top_logprobs, stream=stream, stop=stop, seed=seed,
            response_format=response_format, max_tokens=max_tokens,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any):
        """create_chat_completion, as the `openai` package's ChatCompletion(Chunk) objects."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("To use create_chat_completion_openai_v1, you must install the "
                              "openai package. You can install it with `pip install openai`.")
        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**c) for c in self.create_chat_completion(*args, **kwargs))
        return ChatCompletion(**self.create_chat_completion(*args, **kwargs))

    # ---- embeddings ------------------------------------------------------------------------

    def create_embedding(self, input: Union[str, List[str]], model: Optional[str] = None):
        """OpenAI-style embedding list of `input` (one entry per string)."""
        inputs = input if isinstance(input, list) else [input]
        embeds, n_tokens = self.embed(inputs, return_count=True)
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": e, "index": i}
                         for i, e in enumerate(embeds)],
                "model": model if model is not None else self.model_path,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @_serialised
    def embed(self, input: Union[str, List[str]], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Final normed hidden states of each input, pooled by the pooling type (NONE, the
        default for llama models: one vector per token; MEAN; CLS: the first token; LAST).
        normalize: L2-normalize each vector. Clears the sequence state, as llama-cpp-python."""
        if not self._embedding:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        self._require_engine()
        data, total = embed_texts(self, [input] if isinstance(input, str) else input,
                                  normalize, truncate)
        self.reset()
        out = data[0] if isinstance(input, str) else data
        return (out, total) if return_count else out

    # ---- state ----------------------------------------------------------------------------

    def save_state(self) -> LlamaState:
        """The evaluated tokens, their logits and KV cache rows (restored by load_state).
        Called while a stream of this Llama is suspended, it sets the stream aside: other
        calls may then use the model, and the stream goes on once its state is loaded back
        (it raises StreamInterruptedError if it resumes on another sequence)."""
        with self._calls.call(set_aside=True):
            return self._save_state()

    def _save_state(self) -> LlamaState:
        self._require_engine()
        state = self._seq.save_state(self._seed)
        if self.verbose:
            print(f"Llama.save_state: saving {state.llama_state_size} bytes of llama state", file=sys.stderr)
        return state

    @_serialised
    def load_state(self, state: LlamaState) -> None:
        self._require_engine()
        self._seq.load_state(state)
        self._seed = state.seed

    # ---- model facts ------------------------------------------------------------------

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_embd(self) -> int:
        return self._n_embd

    def n_vocab(self) -> int:
        return self._n_vocab

    def tokenizer(self) -> LlamaTokenizer:
        return LlamaTokenizer(self)

    def token_eos(self) -> int:
        return self._vocab.eos_id

    def token_bos(self) -> int:
        return self._vocab.bos_id

    def token_nl(self) -> int:
        return self._vocab.nl_id

    def pooling_type(self) -> int:
        return self._pooling

    def close(self) -> None:
        """Free the KV cache, graphs and threads (idempotent). A forward pass running in
        another thread finishes first and that thread's call then raises LlamaClosedError,
        as does every later call that evaluates or touches the sequence (tokenize, detokenize
        and the model's facts keep working). Never waits for a call or an unfinished stream."""
        calls = getattr(self, "_calls", None)
        if calls is not None:
            calls.close()
        if getattr(self, "_engine", None) is not None:
            self._engine.close()

    def __getstate__(self) -> Dict[str, Any]:
        """Pickling keeps the constructor keywords; unpickling loads the model again."""
        return dict(self._opts.__dict__)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    logits_to_logprobs = staticmethod(logits_to_logprobs)
    longest_token_prefix = staticmethod(longest_token_prefix)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: Optional[str],
                        additional_files: Optional[List] = None, local_dir=None,
                        local_dir_use_symlinks: Union[bool, str] = "auto", cache_dir=None,
                        local_files_only: bool = False, **kwargs: Any) -> "Llama":
        """Load the GGUF file of Hugging Face Hub repository `repo_id` that the name or glob
        pattern `filename` matches, downloading it (and `additional_files`) first unless
        cached; needs the huggingface-hub package. local_files_only=True (or HF_HUB_OFFLINE=1)
        uses only the cache or local_dir; local_dir_use_symlinks is accepted and unused (recent
        huggingface_hub versions dropped it). Other keywords go to Llama(...). See hub.py."""
        from .hub import download_gguf
        path = download_gguf(repo_id, filename, additional_files, local_dir, cache_dir,
                             local_files_only)
        return cls(model_path=path, **kwargs)
