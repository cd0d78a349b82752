"""Server and model settings, as llama-cpp-python's server names them: pyinfer.server's."""
from pyinfer.server.settings import (  # noqa: F401 (re-exported)
    ConfigFileSettings,
    ModelSettings,
    ServerSettings,
    Settings,
)

__all__ = ["ConfigFileSettings", "ModelSettings", "ServerSettings", "Settings"]
