"""pyinfer: GGUF inference on the ggml_sparse tensor library."""
__version__ = "0.1.0"
