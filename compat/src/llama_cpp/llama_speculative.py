"""Draft models for speculative decoding (llama-cpp-python's `llama_speculative`): pyinfer's
(pyinfer.speculative), which Llama verifies in one forward per draft with output identical
to decoding without one.

    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    llm = Llama("model.gguf", draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
"""
from pyinfer.speculative import LlamaDraftLlama, LlamaDraftModel, LlamaPromptLookupDecoding

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding", "LlamaDraftLlama"]
