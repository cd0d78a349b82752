"""RoPE scaling in the rope op (issue 15): LongRoPE's magnitude (attn_factor, with per-pair
frequency factors) and YaRN (ext_factor, beta_fast/beta_slow, n_ctx_orig), against two
references computed in float64:

* `yarn_ref` follows the YaRN paper as transformers writes it (`_compute_yarn_parameters`:
  per-pair inverse frequencies blended between interpolation and extrapolation over the
  correction range, cos and sin times the attention factor): an independent oracle, budget
  2e-4 absolute on O(1) inputs at positions up to 300 (the op's angles are float32 products,
  as llama.cpp's: ~2e-5 rad apart from float64's there); its inverse frequencies and
  attention factor were checked once against transformers 5.25's own
  ROPE_INIT_FUNCTIONS["yarn"] (1.4e-7 relative, its float32 rounding; factors equal);
* `yarn_float32_ref` takes the angles in llama.cpp's float32 steps (ggml_sparse.h,
  gs_rope_params; the blend an exact fused multiply-add) and rotates in float64: budget
  2e-5, as test_ops_attention's rope tests.

The opt-in `llama_cpp` test runs llama.cpp's own ggml_rope_ext (llama-cpp-python's ggml
libraries, through ctypes) and wants the very bytes.

Shapes in ggml order (ne), numpy arrays reversed."""
import ctypes
import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pyinfer._lib import GSValueError
from pyinfer.tensor import Context, RopeMode, RopeYarn, yarn_attn_factor
from op_util import i32, run

F32 = np.float32


def _rotate(x, cos, sin, n_dims, mode):
    """x (T, H, D); cos/sin (T, n_dims/2) float64: the rotated float64 copy."""
    out = x.astype(np.float64).copy()
    half = n_dims // 2
    if mode == RopeMode.NORMAL:
        i0, i1 = np.arange(0, n_dims, 2), np.arange(1, n_dims, 2)
    else:
        i0, i1 = np.arange(half), np.arange(half, n_dims)
    c, s = cos[:, None, :], sin[:, None, :]
    x0, x1 = x[..., i0].astype(np.float64), x[..., i1].astype(np.float64)
    out[..., i0] = x0 * c - x1 * s
    out[..., i1] = x0 * s + x1 * c
    return out


def _corr_range(n_dims, n_ctx_orig, base, beta_fast, beta_slow):
    """transformers' find_correction_range (truncated): pairs below `low` extrapolate, above
    `high` interpolate."""
    def dim(rot):
        return n_dims * math.log(n_ctx_orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    return max(math.floor(dim(beta_fast)), 0), min(math.ceil(dim(beta_slow)), n_dims - 1)


def yarn_ref(x, pos, n_dims, mode, base, freq_scale, yarn=None, ff=None, attn_factor=1.0):
    """YaRN in float64 (transformers' formulas); without `yarn`, linear scaling with
    LongRoPE's factors and magnitude."""
    half = n_dims // 2
    extrap = base ** (-2.0 * np.arange(half) / n_dims) / (np.ones(half) if ff is None else ff.astype(np.float64))
    interp = extrap * freq_scale
    mscale = attn_factor
    if yarn is None:
        inv = interp
    else:
        low, high = _corr_range(n_dims, yarn.n_ctx_orig, base, yarn.beta_fast, yarn.beta_slow)
        ramp = np.clip((np.arange(half) - low) / max(high - low, 0.001), 0, 1)
        e = (1 - ramp) * yarn.ext_factor                  # transformers' inv_freq_extrapolation_factor
        inv = interp * (1 - e) + extrap * e
        mscale *= 0.1 * math.log(1 / freq_scale) + 1
    angle = pos.astype(np.float64)[:, None] * inv[None, :]
    return _rotate(x, np.cos(angle) * mscale, np.sin(angle) * mscale, n_dims, mode)


def _fma32(a, b, c):
    """float32 fused multiply-add, exactly rounded (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    y = F32(float(exact))
    cands = [np.nextafter(y, F32(-np.inf)), y, np.nextafter(y, F32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(F32(v).view(np.uint32)) & 1))


def yarn_float32_ref(x, pos, n_dims, mode, base, freq_scale, yarn, attn_factor=1.0):
    """The angles in llama.cpp's float32 steps, rotated in float64."""
    half = n_dims // 2
    theta_scale = F32(np.float64(base) ** (-2.0 / n_dims))
    low, high = (F32(v) for v in _corr_range(n_dims, yarn.n_ctx_orig, base, yarn.beta_fast, yarn.beta_slow))
    span = max(high - low, F32(0.001))
    mscale = F32(attn_factor) * F32(0.1 * math.log(1 / float(F32(freq_scale))) + 1)
    angles = np.zeros((len(pos), half))
    for t, p in enumerate(pos):
        theta = F32(p)
        for i in range(half):
            ramp = F32(1) - min(F32(1), max(F32(0), (F32(i) - low) / span))
            mix = ramp * F32(yarn.ext_factor)
            angles[t, i] = _fma32(F32(freq_scale) * theta, F32(1) - mix, theta * mix)
            theta = theta * theta_scale
    return _rotate(x, np.cos(angles) * float(mscale), np.sin(angles) * float(mscale), n_dims, mode)


def _rope(pools, x, pos, n_dims, mode, base, scale, **kw):
    ff = kw.pop("ff", None)
    return run(pools, lambda ctx: ctx.rope(ctx.from_numpy(x), i32(ctx, pos), n_dims, mode, base, scale,
                                           freq_factors=ctx.from_numpy(ff) if ff is not None else None, **kw))


POS = np.array([0, 1, 5, 17, 64, 300], dtype=np.int32)


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
@pytest.mark.parametrize("D,n_dims,base,n_ctx_orig,factor", [(64, 64, 10000.0, 64, 4.0), (64, 32, 1e6, 256, 8.0),
                                                             (128, 128, 10000.0, 2048, 2.0)])
def test_yarn(pools, rng, mode, D, n_dims, base, n_ctx_orig, factor):
    """YaRN with llama.cpp's context attn_factor: the magnitude is transformers' attention
    factor 0.1 ln(factor) + 1; the correction range is neither empty nor everything."""
    x = rng.standard_normal((len(POS), 3, D)).astype(np.float32)
    yarn = RopeYarn(n_ctx_orig)
    scale = float(F32(1) / F32(factor))
    attn = yarn_attn_factor(scale)
    low, high = _corr_range(n_dims, n_ctx_orig, base, 32, 1)
    assert 0 <= low < high < n_dims // 2, "the range lies inside the pairs: both sides are exercised"
    out = _rope(pools, x, POS, n_dims, mode, base, scale, yarn=yarn, attn_factor=attn)
    np.testing.assert_allclose(out, yarn_ref(x, POS, n_dims, mode, base, scale, yarn), rtol=0, atol=2e-4)
    np.testing.assert_allclose(out, yarn_float32_ref(x, POS, n_dims, mode, base, scale, yarn, attn),
                               rtol=0, atol=2e-5)
    np.testing.assert_array_equal(out[..., n_dims:], x[..., n_dims:])
    # YaRN is neither linear interpolation nor plain RoPE
    for other in (yarn_ref(x, POS, n_dims, mode, base, scale), yarn_ref(x, POS, n_dims, mode, base, 1.0)):
        assert np.abs(out - other).max() > 0.05


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
def test_yarn_with_freq_factors(pools, rng, mode):
    """Per-pair factors divide the extrapolated angle before the blend (llama.cpp's theta/ff),
    on a partial rotation (48 of 80 elements)."""
    x = rng.standard_normal((len(POS), 3, 80)).astype(np.float32)
    ff = np.linspace(1.0, 5.0, 24).astype(np.float32)
    yarn, scale = RopeYarn(256), 0.125
    attn = yarn_attn_factor(scale, 1.1)
    out = _rope(pools, x, POS, 48, mode, 10000.0, scale, ff=ff, yarn=yarn, attn_factor=attn)
    ref = yarn_ref(x, POS, 48, mode, 10000.0, scale, yarn, ff=ff, attn_factor=1.1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-4)
    np.testing.assert_array_equal(out[..., 48:], x[..., 48:])
    assert np.abs(out - yarn_ref(x, POS, 48, mode, 10000.0, scale, yarn, attn_factor=1.1)).max() > 0.05


def test_yarn_betas_and_ext_factor(pools, rng):
    """Other correction ranges and a partial blend (ext_factor 0.5)."""
    x = rng.standard_normal((len(POS), 2, 64)).astype(np.float32)
    yarn = RopeYarn(512, ext_factor=0.5, beta_fast=16.0, beta_slow=2.0)
    out = _rope(pools, x, POS, 64, RopeMode.NEOX, 10000.0, 0.25, yarn=yarn, attn_factor=0.9)
    np.testing.assert_allclose(out, yarn_ref(x, POS, 64, RopeMode.NEOX, 10000.0, 0.25, yarn, attn_factor=0.9),
                               rtol=0, atol=2e-4)


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
def test_longrope_factors_and_magnitude(pools, rng, mode):
    """LongRoPE (Phi-3): per-pair factors and cos/sin times rope.scaling.attn_factor, no blend."""
    x = rng.standard_normal((len(POS), 4, 48)).astype(np.float32)
    ff = np.linspace(1.0, 12.0, 16).astype(np.float32)
    attn = math.sqrt(1 + math.log(32) / math.log(4096))
    out = _rope(pools, x, POS, 32, mode, 10000.0, 1.0, ff=ff, attn_factor=attn)
    np.testing.assert_allclose(out, yarn_ref(x, POS, 32, mode, 10000.0, 1.0, ff=ff, attn_factor=attn),
                               rtol=0, atol=2e-4)
    plain = _rope(pools, x, POS, 32, mode, 10000.0, 1.0, ff=ff)
    np.testing.assert_allclose(out[..., :32], plain[..., :32] * F32(attn), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[..., 32:], x[..., 32:])


def test_default_params_are_plain_rope(pools, rng):
    """attn_factor 1 and no YaRN give the very bytes of the unscaled op."""
    x = rng.standard_normal((len(POS), 2, 32)).astype(np.float32)
    a = _rope(pools, x, POS, 32, RopeMode.NEOX, 10000.0, 0.5)
    b = _rope(pools, x, POS, 32, RopeMode.NEOX, 10000.0, 0.5, attn_factor=1.0)
    assert a.tobytes() == b.tobytes()


def test_yarn_params_are_inert_without_ext_factor(pools, rng):
    """ext_factor 0 is plain (linearly scaled) RoPE whatever the betas and n_ctx_orig, as in
    llama.cpp, where every rope carries them."""
    x = rng.standard_normal((len(POS), 2, 32)).astype(np.float32)
    a = _rope(pools, x, POS, 32, RopeMode.NORMAL, 10000.0, 0.5)
    b = _rope(pools, x, POS, 32, RopeMode.NORMAL, 10000.0, 0.5, yarn=RopeYarn(16, ext_factor=0.0, beta_fast=4.0))
    c = _rope(pools, x, POS, 32, RopeMode.NORMAL, 10000.0, 0.5, yarn=RopeYarn(0, ext_factor=0.0))
    assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.parametrize("factor", [0.5, 1.0, 4.0, 40.0])
def test_yarn_attn_factor_is_llama_cpps(factor):
    """With the rope's own magnitude 1 + 0.1 ln(factor), the net factor is transformers'
    attention factor (0.1 ln(factor) + 1 above 1, else 1); the file's factor multiplies."""
    scale = float(F32(1) / F32(factor))
    net = yarn_attn_factor(scale) * (1 + 0.1 * math.log(factor))
    assert net == pytest.approx(0.1 * math.log(factor) + 1 if factor > 1 else 1.0, rel=1e-6)
    assert yarn_attn_factor(scale, 0.5) == pytest.approx(0.5 * yarn_attn_factor(scale), rel=1e-6)


@pytest.mark.parametrize("bad,match", [(dict(ext_factor=1.0, n_ctx_orig=0), "n_ctx_orig"),
                                       (dict(ext_factor=0.5, n_ctx_orig=-8), "n_ctx_orig"),
                                       (dict(ext_factor=1.0, n_ctx_orig=64, beta_fast=0.0), "beta_fast"),
                                       (dict(ext_factor=1.0, n_ctx_orig=64, beta_slow=-1.0), "beta_slow"),
                                       (dict(ext_factor=1.0, n_ctx_orig=64, beta_fast=float("inf")), "beta_fast"),
                                       (dict(ext_factor=-0.5, n_ctx_orig=64), "ext_factor"),
                                       (dict(ext_factor=float("nan"), n_ctx_orig=64), "finite")])
def test_yarn_params_are_checked(rng, bad, match):
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(rng.standard_normal((2, 2, 8)).astype(np.float32))
        with pytest.raises(GSValueError, match=match):
            ctx.rope(x, i32(ctx, [0, 1]), 8, yarn=RopeYarn(**bad))


@pytest.mark.parametrize("attn", [float("inf"), float("nan"), 0.0, -1.0])
def test_attn_factor_is_checked(rng, attn):
    with Context(1 << 20) as ctx:
        x = ctx.from_numpy(rng.standard_normal((2, 2, 8)).astype(np.float32))
        with pytest.raises(GSValueError, match="attn_factor .* must be finite and > 0"):
            ctx.rope(x, i32(ctx, [0, 1]), 8, attn_factor=attn)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_yarn_attn_factor_needs_a_scale(scale):
    with pytest.raises(ValueError, match="freq_scale"):
        yarn_attn_factor(scale)


# ---- llama.cpp comparison (opt-in) ------------------------------------------------------
class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _llama_cpp_rope():
    """llama.cpp's ggml_rope_ext on the CPU: f(x (T, H, D) float32, pos, ff, n_dims, mode,
    n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)."""
    spec = importlib.util.find_spec("llama_cpp")
    folders = (spec.submodule_search_locations or []) if spec else []
    libdir = next((Path(f) / "lib" for f in folders if (Path(f) / "lib" / "libggml-cpu.so").exists()), None)
    if libdir is None:
        pytest.skip("llama-cpp-python (with its ggml libraries) is not installed")
    base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init()
    P, I64 = ctypes.c_void_p, ctypes.c_int64
    base.ggml_init.restype, base.ggml_init.argtypes = P, [_InitParams]
    base.ggml_new_tensor_1d.restype, base.ggml_new_tensor_1d.argtypes = P, [P, ctypes.c_int, I64]
    base.ggml_new_tensor_3d.restype, base.ggml_new_tensor_3d.argtypes = P, [P, ctypes.c_int, I64, I64, I64]
    base.ggml_rope_ext.restype = P
    base.ggml_rope_ext.argtypes = [P, P, P, P] + [ctypes.c_int] * 3 + [ctypes.c_float] * 6
    base.ggml_get_data.restype, base.ggml_get_data.argtypes = P, [P]
    base.ggml_new_graph.restype, base.ggml_new_graph.argtypes = P, [P]
    base.ggml_build_forward_expand.argtypes = [P, P]
    base.ggml_free.argtypes = [P]
    cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]

    def leaf(ctx, t, arr):
        arr = np.ascontiguousarray(arr)
        node = base.ggml_new_tensor_1d(ctx, t, arr.size)
        ctypes.memmove(base.ggml_get_data(node), arr.ctypes.data, arr.nbytes)
        return node

    def rope(x, pos, ff, *params):
        T, H, D = x.shape
        ctx = base.ggml_init(_InitParams(16 << 20, None, False))
        try:
            a = base.ggml_new_tensor_3d(ctx, 0, D, H, T)             # GGML_TYPE_F32
            ctypes.memmove(base.ggml_get_data(a), np.ascontiguousarray(x).ctypes.data, x.nbytes)
            p = leaf(ctx, 26, np.asarray(pos, np.int32))             # GGML_TYPE_I32
            c = leaf(ctx, 0, ff) if ff is not None else None
            out = base.ggml_rope_ext(ctx, a, p, c, *params)
            graph = base.ggml_new_graph(ctx)
            base.ggml_build_forward_expand(graph, out)
            cpu.ggml_graph_compute_with_ctx(ctx, graph, 2)
            data = (ctypes.c_float * x.size).from_address(base.ggml_get_data(out))
            return np.ctypeslib.as_array(data).copy().reshape(x.shape)
        finally:
            base.ggml_free(ctx)
    return rope


@pytest.mark.llama_cpp
@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX], ids=lambda m: m.name)
@pytest.mark.parametrize("D,n_dims,base", [(64, 64, 10000.0), (96, 64, 1e6), (128, 128, 5e5)])
def test_rope_scaling_is_llama_cpps(pools, rng, mode, D, n_dims, base):
    """The same parameters give llama.cpp's bytes: YaRN (full and partial blend, other betas,
    with and without frequency factors), LongRoPE-style factors and magnitude, plain linear
    scaling; positions up to 131071. (Factor 13: the rope's magnitude 1 + 0.1 ln(13) is one
    ulp apart with and without llama.cpp's fused multiply-add.)"""
    llama_rope = _llama_cpp_rope()
    pos = np.array([0, 1, 5, 300, 4095, 30000, 131071], np.int32)
    ff = np.linspace(1.0, 9.0, n_dims // 2).astype(np.float32)
    cases = [(32768, 0.25, 1.0, 32.0, 1.0, None), (2048, 0.125, 0.5, 16.0, 2.0, ff), (4096, 1 / 40, 1.0, 32.0, 1.0, None),
             (4096, 1 / 13, 1.0, 32.0, 1.0, None),
             (64, 2.0, 1.0, 32.0, 1.0, None), (4096, 1.0, 0.0, 32.0, 1.0, ff), (4096, 0.5, 0.0, 32.0, 1.0, None)]
    for n_ctx_orig, scale, ext, beta_fast, beta_slow, f in cases:
        scale = float(F32(scale))
        attn = yarn_attn_factor(scale) if ext else (1.19 if f is not None else 1.0)
        x = rng.standard_normal((len(pos), 3, D)).astype(np.float32)
        theirs = llama_rope(x, pos, f, n_dims, int(mode), n_ctx_orig, base, scale, ext, attn, beta_fast, beta_slow)
        yarn = RopeYarn(n_ctx_orig, ext, beta_fast, beta_slow) if ext else None
        ours = _rope(pools, x, pos, n_dims, mode, base, scale, ff=f, yarn=yarn, attn_factor=attn)
        assert ours.tobytes() == theirs.tobytes(), (n_ctx_orig, scale, ext, f is not None)


@pytest.mark.gpu
@pytest.mark.parametrize("with_ff", [False, True], ids=["no_ff", "ff"])
@pytest.mark.parametrize("with_yarn", [False, True], ids=["linear", "yarn"])
def test_cuda_rope_scaling(pools, rng, with_yarn, with_ff):
    """The CUDA rope takes the same factors, magnitude and blend (1e-5 of the CPU, as
    test_cuda's rope)."""
    from pyinfer.offload import cuda_status
    from pyinfer.offload.cuda import compute_node
    from pyinfer.tensor import Graph
    ok, reason = cuda_status()
    if not ok:
        pytest.fail(f"--run-gpu was given but CUDA cannot run here: {reason}")
    x = rng.standard_normal((len(POS), 3, 64)).astype(np.float32)
    ff = np.linspace(1.0, 6.0, 24).astype(np.float32)
    with Context(16 << 20) as ctx:
        out = ctx.rope(ctx.from_numpy(x), i32(ctx, POS), 48, RopeMode.NEOX, 10000.0, 0.25,
                       freq_factors=ctx.from_numpy(ff) if with_ff else None, attn_factor=1.1,
                       yarn=RopeYarn(128) if with_yarn else None)
        got = compute_node(out, 0)
        Graph(ctx).build(out).plan(2).compute(pools[2])
        np.testing.assert_allclose(got, out.numpy(), rtol=1e-5, atol=1e-5)
