"""llama-cpp-python's `_internals` class names, for code that imports the module.

llama-cpp-python wraps its C objects in `_internals.LlamaModel` / `LlamaContext`
(`Llama._model`, `Llama._ctx`). pyinfer has no C model or context: `Llama._model` and
`Llama._ctx` are pyinfer's handles (pyinfer.llama_params), exported here under those names
for isinstance checks and annotations. They are made by `Llama`, not from a path and a
params struct; the batch and sampler wrappers have no pyinfer counterpart (decode through
`llama_cpp.llama_decode`, sample through `Llama.sample`).
"""
try:
    from pyinfer.llama_params import LlamaContextHandle as LlamaContext  # noqa: F401
    from pyinfer.llama_params import LlamaModelHandle as LlamaModel  # noqa: F401
except ImportError:     # a pyinfer without the handles
    pass
