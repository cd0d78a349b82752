"""GET /metrics: the server's counters in Prometheus' text format (version 0.0.4).

Names are llama.cpp's server's (`llamacpp:prompt_tokens_total` ...) under the prefix
`pyinfer:` (a dashboard made for llama.cpp needs the prefix changed, nothing else), plus
pyinfer's own: the decode batch-size histogram and the prefix cache's hits. The generation
counters come from the continuous-batching scheduler (n_parallel > 1); a server of one
request at a time reports the request and KV-cache gauges only.
"""
from __future__ import annotations

from typing import List

PREFIX = "pyinfer:"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _metric(out: List[str], name: str, kind: str, help_text: str, value) -> None:
    out.append(f"# HELP {PREFIX}{name} {help_text}")
    out.append(f"# TYPE {PREFIX}{name} {kind}")
    out.append(f"{PREFIX}{name} {_num(value)}")


def _num(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def prometheus_text(hub) -> str:
    """The metrics of `hub` (server.models.ModelHub) as Prometheus text."""
    out: List[str] = []
    pool = hub.pool
    busy = pool.n_busy if pool is not None else int(hub.busy)
    _metric(out, "requests_processing", "gauge", "Requests generating now (busy slots).", busy)
    _metric(out, "requests_deferred", "gauge", "Requests waiting for a free slot.",
            hub.queued if hub.batching else hub.waiting)
    _metric(out, "n_parallel", "gauge", "Parallel slots.", hub.n_parallel)
    llama = hub._llama
    eng = getattr(llama, "_engine", None) if llama is not None else None
    if eng is not None and not eng.closed:
        held = sum(eng.seq_pos)
        _metric(out, "kv_cache_tokens", "gauge", "Positions the KV cache holds.", held)
        _metric(out, "kv_cache_usage_ratio", "gauge", "KV cache usage (1 = full).",
                held / float(eng.n_seq * eng.n_ctx))
    if pool is None:
        return "\n".join(out) + "\n"
    m = pool.metrics()
    _metric(out, "prompt_tokens_total", "counter", "Prompt tokens evaluated.",
            m["prompt_tokens"])
    _metric(out, "prompt_seconds_total", "counter", "Seconds spent evaluating prompts.",
            m["prompt_seconds"])
    _metric(out, "tokens_predicted_total", "counter",
            "Generated tokens evaluated (decode steps of all slots).", m["decode_tokens"])
    _metric(out, "tokens_predicted_seconds_total", "counter",
            "Seconds spent in decode steps.", m["decode_seconds"])
    _metric(out, "n_decode_total", "counter", "Decode steps (batched forwards).",
            m["decode_batches"])
    avg = m["decode_tokens"] / m["decode_batches"] if m["decode_batches"] else 0.0
    _metric(out, "n_busy_slots_per_decode", "gauge", "Average sequences per decode step.",
            float(avg))
    _metric(out, "decode_batch_size_max", "gauge", "Largest decode step so far (sequences).",
            m["max_batch"])
    _histogram(out, m["batch_hist"], m["decode_tokens"], m["decode_batches"])
    _metric(out, "prefix_cache_hit_tokens_total", "counter",
            "Prompt tokens not evaluated: kept in their slot or copied from another's.",
            m["prefix_hit_tokens"])
    _metric(out, "prefix_cache_copied_tokens_total", "counter",
            "Prompt tokens copied from another slot's cache.", m["prefix_copied_tokens"])
    _metric(out, "requests_total", "counter", "Requests that took a slot.", m["requests_total"])
    _metric(out, "requests_cancelled_evaluations_total", "counter",
            "Queued evaluations dropped because their request was cancelled.", m["dropped"])
    return "\n".join(out) + "\n"


def _histogram(out: List[str], counts: List[int], total: int, n: int) -> None:
    from .batching import BATCH_SIZE_BUCKETS
    name = f"{PREFIX}decode_batch_size"
    out.append(f"# HELP {name} Sequences per decode step.")
    out.append(f"# TYPE {name} histogram")
    cum = 0
    for bound, c in zip(BATCH_SIZE_BUCKETS, counts):
        cum += c
        out.append(f'{name}_bucket{{le="{bound}"}} {cum}')
    out.append(f'{name}_bucket{{le="+Inf"}} {n}')
    out.append(f"{name}_sum {total}")
    out.append(f"{name}_count {n}")
