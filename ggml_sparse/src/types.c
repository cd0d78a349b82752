/*
 * types.c - the type traits table, half/bf16 conversion, and the public
 * per-type conversion entry points.
 */
#include "gs_internal.h"
#include "quants_ref.h"

#include <math.h>
#include <pthread.h>

/* ---- half / bfloat16 ---------------------------------------------------- */
float gs_half_table[1 << 16];

float gs_half_to_float(gs_half h) {
    const uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            float f = ldexpf((float) mant, -24);
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, with overflow to inf and NaN kept NaN. */
gs_half gs_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t absx = x & 0x7FFFFFFFu;
    if (absx > 0x7F800000u) return (gs_half) (sign | 0x7E00);          /* NaN */
    if (absx >= 0x477FF000u) return (gs_half) (sign | 0x7C00);         /* overflow/inf */
    if (absx < 0x38800000u) {                                          /* subnormal/zero */
        /* value / 2^-24, rounded to nearest even */
        float a;
        memcpy(&a, &absx, 4);
        float q = a * 16777216.0f;  /* 2^24 */
        uint32_t m = (uint32_t) nearbyintf(q);
        return (gs_half) (sign | m);
    }
    uint32_t mant = absx & 0x7FFFFF;
    uint32_t exp = (absx >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (gs_half) (sign | h);
}

float gs_bf16_to_float(gs_bf16 h) {
    uint32_t bits = (uint32_t) h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

gs_bf16 gs_float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (gs_bf16) ((x >> 16) | 64); /* quiet NaN */
    x += 0x7FFF + ((x >> 16) & 1);
    return (gs_bf16) (x >> 16);
}

/* ---- traits table ------------------------------------------------------ */
static const gs_type_traits type_traits[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { "f32",  1, 4, false, GS_TYPE_F32,
                       gs_dequantize_row_f32, gs_quantize_row_f32_ref },
    [GS_TYPE_F16]  = { "f16",  1, 2, false, GS_TYPE_F16,
                       gs_dequantize_row_f16, gs_quantize_row_f16_ref },
    [GS_TYPE_BF16] = { "bf16", 1, 2, false, GS_TYPE_BF16,
                       gs_dequantize_row_bf16, gs_quantize_row_bf16_ref },
    [GS_TYPE_Q4_0] = { "q4_0", QK4_0, sizeof(block_q4_0), true, GS_TYPE_Q8_0,
                       gs_dequantize_row_q4_0, gs_quantize_row_q4_0_ref },
    [GS_TYPE_Q4_1] = { "q4_1", QK4_1, sizeof(block_q4_1), true, GS_TYPE_Q8_1,
                       gs_dequantize_row_q4_1, gs_quantize_row_q4_1_ref },
    [GS_TYPE_Q5_0] = { "q5_0", QK5_0, sizeof(block_q5_0), true, GS_TYPE_Q8_0,
                       gs_dequantize_row_q5_0, gs_quantize_row_q5_0_ref },
    [GS_TYPE_Q5_1] = { "q5_1", QK5_1, sizeof(block_q5_1), true, GS_TYPE_Q8_1,
                       gs_dequantize_row_q5_1, gs_quantize_row_q5_1_ref },
    [GS_TYPE_Q8_0] = { "q8_0", QK8_0, sizeof(block_q8_0), true, GS_TYPE_Q8_0,
                       gs_dequantize_row_q8_0, gs_quantize_row_q8_0_ref },
    [GS_TYPE_Q8_1] = { "q8_1", QK8_1, sizeof(block_q8_1), true, GS_TYPE_Q8_1,
                       gs_dequantize_row_q8_1, gs_quantize_row_q8_1_ref },
    [GS_TYPE_Q4_K] = { "q4_K", QK_K, sizeof(block_q4_K), true, GS_TYPE_Q8_K,
                       gs_dequantize_row_q4_K, gs_quantize_row_q4_K_ref },
    [GS_TYPE_Q5_K] = { "q5_K", QK_K, sizeof(block_q5_K), true, GS_TYPE_Q8_K,
                       gs_dequantize_row_q5_K, gs_quantize_row_q5_K_ref },
    [GS_TYPE_Q6_K] = { "q6_K", QK_K, sizeof(block_q6_K), true, GS_TYPE_Q8_K,
                       gs_dequantize_row_q6_K, gs_quantize_row_q6_K_ref },
    [GS_TYPE_Q8_K] = { "q8_K", QK_K, sizeof(block_q8_K), true, GS_TYPE_Q8_K,
                       gs_dequantize_row_q8_K, gs_quantize_row_q8_K_ref },
    [GS_TYPE_I8]   = { "i8",   1, 1, false, GS_TYPE_COUNT, NULL, NULL },
    [GS_TYPE_I16]  = { "i16",  1, 2, false, GS_TYPE_COUNT, NULL, NULL },
    [GS_TYPE_I32]  = { "i32",  1, 4, false, GS_TYPE_COUNT, NULL, NULL },
};

const gs_type_traits * gs_get_type_traits(gs_type type) {
    if ((int) type < 0 || type >= GS_TYPE_COUNT) return NULL;
    const gs_type_traits * tt = &type_traits[type];
    return tt->name ? tt : NULL;
}

gs_status gs_type_get_info(gs_type type, gs_type_info * out) {
    GS_CHECK_ARG(out, "gs_type_get_info: NULL output");
    const gs_type_traits * tt = gs_get_type_traits(type);
    if (!tt) return gs_set_error(GS_ERR_TYPE, "unknown type id %d", (int) type);
    out->name = tt->name;
    out->blck_size = tt->blck_size;
    out->type_size = tt->type_size;
    out->is_quantized = tt->is_quantized;
    out->vec_dot_type = tt->vec_dot_type;
    return GS_OK;
}

static gs_status check_row(gs_type type, int64_t n, const gs_type_traits ** out) {
    const gs_type_traits * tt = gs_get_type_traits(type);
    if (!tt) return gs_set_error(GS_ERR_TYPE, "unknown type id %d", (int) type);
    if (n < 0 || n % tt->blck_size != 0) {
        return gs_set_error(GS_ERR_SHAPE, "%lld elements is not a multiple of the %s block size %lld",
                            (long long) n, tt->name, (long long) tt->blck_size);
    }
    *out = tt;
    return GS_OK;
}

gs_status gs_row_size(gs_type type, int64_t n, size_t * out) {
    GS_CHECK_ARG(out, "gs_row_size: NULL output");
    const gs_type_traits * tt = NULL;
    gs_status st = check_row(type, n, &tt);
    if (st) return st;
    *out = gs_type_row_size(type, n);
    return GS_OK;
}

gs_status gs_dequantize(gs_type type, const void * src, float * dst, int64_t n) {
    GS_CHECK_ARG(src && dst, "gs_dequantize: NULL buffer");
    gs_init();
    const gs_type_traits * tt = NULL;
    gs_status st = check_row(type, n, &tt);
    if (st) return st;
    if (!tt->to_float) return gs_set_error(GS_ERR_TYPE, "type %s has no float conversion", tt->name);
    tt->to_float(src, dst, n);
    return GS_OK;
}

gs_status gs_quantize(gs_type type, const float * src, void * dst, int64_t n,
                      const float * imatrix) {
    GS_CHECK_ARG(src && dst, "gs_quantize: NULL buffer");
    if (imatrix) return gs_set_error(GS_ERR_UNSUPPORTED, "gs_quantize: importance matrices are not supported");
    gs_init();
    const gs_type_traits * tt = NULL;
    gs_status st = check_row(type, n, &tt);
    if (st) return st;
    if (!tt->from_float_ref) return gs_set_error(GS_ERR_TYPE, "cannot quantize to type %s", tt->name);
    tt->from_float_ref(src, dst, n);
    return GS_OK;
}

/* ---- one-time initialisation -------------------------------------------- */
void gs_cpu_detect(void);  /* cpu/dispatch.c */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

gs_half gs_gelu_half_table[1 << 16];

/* gelu(x) as llama.cpp's build computes the entries of its F16 GELU table
 * (its compiler fused 1 + 0.044715 x^2 into one multiply-add; measured: all
 * 65536 entries of ggml_table_gelu_f16 agree). */
static float gelu_entry(float x) {
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * fmaf(0.044715f * x, x, 1.0f)));
}

static void init_impl(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) gs_half_table[i] = gs_half_to_float((gs_half) i);
    for (uint32_t i = 0; i < (1u << 16); i++) gs_gelu_half_table[i] = gs_float_to_half(gelu_entry(gs_half_table[i]));
    gs_cpu_detect();
}

void gs_init(void) {
    pthread_once(&init_once, init_impl);
}
