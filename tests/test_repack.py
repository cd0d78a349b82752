"""Repacked Q4_0 weights (gs_tensor_repack: groups of 8 interleaved rows)
against independent oracles.

* Layout: the repacked bytes equal a numpy re-arrangement of the row-major
  blocks (ggml_sparse/src/cpu/repack.h).
* mul_mat over repacked weights equals, bit for bit, a numpy model of the
  order llama.cpp's repacked Q4_0 kernels use: per output, from acc = 0, one
  fused multiply-add per 32-block in block order,
  acc = fma((float) isum, f32(d_w * d_x), acc), isum the exact integer dot
  of (q - 8) with the Q8_0 activations; the fused multiply-add is rounded
  exactly here (product exact in float64, TwoSum, float32 midpoint fix).
  At every SIMD level the CPU has (so SIMD equals scalar), with 1 and 2
  threads, for single activation rows, batches and batches of planes.
* It equals the row-major product within the Q4_0 budget (another order).
* Tensors that do not qualify (M % 8 != 0, other types, 3-D) are refused
  and left alone; ops other than mul_mat's weights, and views, refuse a
  repacked tensor when the graph is built.
"""
import numpy as np
import pytest

from pyinfer._lib import GGMLSparseError as GSError
from pyinfer.tensor import (Context, GGMLType, Graph, ThreadPool, cpu_info, quantize_activations, set_simd_level)

T = GGMLType
Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])


def levels():
    info = cpu_info()
    out = ["scalar"]
    if info["avx2"] and info["fma"] and info["f16c"]:
        out.append("avx2")
    if info["avx512f"] and info["avx512bw"] and info["avx512vl"] and info["avx512vnni"]:
        out.append("avx512")
    return out


def random_q4_0(rng, M, K):
    """Random Q4_0 rows: random nibbles (every bit pattern) with sane scales."""
    blocks = np.zeros((M, K // 32), dtype=Q4_0)
    blocks["d"] = rng.uniform(1e-3, 2e-2, size=(M, K // 32)).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, size=(M, K // 32, 16), dtype=np.uint8)
    return blocks.view(np.uint8).reshape(M, -1)


def repack_layout(rows):
    """Row-major Q4_0 bytes (M, row bytes) -> the repacked layout (repack.h)."""
    M = rows.shape[0]
    b = rows.view(Q4_0).reshape(M // 8, 8, -1)          # group, row, block
    d = b["d"].transpose(0, 2, 1)                       # group, block, row
    qs = b["qs"].reshape(M // 8, 8, -1, 2, 8).transpose(0, 2, 3, 1, 4)   # group, block, chunk, row, byte
    nb = b.shape[2]
    out = np.concatenate([np.ascontiguousarray(d).view(np.uint8).reshape(M // 8, nb, 16),
                          qs.reshape(M // 8, nb, 128)], axis=2)
    return out.reshape(-1)


def fma32(a, b, c):
    """float32 fma(a, b, c), correctly rounded, elementwise (a * b exact in float64)."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)                       # s + e == p + c exactly
    r = s.astype(np.float32)
    d = s - r.astype(np.float64)
    nxt = np.nextafter(r, np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)))
    mid = (d != 0) & (2 * d == nxt.astype(np.float64) - r.astype(np.float64))
    return np.where(mid & (e * d > 0), nxt, r)


def reference(rows, x):
    """out[n, m] in llama.cpp's repacked order; x (N, K) float32."""
    M, K = rows.shape[0], x.shape[1]
    w = rows.view(Q4_0).reshape(M, K // 32)
    wq = np.concatenate([w["qs"] & 15, w["qs"] >> 4], axis=2).astype(np.int64) - 8   # M, nb, 32
    y = quantize_activations(x, T.Q4_0).view(Q8_0).reshape(x.shape[0], K // 32)
    isum = np.einsum("mbj,nbj->nmb", wq, y["qs"].astype(np.int64))
    dd = w["d"].astype(np.float32)[None, :, :] * y["d"].astype(np.float32)[:, None, :]
    acc = np.zeros(isum.shape[:2], np.float32)
    for b in range(K // 32):
        acc = fma32(isum[:, :, b].astype(np.float32), dd[:, :, b], acc)
    return acc


def mul_mat(rows, x, repack, n_threads, planes=1):
    """mul_mat of Q4_0 rows (M, row bytes) with x (planes * N, K) through a graph."""
    M, K = rows.shape[0], x.shape[1]
    N = x.shape[0] // planes
    with Context(mem_size=1 << 20) as ctx:
        a = ctx.new_tensor(T.Q4_0, (K, M), "w")
        a.numpy()[0, 0] = rows
        if repack:
            a.repack()
        b = ctx.new_tensor(T.F32, (K, N, planes) if planes > 1 else (K, N), "x")
        b.numpy()[...] = x.reshape(b.numpy().shape)
        out = ctx.mul_mat(a, b)
        g = Graph(ctx, 8).build(out).plan(n_threads)
        with ThreadPool(n_threads) as pool:
            g.compute(pool)
        return out.numpy().reshape(-1, M).copy()


@pytest.fixture
def simd_level():
    yield set_simd_level
    set_simd_level("auto")


def test_layout():
    rng = np.random.default_rng(1)
    rows = random_q4_0(rng, 16, 96)
    with Context(mem_size=1 << 16) as ctx:
        a = ctx.new_tensor(T.Q4_0, (96, 16), "w")
        a.numpy()[0, 0] = rows
        assert a.can_repack and not a.is_repacked
        buf = a.repack()
        assert a.is_repacked and not a.can_repack
        np.testing.assert_array_equal(buf, repack_layout(rows))
        np.testing.assert_array_equal(a.raw(), buf)


SHAPES = [(32, 8, 1), (256, 24, 1), (576, 64, 1), (1024, 40, 1),
          (64, 16, 2), (576, 64, 7), (256, 24, 9), (96, 8, 33)]


@pytest.mark.parametrize("K,M,N", SHAPES)
def test_matches_reference_order(simd_level, K, M, N):
    rng = np.random.default_rng(K * 1000 + M + N)
    rows = random_q4_0(rng, M, K)
    x = rng.standard_normal((N, K)).astype(np.float32)
    x[0, :32] = 0.0                                          # a block with d = 0
    ref = reference(rows, x)
    for level in levels():
        simd_level(level)
        for n_threads in (1, 2):
            got = mul_mat(rows, x, True, n_threads)
            np.testing.assert_array_equal(got, ref, err_msg=f"{level} {n_threads} threads")


def test_planes(simd_level):
    """b {K, N, 2}: each plane multiplies the same weights."""
    rng = np.random.default_rng(7)
    rows = random_q4_0(rng, 32, 128)
    x = rng.standard_normal((2 * 3, 128)).astype(np.float32)
    ref = reference(rows, x)
    for level in levels():
        simd_level(level)
        np.testing.assert_array_equal(mul_mat(rows, x, True, 2, planes=2), ref)


@pytest.mark.parametrize("K,M,N", [(576, 64, 1), (1024, 40, 5)])
def test_close_to_row_major(K, M, N):
    """Another summation order than the row-major kernels: equal within the
    Q4_0 budget, 2e-6 of sum |w x| (the two use the same quantized activations)."""
    rng = np.random.default_rng(3)
    rows = random_q4_0(rng, M, K)
    x = rng.standard_normal((N, K)).astype(np.float32)
    rep, row = mul_mat(rows, x, True, 2), mul_mat(rows, x, False, 2)
    w = rows.view(Q4_0).reshape(M, K // 32)
    wf = ((np.concatenate([w["qs"] & 15, w["qs"] >> 4], axis=2).astype(np.float64) - 8)
          * w["d"].astype(np.float64)[:, :, None]).reshape(M, K)
    scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T
    assert np.all(np.abs(rep.astype(np.float64) - row) <= 2e-6 * scale)
    assert not np.array_equal(rep, row)          # the orders do differ


def test_refuses_unqualified():
    with Context(mem_size=1 << 16) as ctx:
        for t, ne in [(T.Q4_0, (64, 12)), (T.Q4_1, (64, 16)), (T.Q8_0, (64, 16)), (T.Q4_0, (64, 8, 2))]:
            a = ctx.new_tensor(t, ne, "w")
            assert not a.can_repack
            with pytest.raises(GSError, match="cannot be repacked"):
                a.repack()
            assert not a.is_repacked


def test_other_readers_refused():
    """get_rows, a view, or mul_mat of a view of repacked weights: the graph
    build fails with a clear message; mul_mat's weights still work."""
    rng = np.random.default_rng(5)
    with Context(mem_size=1 << 20) as ctx:
        a = ctx.new_tensor(T.Q4_0, (64, 16), "w")
        a.numpy()[0, 0] = random_q4_0(rng, 16, 64)
        a.repack()
        idx = ctx.from_numpy(np.array([1, 2], np.int32))
        x = ctx.from_numpy(np.ones((1, 64), np.float32))
        for bad in (lambda: ctx.get_rows(a, idx),
                    lambda: ctx.mul_mat(ctx.view(a, (64, 8), (18, 36), 0), x)):
            with pytest.raises(GSError, match="repacked"):
                Graph(ctx, 8).build(bad())
        Graph(ctx, 8).build(ctx.mul_mat(a, x))


# ---- the engine ------------------------------------------------------------
def _repacked_names(eng):
    w = eng.weights
    tensors = [w.tok_embd, w.output] + [t for layer in w.layers for t in
                                        (layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate,
                                         layer.w_up, layer.w_down, layer.w_down_t) if t is not None]
    return {t.name for t in tensors if t.is_repacked}


def test_engine_repacks_mul_mat_weights(tmp_path):
    """Q4_0 tiny model: with repacking (the default) every matrix used only by
    mul_mat is repacked, token_embd is not; logits stay within the Q4_0
    budget of the numpy reference and close to the row-major run."""
    import gguf

    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from reference.numpy_llama import NumpyLlama
    from reference.tiny_model import write_tiny_llama

    path = write_tiny_llama(tmp_path / "m.gguf", weight_type=gguf.GGMLQuantizationType.Q4_0,
                            n_embd=64, n_ff=128)
    tokens = list(range(3, 15))
    logits = {}
    for repack in (True, False):
        eng = Engine(str(path), ContextSettings(n_ctx=64, n_batch=16, n_threads=2, repack_weights=repack))
        names = _repacked_names(eng)
        if repack:
            per_layer = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
            assert names == {"output.weight"} | {f"blk.{i}.{n}.weight" for i in range(2) for n in per_layer}
        else:
            assert names == set()
        got = np.vstack([eng.decode(tokens[:10], logits_all=True)] + [eng.decode([t])[None] for t in tokens[10:]])
        logits[repack] = got
        ref = NumpyLlama(str(path), eng.cfg).forward(tokens)
        assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-2
        eng.close()
    assert np.abs(logits[True] - logits[False]).max() / np.abs(logits[False]).max() < 1e-3


def test_engine_powerinfer_ffn_not_repacked(tmp_path):
    """PowerInfer layers: the FFN matrices feed sparse ops and stay row-major;
    attention is repacked and the sparse graph builds and runs."""
    import gguf

    from pyinfer.config import ContextSettings
    from pyinfer.engine import Engine
    from reference.tiny_model import write_tiny_llama

    path = write_tiny_llama(tmp_path / "p.gguf", weight_type=gguf.GGMLQuantizationType.Q4_0,
                            n_embd=64, n_ff=128, powerinfer=True)
    eng = Engine(str(path), ContextSettings(n_ctx=64, n_batch=16, n_threads=2))
    names = _repacked_names(eng)
    assert "blk.0.attn_q.weight" in names and not any("ffn" in n for n in names)
    assert np.all(np.isfinite(eng.decode(list(range(3, 9)))))
    eng.close()


def test_llama_keyword(tmp_path):
    """Llama(use_extra_bufts=False) (llama.cpp's name) keeps weights row-major, without a warning."""
    import warnings

    import gguf

    from pyinfer import Llama
    from tiny_chat_model import write_tiny_chat_model

    path = write_tiny_chat_model(tmp_path / "m.gguf", weight_type=gguf.GGMLQuantizationType.Q4_0,
                                 n_embd=64, n_ff=128)
    for flag in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            llm = Llama(str(path), n_ctx=64, verbose=False, use_extra_bufts=flag)
        assert llm._engine.weights.layers[0].wq.is_repacked is flag
        llm.close()


def _mapped_rss_kb(path):
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:   # a mapping's header line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_release_pages(tmp_path):
    """The loader drops the resident file pages under a repacked tensor's
    mapped data (and only those); the map still reads the file afterwards."""
    pytest.importorskip("mmap").MADV_DONTNEED
    from pyinfer.model.llama import _release_pages

    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8)
    data.tofile(path)
    m = np.memmap(path, mode="r")                   # as gguf.GGUFReader maps a file
    view = m[(2 << 20) + 100:(6 << 20) + 100]       # 4 MiB, not page-aligned
    assert int(m.sum(dtype=np.uint64)) == int(data.sum(dtype=np.uint64))   # touch every page
    before = _mapped_rss_kb(path)
    _release_pages(view)
    after = _mapped_rss_kb(path)
    assert before - after >= 4096 - 8
    m[:2 << 20].sum(), m[(6 << 20) + 100:].sum()     # the pages outside stayed resident
    assert _mapped_rss_kb(path) - after <= 8
    np.testing.assert_array_equal(view, data[(2 << 20) + 100:(6 << 20) + 100])
