"""The FastAPI application: OpenAI-compatible endpoints over one `pyinfer.Llama`.

    from pyinfer.server import create_app
    app = create_app(Settings(model="model.gguf"))      # then: uvicorn.run(app)

Endpoints: POST /v1/completions, /v1/chat/completions (SSE with stream=true, ending in
`data: [DONE]`), /v1/embeddings, GET /v1/models, POST /extras/tokenize,
/extras/tokenize/count, /extras/detokenize, GET /health. With an api_key every endpoint
but /health needs `Authorization: Bearer KEY`. /v1/embeddings answers one vector per input
by default, also for a model that declares no pooling (see `pooled_embedding`).
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

from ..llama_options import LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_UNSPECIFIED
from .errors import APIError, from_exception, install_handlers
from .generation import ClientGone, generation_kwargs, run_watching, single_prompt
from .models import ModelHub
from .settings import ModelSettings, ServerSettings, Settings, load_config_file
from .streaming import LeasedEventStream
from .types import (CreateChatCompletionRequest, CreateCompletionRequest,
                    CreateEmbeddingRequest, DetokenizeInputRequest, TokenizeInputRequest)


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
    turn = ss.interleave_tokens if len(hub.settings) == 1 else 0
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
            kwargs = generation_kwargs(lease, body, cancel)
            fn = partial(call, lease.llama, **kwargs)
            result = await (anyio.to_thread.run_sync(fn) if body.stream
                            else run_watching(request, fn, cancel))
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
            return LeasedEventStream(result, lease, body, pings=not ss.disable_ping_events,
                                     turn=turn)
        lease.release()
        return result

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
        lease = await hub.lease(body.model)
        try:
            out = await anyio.to_thread.run_sync(partial(
                pooled_embedding, lease.llama, hub.settings[lease.alias], body.input,
                body.model or lease.alias))
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
        if hub.resolve(name) == hub.loaded_alias:
            return hub.llama
        lease = await hub.lease(name)
        lease.release()
        return lease.llama

    async def tokens_of(body: TokenizeInputRequest) -> List[int]:
        llama = await tokenizer_of(body.model)
        return await anyio.to_thread.run_sync(
            partial(llama.tokenize, body.input.encode("utf-8"), special=True))

    @router.post("/extras/tokenize", summary="Tokenize")
    async def tokenize(body: TokenizeInputRequest):
        return {"tokens": await tokens_of(body)}

    @router.post("/extras/tokenize/count", summary="Tokenize count")
    async def tokenize_count(body: TokenizeInputRequest):
        return {"count": len(await tokens_of(body))}

    @router.post("/extras/detokenize", summary="Detokenize")
    async def detokenize(body: DetokenizeInputRequest):
        llama = await tokenizer_of(body.model)
        try:
            text = await anyio.to_thread.run_sync(llama.detokenize, body.tokens)
        except Exception as e:
            raise from_exception(e, body) from e
        return {"text": text.decode("utf-8", errors="replace")}

    @public.get("/health", summary="Health")
    async def health():
        return {"status": "ok", "model": hub.loaded_alias}

    combined = APIRouter()
    combined.include_router(router)
    combined.include_router(public)
    return combined
