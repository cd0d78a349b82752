/*
 * ops_elementwise.c - F32 element-wise kernels: add/mul with broadcast,
 * scale, unary activations and gated products. Rows split across threads.
 */
#include "../gs_internal.h"

#include <math.h>

#include "vec_math.h"

#define ROW_PTR(t, i1, i2, i3) \
    ((float *) ((uint8_t *) (t)->data + (i1) * (t)->nb[1] + (i2) * (t)->nb[2] + (i3) * (t)->nb[3]))

/* Index decomposition of flat row r of t. */
static inline void row_index(const gs_tensor * t, int64_t r, int64_t * i1, int64_t * i2, int64_t * i3) {
    *i1 = r % t->ne[1];
    *i2 = (r / t->ne[1]) % t->ne[2];
    *i3 = r / (t->ne[1] * t->ne[2]);
}

void gs_cpu_op_binary(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const bool is_add = dst->op == GS_OP_ADD;
    const int64_t ne0 = a->ne[0], nb0 = b->ne[0];
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        const float * y = ROW_PTR(b, i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]);
        float * z = ROW_PTR(dst, i1, i2, i3);
        const size_t sa = a->nb[0] / sizeof(float), sb = b->nb[0] / sizeof(float);
        const size_t sd = dst->nb[0] / sizeof(float);
        if (is_add) {
            for (int64_t i = 0; i < ne0; i++) z[i * sd] = x[i * sa] + y[(i % nb0) * sb];
        } else {
            for (int64_t i = 0; i < ne0; i++) z[i * sd] = x[i * sa] * y[(i % nb0) * sb];
        }
    }
}

void gs_cpu_op_scale(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    float s;
    memcpy(&s, &dst->op_params[0], sizeof(float));
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        for (int64_t i = 0; i < a->ne[0]; i++) z[i] = x[i * sa] * s;
    }
}

/* f(x) for element i of a row whose first n16 elements llama.cpp computes
 * with its vector SiLU (gs_silu_compat) and the rest with libm's expf: the
 * same split keeps SwiGLU bit-identical to it. */
static inline __attribute__((always_inline)) float act(gs_unary_op op, float x, int64_t i, int64_t n16) {
    switch (op) {
        case GS_UNARY_RELU: return x > 0.0f ? x : 0.0f;
        case GS_UNARY_SILU: return i < n16 ? gs_silu_compat(x) : x / (1.0f + expf(-x));
        case GS_UNARY_GELU: {
            const float c = 0.7978845608028654f; /* sqrt(2/pi) */
            return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
        }
        case GS_UNARY_SQR_RELU: return x > 0.0f ? x * x : 0.0f;
    }
    return x;
}

static inline __attribute__((always_inline)) void unary_body(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_unary_op op = (gs_unary_op) dst->op_params[0];
    const int64_t n16 = a->ne[0] & ~(int64_t) 15;
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        for (int64_t i = 0; i < a->ne[0]; i++) z[i] = act(op, x[i * sa], i, n16);
    }
}

static inline __attribute__((always_inline)) void glu_body(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_unary_op op = (gs_unary_op) dst->op_params[0];
    const int64_t n16 = a->ne[0] & ~(int64_t) 15;
    const bool gate_b = dst->op_params[1] != 0;
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    const size_t sa = a->nb[0] / sizeof(float), sb = b->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        const float * y = ROW_PTR(b, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        if (gate_b) {
            for (int64_t i = 0; i < a->ne[0]; i++) z[i] = act(op, x[i * sa], i, n16) * act(op, y[i * sb], i, n16);
        } else {
            for (int64_t i = 0; i < a->ne[0]; i++) z[i] = act(op, x[i * sa], i, n16) * y[i * sb];
        }
    }
}

/* The activation kernels with and without FMA instructions (the exp formula
 * uses fmaf; both give the same bits, the FMA build is just fast). */
static void unary_generic(const gs_compute_params * p, gs_tensor * dst) { unary_body(p, dst); }
static void glu_generic(const gs_compute_params * p, gs_tensor * dst) { glu_body(p, dst); }
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("fma"))) static void unary_fma(const gs_compute_params * p, gs_tensor * dst) { unary_body(p, dst); }
__attribute__((target("fma"))) static void glu_fma(const gs_compute_params * p, gs_tensor * dst) { glu_body(p, dst); }
#endif

static bool have_fma(void) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    return info.fma;
}

void gs_cpu_op_unary(const gs_compute_params * p, gs_tensor * dst) {
#if defined(__x86_64__) || defined(__i386__)
    if (have_fma()) { unary_fma(p, dst); return; }
#endif
    unary_generic(p, dst);
}

void gs_cpu_op_glu(const gs_compute_params * p, gs_tensor * dst) {
#if defined(__x86_64__) || defined(__i386__)
    if (have_fma()) { glu_fma(p, dst); return; }
#endif
    glu_generic(p, dst);
}

void gs_cpu_op_rms_norm(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    float eps;
    memcpy(&eps, &dst->op_params[0], sizeof(float));
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        double ss = 0.0;
        for (int64_t i = 0; i < a->ne[0]; i++) ss += (double) (x[i * sa] * x[i * sa]);
        const float scale = 1.0f / sqrtf((float) (ss / (double) a->ne[0]) + eps);
        for (int64_t i = 0; i < a->ne[0]; i++) z[i] = x[i * sa] * scale;
    }
}

void gs_cpu_op_norm(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    float eps;
    memcpy(&eps, &dst->op_params[0], sizeof(float));
    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        double sum = 0.0, ss = 0.0;
        for (int64_t i = 0; i < a->ne[0]; i++) sum += x[i * sa];
        const double mean = sum / (double) a->ne[0];
        for (int64_t i = 0; i < a->ne[0]; i++) ss += (x[i * sa] - mean) * (x[i * sa] - mean);
        const float scale = 1.0f / sqrtf((float) (ss / (double) a->ne[0]) + eps);
        for (int64_t i = 0; i < a->ne[0]; i++) z[i] = (float) (x[i * sa] - mean) * scale;
    }
}
