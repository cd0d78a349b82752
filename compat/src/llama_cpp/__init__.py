"""`llama_cpp` served by pyinfer: llama-cpp-python's package layout and names, so that code
written for llama-cpp-python (LangChain, LlamaIndex, outlines, guidance, instructor, the
`llm` CLI) runs on pyinfer when it does `import llama_cpp`.

    import llama_cpp
    llm = llama_cpp.Llama(model_path="model.gguf", verbose=False)

`from llama_cpp import *` gives what it gives with llama-cpp-python: `Llama`, `LlamaGrammar`,
the caches, `LogitsProcessorList`, `StoppingCriteriaList`, the llama_types names, and the
low-level constants and functions of `llama_cpp.llama_cpp`. `__version__` is the
llama-cpp-python version whose API this follows, with pyinfer's version as a local label
("0.3.36+pyinfer.0.1.0"); `__pyinfer_version__` is pyinfer's own.

Importing it beside an installed llama-cpp-python raises ImportError (see _guard.py).
"""
from ._guard import refuse_beside_llama_cpp_python

refuse_beside_llama_cpp_python()

import re as _re  # noqa: E402

import pyinfer as _pyinfer  # noqa: E402

from .llama_cpp import *  # noqa: E402,F401,F403
from .llama import *  # noqa: E402,F401,F403
# loaded with the package, as llama-cpp-python's `llama` module loads them
from . import _logger, llama_chat_format, llama_speculative  # noqa: E402,F401

API_VERSION = "0.3.36"          # the llama-cpp-python release whose API this package follows
__pyinfer_version__ = _pyinfer.__version__
__version__ = f"{API_VERSION}+pyinfer.{_re.sub(r'[^A-Za-z0-9]+', '.', __pyinfer_version__)}"
