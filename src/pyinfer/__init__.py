"""pyinfer: GGUF inference on the ggml_sparse tensor library.

    from pyinfer import Llama      # drop-in for `from llama_cpp import Llama`

The names below are imported on first use, so that `import pyinfer.tokenizer` (and the
other pure-Python modules) does not load the compiled extension.
"""
__version__ = "0.1.0"

_LAZY = {
    "Llama": ".llama",
    "LlamaTokenizer": ".llama",
    "LlamaState": ".llama_cache",
    "LlamaRAMCache": ".llama_cache",
    "LlamaCache": ".llama_cache",
    "LlamaGrammar": ".grammar",
    "LogitsProcessorList": ".sampling",
    "StoppingCriteriaList": ".sampling",
    "LlamaClosedError": ".call_lock",
    "StreamInterruptedError": ".call_lock",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'pyinfer' has no attribute {name!r}")
