"""The FastAPI application: OpenAI-compatible endpoints over one `pyinfer.Llama`.

    from pyinfer.server import create_app
    app = create_app(Settings(model="model.gguf"))      # then: uvicorn.run(app)

Endpoints: POST /v1/completions, /v1/chat/completions (SSE with stream=true, ending in
`data: [DONE]`), /v1/embeddings, GET /v1/models, POST /extras/tokenize,
/extras/tokenize/count, /extras/detokenize, GET /health, GET /metrics (Prometheus text,
`metrics`). With an api_key every endpoint but /health needs `Authorization: Bearer KEY`
(see `security`). With n_parallel > 1 completions run on parallel slots whose decode steps
are batched (`slots`, `batching`). /v1/embeddings answers one
vector per input by default, also for a model that declares no pooling (`pooled_embedding`).

The event loop only moves bytes: everything that touches a model (preparing a request --
grammar, chat template, tokenizing --, generating, embedding, tokenize/detokenize) runs in
a worker thread holding the model's lease, so /health answers while a request of any size
is prepared or generated. Bodies, prompts, logprobs and n are bounded (`limits`); after
use, an idle model gives back the memory its requests left behind (`memory`).
"""
from __future__ import annotations

import base64
import os
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import PlainTextResponse

from ..llama_options import LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_UNSPECIFIED
from .errors import APIError, from_exception, install_handlers
from .slots import run_on_slot
from .generation import ClientGone, prepared_call, run_watching, single_prompt
from .limits import BodySizeLimit, check_request
from .metrics import PROMETHEUS_TYPE, prometheus_text
from .models import ModelHub
from .security import add_cors, add_keyed_docs, authenticator, docs_urls, redactor
from .settings import ModelSettings, ServerSettings, Settings, load_config_file
from .streaming import LeasedEventStream, first_chunk, json_response
from .types import (CreateChatCompletionRequest, CreateCompletionRequest,
                    CreateEmbeddingRequest, DetokenizeInputRequest, TokenizeInputRequest)

TRIM_INTERVAL_S = 1.0        # how often the janitor looks for an idle, used model


def _embedding_base64(data: List[Dict[str, Any]]) -> None:
    """OpenAI's encoding_format=base64: little-endian float32 bytes (flat vectors only)."""
    for item in data:
        vec = item["embedding"]
        if vec and not isinstance(vec[0], list):
            item["embedding"] = base64.b64encode(
                np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def pooled_embedding(llama, settings: ModelSettings, inputs, model: str) -> Dict[str, Any]:
    """`llama.create_embedding`, with one vector per input where the model declares no pooling
    (a causal LM: llama.cpp's NONE, one vector per token) and the settings leave pooling_type
    at -1: then the last token's vector, the only one whose causal attention saw the whole
    input (llama.cpp's LAST pooling, its choice for decoder-only embedders). An explicit
    pooling_type 0 keeps the per-token vectors."""
    out = llama.create_embedding(inputs, model=model)
    if (settings.pooling_type == LLAMA_POOLING_TYPE_UNSPECIFIED
            and llama.pooling_type() == LLAMA_POOLING_TYPE_NONE):
        for item in out["data"]:
            item["embedding"] = item["embedding"][-1]
    return out


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
    only used for the name; it gets min(n_parallel, its n_seq_max) slots). The default
    model is loaded here, before serving."""
    if settings is not None:
        server_settings = ServerSettings.model_validate(settings.model_dump())
        model_settings = [ModelSettings.model_validate(settings.model_dump())]
    elif server_settings is None and model_settings is None:
        server_settings, model_settings = _settings_from_env()
    server_settings = server_settings or ServerSettings()
    if not model_settings:
        raise ValueError("create_app needs model settings")
    hub = ModelHub(model_settings, server_settings.any_model_name, llama=llama,
                   # the fair interleave is a way of serving one request at a time
                   n_parallel=(1 if server_settings.interleave_tokens
                               else server_settings.n_parallel),
                   max_queued=server_settings.max_queued_requests)
    hub.llama                                    # load the default model now

    @asynccontextmanager
    async def lifespan(app):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_janitor, hub)
            yield
            tg.cancel_scope.cancel()

    from .. import __version__
    app = FastAPI(title="pyinfer OpenAI-compatible API", version=__version__,
                  root_path=server_settings.root_path, lifespan=lifespan,
                  **docs_urls(server_settings))
    add_cors(app, server_settings)
    app.add_middleware(BodySizeLimit, limit=server_settings.max_request_bytes)
    redact = redactor(m.model for m in model_settings)
    install_handlers(app, redact)
    app.state.hub, app.state.server_settings = hub, server_settings
    app.include_router(_router(app, hub, server_settings, redact))
    return app


async def _janitor(hub: ModelHub) -> None:
    """Once a second: if the model was used and nobody uses it now, trim its memory."""
    while True:
        await anyio.sleep(TRIM_INTERVAL_S)
        try:
            await hub.trim()
        except Exception as e:       # never let housekeeping end the server
            from .errors import internal_error
            internal_error(e)


def _router(app: FastAPI, hub: ModelHub, ss: ServerSettings,
            redact: Callable[[str], str]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(authenticator(ss))])
    turn = ss.interleave_tokens if len(hub.settings) == 1 and not hub.batching else 0
    public = APIRouter()

    async def generate(request: Request, body, call: Callable):
        """Prepare the request and run `call(llama, **kwargs)` in a worker thread holding the
        lease; a stream keeps the lease until it ends (its first chunk is computed here, so
        that errors up to the first token are HTTP errors). A request whose client left
        while it waited is dropped; a non-streaming one whose client leaves while it runs
        stops at the next token."""
        check_request(body, ss)
        lease = await hub.lease(body.model, shared=True)
        try:
            if await request.is_disconnected():
                raise APIError(400, "Client closed request")
            cancel = threading.Event()
            if hub.batching:     # on a parallel slot; a client leaving cancels its prompt too
                fn = partial(run_on_slot, lease, body, call, cancel, ss)
                if body.stream:
                    chunks = await run_watching(request, fn, cancel)
                    first = await run_watching(request, partial(first_chunk, chunks), cancel)
                else:
                    result = await run_watching(request, fn, cancel)
            elif body.stream:
                fn = partial(prepared_call, lease, body, call, cancel, ss)
                chunks = await anyio.to_thread.run_sync(fn)
                first = await anyio.to_thread.run_sync(first_chunk, chunks)
            else:
                fn = partial(prepared_call, lease, body, call, cancel, ss)
                result = await run_watching(request, fn, cancel)
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
            return LeasedEventStream(chunks, lease, body, pings=not ss.disable_ping_events,
                                     turn=turn, first=first, redact=redact)
        lease.release()
        return await json_response(result)

    @router.post("/v1/completions", summary="Completion")
    async def create_completion(request: Request, body: CreateCompletionRequest):
        prompt = single_prompt(body.prompt)

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
        check_request(body, ss)

        def embed(llama, settings):
            out = pooled_embedding(llama, settings, body.input, lease.answer_name)
            if body.encoding_format == "base64":
                _embedding_base64(out["data"])
            return out
        lease = await hub.lease(body.model)
        try:
            out = await anyio.to_thread.run_sync(embed, lease.llama, hub.settings[lease.alias])
        except Exception as e:
            raise from_exception(e, body) from e
        finally:
            lease.release()
        return await json_response(out)

    @router.get("/v1/models", summary="Models")
    async def get_models():
        return {"object": "list",
                "data": [{"id": alias, "object": "model", "created": hub.created,
                          "owned_by": "me", "permissions": []} for alias in hub.settings]}

    async def with_model(name: Optional[str], fn: Callable, *args):
        """`fn(llama, *args)` in a worker thread, holding the lease of the model `name`
        (tokenizing a big input waits its turn instead of piling up threads)."""
        lease = await hub.lease(name)
        try:
            return await anyio.to_thread.run_sync(partial(fn, lease.llama, *args))
        except Exception as e:
            raise from_exception(e) from e
        finally:
            lease.release()

    def tokens_of(llama, text: str) -> List[int]:
        return llama.tokenize(text.encode("utf-8"), special=True)

    @router.post("/extras/tokenize", summary="Tokenize")
    async def tokenize(body: TokenizeInputRequest):
        return await json_response({"tokens": await with_model(body.model, tokens_of,
                                                                body.input)})

    @router.post("/extras/tokenize/count", summary="Tokenize count")
    async def tokenize_count(body: TokenizeInputRequest):
        return {"count": await with_model(body.model, lambda llama, text: len(
            tokens_of(llama, text)), body.input)}

    @router.post("/extras/detokenize", summary="Detokenize")
    async def detokenize(body: DetokenizeInputRequest):
        text = await with_model(body.model, lambda llama, tokens: llama.detokenize(tokens),
                                body.tokens)
        return {"text": text.decode("utf-8", errors="replace")}

    @public.get("/health", summary="Health")
    async def health():
        """Status and, with parallel slots, how many are idle or busy (llama.cpp's)."""
        if hub.pool is None:
            return {"status": "ok", "model": hub.loaded_alias}
        busy = hub.pool.n_busy
        return {"status": "ok", "model": hub.loaded_alias,
                "slots_idle": hub.n_parallel - busy, "slots_processing": busy}

    @router.get("/metrics", summary="Metrics (Prometheus)")
    async def metrics():
        return PlainTextResponse(prometheus_text(hub), media_type=PROMETHEUS_TYPE)

    add_keyed_docs(app, router, ss)
    combined = APIRouter()
    combined.include_router(router)
    combined.include_router(public)
    return combined
