/*
 * ops_elementwise.c - F32 element-wise kernels: add/mul with broadcast,
 * scale, unary activations and gated products (GELU through ggml's F16
 * table, gs_gelu_half_table, so results are llama.cpp's bit for bit). Rows split across threads;
 * with fewer rows than threads (a decode step's single row), the elements of
 * each row are split instead (split_work).
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

/* This thread's share of an op over nr rows of ne0 elements: rows
 * [*r0, *r1), and elements [*e0, *e1) of each. With at least as many rows as
 * threads whole rows are split; otherwise every row's elements are, in runs
 * that are a multiple of 16 floats (a cache line) so threads never write the
 * same line. */
static inline void split_work(int64_t nr, int64_t ne0, int ith, int nth, int64_t * r0, int64_t * r1,
                              int64_t * e0, int64_t * e1) {
    if (nr >= nth) {
        gs_split_rows(nr, ith, nth, r0, r1);
        *e0 = 0;
        *e1 = ne0;
        return;
    }
    *r0 = 0;
    *r1 = nr;
    const int64_t per = ((ne0 + nth - 1) / nth + 15) / 16 * 16;
    *e0 = per * ith < ne0 ? per * ith : ne0;
    *e1 = per * (ith + 1) < ne0 ? per * (ith + 1) : ne0;
}

void gs_cpu_op_binary(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const bool is_add = dst->op == GS_OP_ADD;
    const int64_t ne0 = a->ne[0], nb0 = b->ne[0];
    const size_t sa = a->nb[0] / sizeof(float), sb = b->nb[0] / sizeof(float);
    const size_t sd = dst->nb[0] / sizeof(float);
    const bool dense = sa == 1 && sb == 1 && sd == 1 && nb0 == ne0;
    int64_t r0, r1, e0, e1;
    split_work(gs_nrows(a), ne0, p->ith, p->nth, &r0, &r1, &e0, &e1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        const float * y = ROW_PTR(b, i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]);
        float * z = ROW_PTR(dst, i1, i2, i3);
        if (dense && is_add) {
            for (int64_t i = e0; i < e1; i++) z[i] = x[i] + y[i];
        } else if (dense) {
            for (int64_t i = e0; i < e1; i++) z[i] = x[i] * y[i];
        } else if (is_add) {
            for (int64_t i = e0; i < e1; i++) z[i * sd] = x[i * sa] + y[(i % nb0) * sb];
        } else {
            for (int64_t i = e0; i < e1; i++) z[i * sd] = x[i * sa] * y[(i % nb0) * sb];
        }
    }
}

void gs_cpu_op_scale(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    float s;
    memcpy(&s, &dst->op_params[0], sizeof(float));
    int64_t r0, r1, e0, e1;
    split_work(gs_nrows(a), a->ne[0], p->ith, p->nth, &r0, &r1, &e0, &e1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        for (int64_t i = e0; i < e1; i++) z[i] = x[i * sa] * s;
    }
}

/* GELU as ggml's CPU backend computes it for F32 (ggml_sparse.h, gs_unary_op). */
static inline __attribute__((always_inline)) float gelu_compat(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return GS_H2F(gs_gelu_half_table[gs_float_to_half(x)]);
}

/* f(x) for element i of a row whose first n16 elements llama.cpp computes
 * with its vector SiLU (gs_silu_compat) and the rest with libm's expf: the
 * same split keeps SwiGLU bit-identical to it. */
static inline __attribute__((always_inline)) float act(gs_unary_op op, float x, int64_t i, int64_t n16) {
    switch (op) {
        case GS_UNARY_RELU: return x > 0.0f ? x : 0.0f;
        case GS_UNARY_SILU: return i < n16 ? gs_silu_compat(x) : x / (1.0f + expf(-x));
        case GS_UNARY_GELU: return gelu_compat(x);
        case GS_UNARY_SQR_RELU: return x > 0.0f ? x * x : 0.0f;
        case GS_UNARY_TANH: return tanhf(x);
        case GS_UNARY_SIGMOID: return 1.0f / (1.0f + expf(-x));
    }
    return x;
}

static inline __attribute__((always_inline)) void unary_body(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_unary_op op = (gs_unary_op) dst->op_params[0];
    const int64_t n16 = a->ne[0] & ~(int64_t) 15;
    int64_t r0, r1, e0, e1;
    split_work(gs_nrows(a), a->ne[0], p->ith, p->nth, &r0, &r1, &e0, &e1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        for (int64_t i = e0; i < e1; i++) z[i] = act(op, x[i * sa], i, n16);
    }
}

static inline __attribute__((always_inline)) void glu_body(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_unary_op op = (gs_unary_op) dst->op_params[0];
    const int64_t n16 = a->ne[0] & ~(int64_t) 15;
    const bool gate_b = dst->op_params[1] != 0;
    int64_t r0, r1, e0, e1;
    split_work(gs_nrows(a), a->ne[0], p->ith, p->nth, &r0, &r1, &e0, &e1);
    const size_t sa = a->nb[0] / sizeof(float), sb = b->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        const float * y = ROW_PTR(b, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        if (gate_b) {
            for (int64_t i = e0; i < e1; i++) z[i] = act(op, x[i * sa], i, n16) * act(op, y[i * sb], i, n16);
        } else if (op == GS_UNARY_GELU) {   /* ggml's GeGLU: +0 below -10, whatever y is */
            for (int64_t i = e0; i < e1; i++) z[i] = x[i * sa] <= -10.0f ? 0.0f : gelu_compat(x[i * sa]) * y[i * sb];
        } else {
            for (int64_t i = e0; i < e1; i++) z[i] = act(op, x[i * sa], i, n16) * y[i * sb];
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
    /* with fewer rows than threads, every thread sums the whole row (the
     * same sum) and scales its share of the elements */
    int64_t r0, r1, e0, e1;
    split_work(gs_nrows(a), a->ne[0], p->ith, p->nth, &r0, &r1, &e0, &e1);
    const size_t sa = a->nb[0] / sizeof(float);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_index(a, r, &i1, &i2, &i3);
        const float * x = ROW_PTR(a, i1, i2, i3);
        float * z = ROW_PTR(dst, i1, i2, i3);
        double ss = 0.0;
        for (int64_t i = 0; i < a->ne[0]; i++) ss += (double) (x[i * sa] * x[i * sa]);
        const float scale = 1.0f / sqrtf((float) (ss / (double) a->ne[0]) + eps);
        for (int64_t i = e0; i < e1; i++) z[i] = x[i * sa] * scale;
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
