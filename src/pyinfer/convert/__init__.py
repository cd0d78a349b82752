"""Conversion tools: Hugging Face checkpoints -> GGUF / PowerInfer GGUF, GGUF quantization.

    python convert.py HF_DIR [PREDICTOR_DIR] --outfile OUT.gguf --outtype q4_0
    python -m pyinfer.quantize IN.gguf OUT.gguf q4_k_m

Modules: ``checkpoint`` (safetensors / .bin / predictor reading), ``hf_config``
(config.json), ``tensor_map`` (the architectures' tensor maps, as data), ``vocab`` and
``pretokenizers`` (tokenizer metadata), ``quant_types`` (type rules and
quantizers), ``writer`` (streaming, atomic GGUF output), ``hf_to_gguf`` (the
conversion), ``quantize`` (GGUF -> GGUF), ``cli`` (command lines).
"""
