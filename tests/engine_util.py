"""Small helpers the model-level tests share: a tiny-context Engine, greedy decoding with
the logits of every step, and a relative error."""
import numpy as np

from pyinfer.config import ContextSettings
from pyinfer.engine import Engine


def small_engine(path, **kw):
    """An Engine with a 64-token context, 16-token batches and 2 threads (overridable)."""
    return Engine(str(path), ContextSettings(**{"n_ctx": 64, "n_batch": 16, "n_threads": 2, **kw}))


def greedy(eng, prompt, n):
    """(n greedy tokens after `prompt`, the (n, n_vocab) logits each was picked from)."""
    logits = [eng.decode(prompt)]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits.append(eng.decode([out[-1]]))
    return out, np.stack(logits[:-1])


def rel_err(a, b):
    """Largest absolute difference relative to the largest magnitude of b."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def f32_conversions(root, hf_dir):
    """name -> our F32 conversion (into directory `root`) of the checkpoint at hf_dir(name),
    converted on first use and then reused."""
    from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
    cache = {}

    def get(name):
        if name not in cache:
            out = str(root / f"{name}.gguf")
            convert(hf_dir(name), ConvertOptions(out, "f32", progress=False))
            cache[name] = out
        return cache[name]
    return get
