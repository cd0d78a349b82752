"""`python -m llama_cpp.server`: pyinfer's OpenAI-compatible server under llama-cpp-python's
module names (`llama_cpp.server.app.create_app`, `llama_cpp.server.settings.Settings`).
Its options are llama-cpp-python's (`--model`, `--n_ctx`, `--host`, `--port`,
`--config_file`, ...); it needs pyinfer's `server` extra (pip install 'pyinfer[server]')."""
