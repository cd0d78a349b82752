"""OpenAI-compatible HTTP server for pyinfer (llama-cpp-python's `llama_cpp.server`):

    pip install 'pyinfer[server]'
    python -m pyinfer.server --model model.gguf --n_ctx 2048 --port 8000

Needs fastapi, uvicorn, sse-starlette and pydantic-settings (the `server` extra).
"""
from .app import create_app
from .settings import ConfigFileSettings, ModelSettings, ServerSettings, Settings

__all__ = ["create_app", "ConfigFileSettings", "ModelSettings", "ServerSettings", "Settings"]
