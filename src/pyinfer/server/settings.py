"""Server and model settings, as llama-cpp-python's server names them.

Each field can come from the command line (`--n_ctx 1024`), from an environment variable
of the same name (`N_CTX=1024`, case-insensitive; pydantic-settings) or from a config file
(`--config_file` / `CONFIG_FILE`: JSON, or YAML when pyyaml is installed) holding the
server fields plus a `models` list of model settings. Command-line values win over the
environment; a config file replaces the other command-line options, and its values win over
the environment, which still fills the fields it leaves out.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from typing import Any, Dict, List, Optional

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONFIG = SettingsConfigDict(protected_namespaces=(), extra="ignore")

# llama-cpp-python's server defaults (llama_cpp/server/settings.py): decoding on half the
# CPUs, prompt processing on all of them; -1 means all CPUs for either.
CPU_COUNT = multiprocessing.cpu_count()
DEFAULT_N_THREADS = max(CPU_COUNT // 2, 1)
DEFAULT_N_THREADS_BATCH = max(CPU_COUNT, 1)


class ModelSettings(BaseSettings):
    """How one model is loaded (the keywords of `pyinfer.Llama`)."""
    model_config = _CONFIG

    model: str = Field(description="The path to the GGUF model to serve.")
    model_alias: Optional[str] = Field(
        default=None, description="The name clients use for this model (default: the path).")
    n_gpu_layers: int = Field(default=0, ge=-1, description="Layers to put on the GPU.")
    vram_budget: Optional[float] = Field(
        default=None, description="GPU memory budget in GiB (pyinfer's hybrid GPU/CPU placement).")
    seed: int = Field(default=0xFFFFFFFF, description="Random seed (0xFFFFFFFF: random).")
    n_ctx: int = Field(default=2048, ge=0, description="The context size (0: the model's).")
    n_batch: int = Field(default=512, ge=1, description="The batch size per eval.")
    n_ubatch: int = Field(default=512, ge=1, description="The physical batch size.")
    n_threads: int = Field(
        default=DEFAULT_N_THREADS, ge=1,
        description="Threads for decoding: half the CPU cores, at least 1 (-1: all cores).")
    n_threads_batch: int = Field(
        default=DEFAULT_N_THREADS_BATCH, ge=0,
        description="Threads for prompt processing: all CPU cores (-1 or 0: all cores).")
    rope_freq_base: float = Field(default=0.0, description="RoPE base frequency (0: the model's).")
    rope_freq_scale: float = Field(default=0.0, description="RoPE frequency scale (0: the model's).")
    logits_all: bool = Field(
        default=True, description="Keep every position's logits (needed for logprobs).")
    embedding: bool = Field(
        default=False, description="Allow /v1/embeddings (Llama(embedding=True)).")
    pooling_type: int = Field(
        default=-1, ge=-1, le=3,
        description="Embedding pooling: -1 the model's, and for a model that declares none "
        "(a causal LM) the last token's, one vector per input; 0 none (one vector per "
        "token); 1 mean; 2 cls; 3 last.")
    last_n_tokens_size: int = Field(default=64, ge=0, description="Repeat-penalty window.")
    chat_format: Optional[str] = Field(
        default=None, description="Chat format (default: the model's chat template).")
    cache: bool = Field(default=False, description="Keep evaluated prompts in a RAM cache.")
    cache_size: int = Field(default=2 << 30, description="RAM cache size in bytes.")
    sparse_threshold: Optional[float] = Field(
        default=None, description="PowerInfer models: predictor threshold (default: the file's).")
    dense: bool = Field(default=False, description="PowerInfer models: compute every neuron.")
    verbose: bool = Field(default=True, description="Print the load report and timings.")

    @model_validator(mode="before")
    @classmethod
    def _all_cores(cls, values: Any) -> Any:
        """n_threads / n_threads_batch -1 (also from the environment): all CPU cores."""
        if isinstance(values, dict):
            for k in ("n_threads", "n_threads_batch"):
                if str(values.get(k, "")).strip() == "-1":
                    values[k] = CPU_COUNT
        return values

    def llama_kwargs(self) -> Dict[str, Any]:
        """Keywords for `pyinfer.Llama` (unset optional ones left to Llama's defaults)."""
        skip = {"model", "model_alias", "cache", "cache_size"}
        out = {k: v for k, v in self.model_dump().items() if k not in skip}
        for k in ("vram_budget", "sparse_threshold"):
            if out[k] is None:
                del out[k]
        out["model_path"] = self.model
        return out


class ServerSettings(BaseSettings):
    """How the HTTP server runs."""
    model_config = _CONFIG

    host: str = Field(default="localhost", description="Listen address.")
    port: int = Field(default=8000, description="Listen port.")
    ssl_keyfile: Optional[str] = Field(default=None, description="SSL key file for HTTPS.")
    ssl_certfile: Optional[str] = Field(default=None, description="SSL certificate file.")
    api_key: Optional[str] = Field(
        default=None, description="If set, every request needs `Authorization: Bearer KEY`.")
    any_model_name: bool = Field(
        default=False, description="Serve requests naming an unknown model with the default "
        "model (llama-cpp-python's behaviour) instead of answering 404.")
    interleave_tokens: int = Field(
        default=0, ge=0, description="Fair interleave: a stream hands the model to waiting "
        "requests after this many chunks, saving and restoring its KV cache (0: each request "
        "runs to its end; only with one served model).")
    disable_ping_events: bool = Field(
        default=False, description="No SSE keep-alive pings (some clients need that).")
    root_path: str = Field(default="", description="Root path behind a reverse proxy.")


class Settings(ServerSettings, ModelSettings):
    """Server and one model: what the command line and environment give."""


class ConfigFileSettings(ServerSettings):
    """A config file: server fields plus a list of models (the first is the default)."""
    models: List[ModelSettings] = Field(default_factory=list, description="The models to serve.")


def load_config_file(path: str) -> ConfigFileSettings:
    """Read a JSON or (with pyyaml) YAML config file."""
    if not os.path.exists(path):
        raise ValueError(f"Config file {path} not found!")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path} is YAML: install pyyaml to read it") from None
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
    else:
        data = json.loads(raw)
    cfg = ConfigFileSettings.model_validate(data)
    if not cfg.models:
        raise ValueError(f"Config file {path} lists no models")
    return cfg
