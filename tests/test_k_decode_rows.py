"""The Q4_K / Q6_K single-token kernels that take several weight rows per step (plain and
repacked Q4_K, Q6_K): every SIMD level gives the scalar level's bits, for row counts that are
not multiples of the step (4), for one to a few tokens, and for rows longer than the kernels'
prepared-activation buffer (K > 32768 takes the per-group path)."""
import numpy as np
import pytest

from pyinfer.tensor import Context, GGMLType, Graph, ThreadPool, cpu_info, quantize, set_simd_level

_INFO = cpu_info()
LEVELS = ["scalar"] + (["avx2"] if _INFO["avx2"] and _INFO["fma"] else []) + \
    (["avx512"] if _INFO["avx512f"] and _INFO["avx512bw"] else [])


@pytest.fixture(scope="module")
def pool():
    p = ThreadPool(2)
    yield p
    p.close()
    set_simd_level("auto")


def _product(pool, w, t, k, m, b, repack, level):
    set_simd_level(level)
    try:
        with Context(256 << 20) as ctx:
            wt = ctx.new_tensor(t, (k, m))
            wt.set_data(w)
            if repack:
                wt.repack()
            y = ctx.mul_mat(wt, ctx.from_numpy(b))
            Graph(ctx).build(y).plan(2).compute(pool)
            return y.numpy().copy()
    finally:
        set_simd_level("auto")


SHAPES = [(256, 5), (512, 6), (512, 13), (1024, 7), (33024, 8), (33024, 21)]
CASES = [(name, repack, k, m) for name, repack in (("Q4_K", False), ("Q4_K", True), ("Q6_K", False))
         for k, m in SHAPES + ([(512, 16), (1024, 24)] if repack else [])
         if not (repack and m % 8)]           # repacking needs rows % 8 == 0


@pytest.mark.parametrize("name,repack,k,m", CASES)
def test_decode_rows_all_levels_equal(pool, name, repack, k, m):
    rng = np.random.default_rng(k + m)
    t = GGMLType[name]
    w = quantize(rng.standard_normal((m, k)).astype(np.float32), t)
    for n in (1, 2, 5):
        b = rng.standard_normal((n, k)).astype(np.float32)
        ref = _product(pool, w, t, k, m, b, repack, "scalar")
        for level in LEVELS[1:]:
            got = _product(pool, w, t, k, m, b, repack, level)
            assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (level, n)
