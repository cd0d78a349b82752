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
from typing import Any, Dict, List, Optional, Union
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
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
        default=None, description="The name clients use for this model (default: the file "
        "name, without its directory).")
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
    n_cpu_moe: int = Field(
        default=0, ge=0, description="MoE models: keep the expert tensors of the first N layers "
        "on the CPU (llama.cpp's --n-cpu-moe).")

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

    @property
    def alias(self) -> str:
        """The served name: model_alias, or the file name (never the directory)."""
        return self.model_alias or os.path.basename(self.model) or self.model


class ServerSettings(BaseSettings):
    """How the HTTP server runs."""
    model_config = _CONFIG

    host: str = Field(default="localhost", description="Listen address.")
    port: int = Field(default=8000, description="Listen port.")
    ssl_keyfile: Optional[str] = Field(default=None, description="SSL key file for HTTPS.")
    ssl_certfile: Optional[str] = Field(default=None, description="SSL certificate file.")
    api_key: Optional[str] = Field(
        default=None, validation_alias=AliasChoices("pyinfer_api_key", "api_key"),
        description="If set, every request but /health needs `Authorization: Bearer KEY` "
        "(also PYINFER_API_KEY=... or API_KEY=...; prefer those or --api_key_file: a "
        "command-line value is visible to every user in `ps`).")
    api_key_file: Optional[str] = Field(
        default=None, validation_alias=AliasChoices("pyinfer_api_key_file", "api_key_file"),
        description="Read the API key from this file (its first line).")
    cors_origins: Optional[Union[str, List[str]]] = Field(
        default=None, description="Web origins allowed to call the API from a browser "
        "(CORS): comma-separated or a JSON list, e.g. http://localhost:3000; `*` allows any "
        "origin, without credentials (default: none, CORS off).")
    max_request_bytes: int = Field(
        default=2 << 20, ge=1, description="Largest request body in bytes; a larger one is "
        "refused with 413 before it is read.")
    max_prompt_tokens: int = Field(
        default=0, ge=0, description="Longest prompt in tokens (0: the context size); a longer "
        "one is a 400 context_length_exceeded.")
    max_logprobs: int = Field(
        default=5, ge=0, description="Largest `logprobs` of /v1/completions (OpenAI's 5).")
    max_top_logprobs: int = Field(
        default=20, ge=0, description="Largest `top_logprobs` of /v1/chat/completions "
        "(OpenAI's 20).")
    max_n: int = Field(
        default=4, ge=1, description="Largest `n` (choices per request, generated one after "
        "another).")
    max_embedding_inputs: int = Field(
        default=2048, ge=1, description="Most inputs in one /v1/embeddings request "
        "(OpenAI's 2048).")
    any_model_name: bool = Field(
        default=False, description="Serve requests naming an unknown model with the default "
        "model (llama-cpp-python's behaviour) instead of answering 404.")
    interleave_tokens: int = Field(
        default=0, ge=0, description="Fair interleave: a stream hands the model to waiting "
        "requests after this many chunks, saving and restoring its KV cache (0: each request "
        "runs to its end; only with one served model; implies n_parallel 1).")
    n_parallel: int = Field(
        default=4, ge=1, description="Parallel slots: requests generating at once, their "
        "decode steps batched into one forward (continuous batching; the model holds one KV "
        "sequence of n_ctx positions per slot). 1: one request at a time. Only with one "
        "served model and no interleave_tokens.")
    max_queued_requests: int = Field(
        default=64, ge=0, description="With n_parallel > 1: most requests waiting for a free "
        "slot; more are refused with 429 (0: no limit).")
    disable_ping_events: bool = Field(
        default=False, description="No SSE keep-alive pings (some clients need that).")
    root_path: str = Field(default="", description="Root path behind a reverse proxy.")

    @field_validator("api_key", "api_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """API_KEY= (empty) means no key, as unsetting it does."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Optional[List[str]]:
        """A JSON list, a comma-separated string or a list -> checked origins (None: off)."""
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if not isinstance(value, (list, tuple)):
            raise ValueError("cors_origins must be a comma-separated string or a list")
        origins = []
        for item in value:
            for part in str(item).split(","):
                if part.strip():
                    origins.append(_origin(part.strip()))
        return origins or None

    @model_validator(mode="after")
    def _read_api_key_file(self) -> "ServerSettings":
        if self.api_key_file is None:
            return self
        try:
            with open(self.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except OSError as e:
            raise ValueError(f"api_key_file: cannot read {self.api_key_file}: "
                             f"{e.strerror or e}") from None
        if not key:
            raise ValueError(f"api_key_file: {self.api_key_file} is empty")
        if self.api_key is not None and self.api_key != key:
            raise ValueError("both api_key and api_key_file are set, to different keys: give one")
        self.api_key = key
        return self

    def cors_credentials(self) -> bool:
        """Browsers may send cookies only to an explicit list of origins, never with `*`."""
        return bool(self.cors_origins) and "*" not in self.cors_origins


def _origin(text: str) -> str:
    """`*` or a browser origin, scheme://host[:port] (a trailing slash is dropped)."""
    if text == "*":
        return text
    parts = urlsplit(text.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path \
            or parts.query or parts.fragment:
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


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
