/*
 * dispatch.c - run-time CPU feature detection and per-type kernel selection.
 *
 * Kernels exist at three levels (scalar, AVX2, AVX-512); each SIMD source is
 * compiled with its own target flags and only called when the CPU has them.
 * A NULL entry in a level's table falls back to the level below.
 */
#include "../gs_internal.h"

static gs_cpu_info cpu_info;
static gs_impl best_level = GS_IMPL_SCALAR;
static gs_impl active_level = GS_IMPL_SCALAR;
static gs_cpu_type_funcs resolved[GS_TYPE_COUNT];

static const gs_cpu_type_funcs * level_table(gs_impl level) {
    switch (level) {
        case GS_IMPL_AVX512: return gs_cpu_funcs_avx512;
        case GS_IMPL_AVX2:   return gs_cpu_funcs_avx2;
        default:             return gs_cpu_funcs_scalar;
    }
}

gs_cpu_type_funcs gs_cpu_funcs_for(gs_type type, gs_impl level) {
    gs_cpu_type_funcs f = { 0 };
    for (int l = (int) level; l >= (int) GS_IMPL_SCALAR; l--) {
        /* the AVX-512 BF16 kernels need AVX512_BF16 (vec_avx512_float.c) */
        if (l == GS_IMPL_AVX512 && type == GS_TYPE_BF16 && !cpu_info.avx512bf16) continue;
        const gs_cpu_type_funcs * t = &level_table((gs_impl) l)[type];
        if (!f.from_float) f.from_float = t->from_float;
        if (!f.vec_dot) f.vec_dot = t->vec_dot;
        if (!f.to_float) f.to_float = t->to_float;
        if (!f.vec_dot_tile) f.vec_dot_tile = t->vec_dot_tile;
        if (!f.gemm_tile) f.gemm_tile = t->gemm_tile;
    }
    return f;
}

static void resolve(gs_impl level) {
    for (int t = 0; t < GS_TYPE_COUNT; t++) resolved[t] = gs_cpu_funcs_for((gs_type) t, level);
    active_level = level;
}

const gs_cpu_type_funcs * gs_cpu_funcs(gs_type type) {
    return &resolved[type];
}

void gs_cpu_detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    cpu_info.avx2 = __builtin_cpu_supports("avx2");
    cpu_info.fma = __builtin_cpu_supports("fma");
    cpu_info.f16c = __builtin_cpu_supports("f16c");
    cpu_info.avx512f = __builtin_cpu_supports("avx512f");
    cpu_info.avx512bw = __builtin_cpu_supports("avx512bw");
    cpu_info.avx512vl = __builtin_cpu_supports("avx512vl");
    cpu_info.avx512vnni = __builtin_cpu_supports("avx512vnni");
    cpu_info.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    if (cpu_info.avx2 && cpu_info.fma && cpu_info.f16c) best_level = GS_IMPL_AVX2;
    if (best_level == GS_IMPL_AVX2 && cpu_info.avx512f && cpu_info.avx512bw &&
        cpu_info.avx512vl && cpu_info.avx512vnni) {
        best_level = GS_IMPL_AVX512;
    }
#endif
    cpu_info.level = best_level;
    resolve(best_level);
}

gs_status gs_cpu_get_info(gs_cpu_info * out) {
    GS_CHECK_ARG(out, "gs_cpu_get_info: NULL output");
    gs_init();
    *out = cpu_info;
    out->level = active_level;
    return GS_OK;
}

gs_status gs_cpu_set_level(gs_impl level) {
    gs_init();
    if (level == GS_IMPL_AUTO) level = best_level;
    if ((int) level < GS_IMPL_SCALAR || (int) level > GS_IMPL_AVX512) {
        return gs_set_error(GS_ERR_INVALID_ARG, "unknown SIMD level %d", (int) level);
    }
    if (level > best_level) {
        return gs_set_error(GS_ERR_UNSUPPORTED, "this CPU does not support SIMD level %d (best is %d)",
                            (int) level, (int) best_level);
    }
    resolve(level);
    return GS_OK;
}

gs_status gs_quantize_activations(gs_type type, const float * src, void * dst, int64_t n) {
    GS_CHECK_ARG(src && dst, "gs_quantize_activations: NULL buffer");
    gs_init();
    const gs_type_traits * tt = gs_get_type_traits(type);
    if (!tt) return gs_set_error(GS_ERR_TYPE, "unknown type id %d", (int) type);
    if (n % tt->blck_size) {
        return gs_set_error(GS_ERR_SHAPE, "%lld elements is not a multiple of the %s block size",
                            (long long) n, tt->name);
    }
    gs_from_float_fn f = gs_cpu_funcs(type)->from_float;
    if (!f) return gs_set_error(GS_ERR_TYPE, "type %s has no activation quantizer", tt->name);
    f(src, dst, n);
    return GS_OK;
}

gs_status gs_vec_dot(gs_type type, int64_t n, const void * x, const void * y,
                     gs_impl impl, float * out) {
    GS_CHECK_ARG(x && y && out, "gs_vec_dot: NULL argument");
    gs_init();
    const gs_type_traits * tt = gs_get_type_traits(type);
    if (!tt) return gs_set_error(GS_ERR_TYPE, "unknown type id %d", (int) type);
    if (n <= 0 || n % tt->blck_size || n % gs_get_type_traits(tt->vec_dot_type)->blck_size) {
        return gs_set_error(GS_ERR_SHAPE, "gs_vec_dot: n = %lld does not fit type %s",
                            (long long) n, tt->name);
    }
    if (impl == GS_IMPL_AUTO) impl = active_level;
    if ((int) impl < GS_IMPL_SCALAR || impl > best_level) {
        return gs_set_error(GS_ERR_UNSUPPORTED, "SIMD level %d is not available on this CPU", (int) impl);
    }
    gs_vec_dot_fn f = impl == active_level ? resolved[type].vec_dot : gs_cpu_funcs_for(type, impl).vec_dot;
    if (!f) return gs_set_error(GS_ERR_TYPE, "type %s has no dot product kernel", tt->name);
    f((int) n, out, x, y);
    return GS_OK;
}
