"""Who may call the server, from where, and what its answers may reveal.

- API key: with ServerSettings.api_key (from --api_key, PYINFER_API_KEY / API_KEY or
  --api_key_file) every endpoint but /health needs `Authorization: Bearer KEY`, compared
  in constant time; the OpenAPI schema and its pages (/openapi.json, /docs, /redoc) too;
- CORS: off unless --cors_origins lists the web origins allowed to call the API from a
  browser. Without it a page on another site cannot read any answer (no
  Access-Control-Allow-Origin header), so it cannot drive a server that has no key. An
  explicit list may send credentials; `*` (any origin) never does;
- no filesystem paths: models are named by alias or file name, and `redactor` removes the
  served models' directories from every error message.
"""
from __future__ import annotations

import hmac
import os
from typing import Callable, Iterable, Optional

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError
from .settings import ServerSettings


def authenticator(ss: ServerSettings) -> Callable:
    """A FastAPI dependency refusing requests without the API key (no-op without one)."""
    bearer = HTTPBearer(auto_error=False)
    key = ss.api_key.encode() if ss.api_key is not None else None

    async def authenticate(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if key is None:
            return
        if creds is not None and hmac.compare_digest(creds.credentials.encode(), key):
            return
        raise APIError(401, "Invalid API key", code="invalid_api_key")
    return authenticate


def docs_urls(ss: ServerSettings) -> dict:
    """FastAPI's own docs routes: public without a key; with one they are replaced by
    `add_keyed_docs`."""
    if ss.api_key is None:
        return {}
    return {"docs_url": None, "redoc_url": None, "openapi_url": None}


def add_keyed_docs(app: FastAPI, router, ss: ServerSettings) -> None:
    """With an API key: /openapi.json, /docs and /redoc on `router` (which checks the key).
    A browser does not send the key by itself, so the pages are for clients that do."""
    if ss.api_key is None:
        return
    prefix = ss.root_path.rstrip("/")

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return JSONResponse(app.openapi())

    @router.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=prefix + "/openapi.json", title=app.title)

    @router.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=prefix + "/openapi.json", title=app.title)


def add_cors(app: FastAPI, ss: ServerSettings) -> None:
    """CORS for the configured origins only (none: no CORS headers at all)."""
    if not ss.cors_origins:
        return
    app.add_middleware(CORSMiddleware, allow_origins=list(ss.cors_origins),
                       allow_credentials=ss.cors_credentials(),
                       allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])


def redactor(model_paths: Iterable[str]) -> Callable[[str], str]:
    """A function replacing each served model's path by its file name, and its directory
    by `<model dir>`, in a message."""
    pairs = []
    for path in model_paths:
        pairs.append((path, os.path.basename(path)))
        full = os.path.abspath(path)
        pairs.append((full, os.path.basename(full)))
        for d in {os.path.dirname(path), os.path.dirname(full)}:
            if d and d not in (os.sep, "."):
                pairs.append((d, "<model dir>"))
    pairs = sorted({p for p in pairs if p[0]}, key=lambda p: -len(p[0]))

    def redact(text: str) -> str:
        for old, new in pairs:
            if old in text:
                text = text.replace(old, new)
        return text
    return redact
