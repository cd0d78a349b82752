"""The FastAPI application: pyinfer.server's (`create_app(settings=Settings(model=...))`)."""
from pyinfer.server.app import create_app  # noqa: F401 (re-exported)

__all__ = ["create_app"]
