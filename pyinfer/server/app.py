"""The FastAPI application: OpenAI-compatible endpoints over one `pyinfer.Llama`.

    from pyinfer.server import create_app
    app = create_app(Settings(model="model.gguf"))      # then: uvicorn.run(app)

Endpoints: POST /v1/completions, /v1/chat/completions (SSE with stream=true, ending in
`data: [DONE]`), /v1/embeddings, GET /v1/models, POST /extras/tokenize,
/extras/tokenize/count, /extras/detokenize, GET /health. With an api_key every endpoint
but /health needs `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import base64
import hmac
import os
import threading
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError, from_exception, install_handlers
from .models import Lease, ModelHub
from .settings import ModelSettings, ServerSettings, Settings, load_config_file
from .streaming import LeasedEventStream
from .types import (CreateChatCompletionRequest, CreateCompletionRequest,
                    CreateEmbeddingRequest, DetokenizeInputRequest, TokenizeInputRequest)


DISCONNECT_POLL_S = 0.25     # how often a non-streaming request checks for its client


class MinTokensProcessor:
    """Logits processor banning `eos` until `min_tokens` tokens have been generated."""

    def __init__(self, min_tokens: int, eos: int):
        self.min_tokens, self.eos, self.n_prompt = min_tokens, eos, None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.n_prompt is None:
            self.n_prompt = len(input_ids)
        if len(input_ids) - self.n_prompt < self.min_tokens and 0 <= self.eos < len(scores):
            scores[self.eos] = -np.inf
        return scores


class ClientGone(Exception):
    """Raised inside generation when the client of a non-streaming request went away."""


class CancelCheck:
    """Logits processor (it changes nothing) that ends a generation once `event` is set:
    raising from the sampler leaves Llama's sequence state consistent."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.event.is_set():
            raise ClientGone("the client closed the connection")
        return scores


async def _run_watching(request: Request, fn: Callable, event: threading.Event):
    """`fn()` in a worker thread; meanwhile, if the client disconnects, set `event`."""
    result: List[Any] = []
    failure: List[BaseException] = []

    async def work(scope: anyio.CancelScope):
        try:
            result.append(await anyio.to_thread.run_sync(fn))
        except Exception as e:          # re-raised below, not as an ExceptionGroup
            failure.append(e)
        finally:
            scope.cancel()

    async def watch():
        while not event.is_set():
            if await request.is_disconnected():
                event.set()
                return
            await anyio.sleep(DISCONNECT_POLL_S)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, tg.cancel_scope)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    return result[0]


def _grammar(text: str):
    try:
        from .. import LlamaGrammar
    except ImportError:
        raise NotImplementedError("grammar-constrained sampling (LlamaGrammar) is not "
                                  "available in this pyinfer build") from None
    return LlamaGrammar.from_string(text, verbose=False)


def _single_prompt(prompt):
    """One prompt (text or token ids) from the OpenAI `prompt` forms."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        return ""
    if all(isinstance(x, int) for x in prompt):
        return list(prompt)
    if len(prompt) == 1:
        return prompt[0]
    raise APIError(400, "only one prompt per request is supported", param="prompt")


def _generation_kwargs(lease: Lease, body, cancel: threading.Event) -> Dict[str, Any]:
    """Llama keywords for a completion or chat request (`cancel`: set to stop it)."""
    llama = lease.llama
    kw = body.llama_kwargs()
    from ..sampling import LogitsProcessorList
    processors = LogitsProcessorList()
    kw["model"] = body.model or lease.alias
    if body.logit_bias:
        if body.logit_bias_type == "tokens":
            bias: Dict[int, float] = {}
            for text, value in body.logit_bias.items():
                for tok in llama.tokenize(text.encode("utf-8"), add_bos=False, special=True):
                    bias[tok] = value
            kw["logit_bias"] = bias
        else:
            try:
                kw["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
            except ValueError:
                raise APIError(400, "logit_bias keys must be token ids (or set "
                               "logit_bias_type to 'tokens')", param="logit_bias") from None
    if body.grammar is not None:
        kw["grammar"] = _grammar(body.grammar)
    if body.min_tokens > 0:
        processors.append(MinTokensProcessor(body.min_tokens, llama.token_eos()))
    if not body.stream:     # a stream stops when its response is cancelled
        processors.append(CancelCheck(cancel))
    if processors:
        kw["logits_processor"] = processors
    return kw


def _embedding_base64(data: List[Dict[str, Any]]) -> None:
    """OpenAI's encoding_format=base64: little-endian float32 bytes (flat vectors only)."""
    for item in data:
        vec = item["embedding"]
        if vec and not isinstance(vec[0], list):
            item["embedding"] = base64.b64encode(
                np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def _settings_from_env() -> tuple:
    config_file = os.environ.get("CONFIG_FILE")
    if config_file:
        cfg = load_config_file(config_file)
        return ServerSettings.model_validate(cfg.model_dump(exclude={"models"})), cfg.models
    settings = Settings()
    return (ServerSettings.model_validate(settings.model_dump()),
            [ModelSettings.model_validate(settings.model_dump())])


def create_app(settings: Optional[Settings] = None,
               server_settings: Optional[ServerSettings] = None,
               model_settings: Optional[List[ModelSettings]] = None,
               llama=None) -> FastAPI:
    """The application. Give `settings` (server + one model), or `server_settings` and a
    list of `model_settings` (the first is the default model), or nothing: then the
    CONFIG_FILE environment variable, or the environment (MODEL=..., N_CTX=...).
    `llama`: an already loaded Llama to serve as the first model (its settings are then
    only used for the name). The default model is loaded here, before serving."""
    if settings is not None:
        server_settings = ServerSettings.model_validate(settings.model_dump())
        model_settings = [ModelSettings.model_validate(settings.model_dump())]
    elif server_settings is None and model_settings is None:
        server_settings, model_settings = _settings_from_env()
    server_settings = server_settings or ServerSettings()
    if not model_settings:
        raise ValueError("create_app needs model settings")
    hub = ModelHub(model_settings, server_settings.any_model_name, llama=llama)
    hub.llama                                    # load the default model now

    from .. import __version__
    app = FastAPI(title="pyinfer OpenAI-compatible API", version=__version__,
                  root_path=server_settings.root_path)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    install_handlers(app)
    app.state.hub, app.state.server_settings = hub, server_settings
    app.include_router(_router(hub, server_settings))
    return app


def _router(hub: ModelHub, ss: ServerSettings) -> APIRouter:
    bearer = HTTPBearer(auto_error=False)

    async def authenticate(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if ss.api_key is None:
            return
        if creds is not None and hmac.compare_digest(creds.credentials.encode(),
                                                     ss.api_key.encode()):
            return
        raise APIError(401, "Invalid API key", code="invalid_api_key")

    router = APIRouter(dependencies=[Depends(authenticate)])
    public = APIRouter()

    async def generate(request: Request, body, call: Callable):
        """Run `call(llama, **kwargs)` holding the lease; a stream keeps the lease until
        it ends. A request whose client left while it waited is dropped; a non-streaming
        one whose client leaves while it runs stops at the next token."""
        lease = await hub.lease(body.model)
        try:
            if await request.is_disconnected():
                raise APIError(400, "Client closed request")
            cancel = threading.Event()
            kwargs = _generation_kwargs(lease, body, cancel)
            fn = partial(call, lease.llama, **kwargs)
            result = await (anyio.to_thread.run_sync(fn) if body.stream
                            else _run_watching(request, fn, cancel))
        except ClientGone:
            lease.release()
            raise APIError(400, "Client closed request") from None
        except Exception as e:
            lease.release()
            raise from_exception(e, body) from e
        except BaseException:
            lease.release()
            raise
        if body.stream:
            return LeasedEventStream(result, lease, body, pings=not ss.disable_ping_events)
        lease.release()
        return result

    @router.post("/v1/completions", summary="Completion")
    async def create_completion(request: Request, body: CreateCompletionRequest):
        prompt = _single_prompt(body.prompt)

        def call(llama, **kw):
            return llama.create_completion(prompt, **kw)
        return await generate(request, body, call)

    @router.post("/v1/chat/completions", summary="Chat completion")
    async def create_chat_completion(request: Request, body: CreateChatCompletionRequest):
        def call(llama, **kw):
            return llama.create_chat_completion(**kw)
        return await generate(request, body, call)

    @router.post("/v1/embeddings", summary="Embedding")
    async def create_embedding(body: CreateEmbeddingRequest):
        lease = await hub.lease(body.model)
        try:
            out = await anyio.to_thread.run_sync(partial(
                lease.llama.create_embedding, body.input, model=body.model or lease.alias))
        except Exception as e:
            raise from_exception(e, body) from e
        finally:
            lease.release()
        if body.encoding_format == "base64":
            _embedding_base64(out["data"])
        return out

    @router.get("/v1/models", summary="Models")
    async def get_models():
        return {"object": "list",
                "data": [{"id": alias, "object": "model", "created": hub.created,
                          "owned_by": "me", "permissions": []} for alias in hub.settings]}

    async def tokenizer_of(name: Optional[str]):
        """The Llama whose tokenizer serves `name` (loaded, under the lease, if needed)."""
        alias = hub.resolve(name)
        if hub._alias == alias and hub._llama is not None:
            return hub._llama
        lease = await hub.lease(name)
        lease.release()
        return lease.llama

    @router.post("/extras/tokenize", summary="Tokenize")
    async def tokenize(body: TokenizeInputRequest):
        llama = await tokenizer_of(body.model)
        return {"tokens": llama.tokenize(body.input.encode("utf-8"), special=True)}

    @router.post("/extras/tokenize/count", summary="Tokenize count")
    async def tokenize_count(body: TokenizeInputRequest):
        llama = await tokenizer_of(body.model)
        return {"count": len(llama.tokenize(body.input.encode("utf-8"), special=True))}

    @router.post("/extras/detokenize", summary="Detokenize")
    async def detokenize(body: DetokenizeInputRequest):
        llama = await tokenizer_of(body.model)
        try:
            text = llama.detokenize(body.tokens)
        except Exception as e:
            raise from_exception(e, body) from e
        return {"text": text.decode("utf-8", errors="replace")}

    @public.get("/health", summary="Health")
    async def health():
        return {"status": "ok", "model": hub._alias}

    combined = APIRouter()
    combined.include_router(router)
    combined.include_router(public)
    return combined
