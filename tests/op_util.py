"""Helpers the op tests share: run a graph on 1 and 2 threads (the results must be the same
bytes), int32 inputs, and numpy's view of gs_permute."""
import numpy as np

from pyinfer.tensor import Context, Graph


def run(pools, build, mem=64 << 20, meaning=lambda out: out):
    """Build a graph with `build(ctx)` (one output tensor or a list) in a fresh context,
    compute it on 1 and 2 threads (`pools` fixture), check that both give the same bytes
    (of `meaning(output)`, an iterable of arrays, default the whole output) and return the
    output(s) as numpy copies."""
    results = []
    for n_threads in (1, 2):
        with Context(mem) as ctx:
            outs = build(ctx)
            single = not isinstance(outs, (list, tuple))
            outs = [outs] if single else list(outs)
            Graph(ctx).build(*outs).plan(n_threads).compute(pools[n_threads])
            results.append([o.numpy().copy() for o in outs])
    for one, two in zip(*results):
        as_bytes = lambda out: b"".join(np.ascontiguousarray(part).tobytes() for part in meaning(out))
        assert as_bytes(one) == as_bytes(two), "1 and 2 threads disagree"
    return results[0][0] if single else results[0]


def i32(ctx, values):
    return ctx.from_numpy(np.asarray(values, dtype=np.int32))


def permute_np(x, axes):
    """numpy equivalent of gs_permute(a, *axes): ggml dim i goes to dim
    axes[i]; numpy axis k of an n-d array is ggml dim n-1-k."""
    n = x.ndim
    perm = [0] * n
    for i, ax in enumerate(axes):
        perm[n - 1 - ax] = n - 1 - i
    return np.transpose(x, perm)
