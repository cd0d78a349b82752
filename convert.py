#!/usr/bin/env python3
"""Hugging Face checkpoint -> GGUF / PowerInfer GGUF. See `python convert.py --help`."""
from pyinfer.convert.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
