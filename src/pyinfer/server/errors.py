"""OpenAI-shaped error bodies: `{"error": {"message", "type", "param", "code"}}`.

Exceptions from `Llama` are mapped by their text, as llama-cpp-python's server does: a
context overflow ("Requested tokens (N) exceed context window of C") becomes 400
`context_length_exceeded` with llama-cpp-python's message; other ValueErrors, TypeErrors and
NotImplementedErrors (bad input, features pyinfer lacks), a chat template that fails on the
messages and input nested too deeply are 400. Anything else is a 500 whose body says only
"Internal server error": the exception and its traceback go to the server's log, never to
the client. Every message passes through the app's redaction (no filesystem paths).
"""
from __future__ import annotations

import re
import sys
import traceback
from typing import Any, Callable, Dict, Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_CONTEXT = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
_NO_EMBEDDING = "must be created with embedding=True"


class APIError(Exception):
    """An error answered with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist", param="model",
                    code="model_not_found")


def from_exception(exc: BaseException, body: Any = None) -> APIError:
    """The API error for an exception raised while serving `body` (a request model)."""
    if isinstance(exc, APIError):
        return exc
    text = str(exc)
    m = _CONTEXT.search(text)
    if m is not None and body is not None:
        return _context_length_exceeded(body, int(m.group(1)), int(m.group(2)))
    if _NO_EMBEDDING in text:
        return APIError(400, text + " (start the server with --embedding true)",
                        param="model", code="embeddings_disabled")
    if isinstance(exc, NotImplementedError):
        return APIError(400, text, code="unsupported")
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, text)
    if isinstance(exc, RecursionError):
        return APIError(400, "the request is nested too deeply")
    if _is_template_error(exc):
        return APIError(400, f"the chat template failed on these messages: {text}",
                        param="messages")
    return internal_error(exc)


def internal_error(exc: BaseException) -> APIError:
    """A 500 with a generic message; the exception goes to the log with its traceback."""
    print(f"pyinfer.server: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return APIError(500, "Internal server error", type="internal_server_error")


def _is_template_error(exc: BaseException) -> bool:
    try:
        from jinja2 import TemplateError
    except ImportError:
        return False
    return isinstance(exc, TemplateError)


def _context_length_exceeded(body: Any, prompt_tokens: int, n_ctx: int) -> APIError:
    completion_tokens = body.max_tokens
    total = (completion_tokens or 0) + prompt_tokens
    if hasattr(body, "messages"):
        message = (f"This model's maximum context length is {n_ctx} tokens. However, you "
                   f"requested {total} tokens ({prompt_tokens} in the messages, "
                   f"{completion_tokens} in the completion). Please reduce the length of the "
                   "messages or completion.")
    else:
        message = (f"This model's maximum context length is {n_ctx} tokens, however you "
                   f"requested {total} tokens ({prompt_tokens} in your prompt; "
                   f"{completion_tokens} for the completion). Please reduce your prompt; or "
                   "completion length.")
    return APIError(400, message, param="messages", code="context_length_exceeded")


def install_handlers(app, redact: Callable[[str], str] = lambda text: text) -> None:
    """Answer APIError, HTTP errors, request validation errors and any other exception in
    OpenAI's shape; `redact` cleans every message (the served models' paths)."""

    def respond(err: APIError):
        err.message = redact(err.message)
        return err.response()

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return respond(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        err = APIError(exc.status_code, str(exc.detail),
                       type="invalid_request_error" if exc.status_code < 500
                       else "internal_server_error",
                       code="request_too_large" if exc.status_code == 413 else None)
        response = respond(err)
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, loc = f"the body is not valid JSON: {message}", []
        elif loc:
            message = f"{'.'.join(loc)}: {message}"
        return respond(APIError(400, message, param=loc[0] if loc else None))

    @app.exception_handler(RecursionError)
    async def _too_deep(request, exc: RecursionError):
        return respond(APIError(400, "the request is nested too deeply"))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        # Starlette re-raises the exception after this answer: the server logs it
        return respond(APIError(500, "Internal server error", type="internal_server_error"))
