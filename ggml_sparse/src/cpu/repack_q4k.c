/*
 * repack_q4k.c - products of repacked Q4_K weights in llama.cpp's repacked
 * order (repack.h states it): the scalar reference kernel, the kernel
 * choice and the mul_mat path. The SIMD kernels are in vec_avx2_k.c,
 * vec_avx512_k.c, vec_avx512_ktile.c and (decode) vec_avx512_k4rows.c.
 */
#include "repack.h"

#include <math.h>

#include "../quants_ref.h"

void gs_q4kx8_dot_scalar(int n, float * s, const void * vx, const void * vy, int pairs) {
    const block_q4_K * x = vx;
    const block_q8_K * y = vy;
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        int s1[4] = { 0 }, s2[4] = { 0 };
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            gs_get_scale_min_k4(j, x[b].scales, &sc, &m);
            int dot = 0;
            for (int l = 0; l < 32; l++) {
                dot += ((x[b].qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF) * y[b].qs[32 * j + l];
            }
            s1[j / 2] += sc * dot;
            s2[j / 2] += m * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        const float d = GS_H2F(x[b].d) * y[b].d, dmin = GS_H2F(x[b].dmin) * y[b].d;
        if (pairs) {
            for (int k = 0; k < 4; k++) {
                acc = fmaf((float) s1[k], d, acc);
                accm = fmaf((float) s2[k], dmin, accm);
            }
        } else {
            acc = fmaf((float) (s1[0] + s1[1] + s1[2] + s1[3]), d, acc);
            accm = fmaf((float) (s2[0] + s2[1] + s2[2] + s2[3]), dmin, accm);
        }
    }
    *s = acc - accm;
}

gs_q4kx8_dot_fn gs_q4kx8_kernel(void) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
#if defined(__x86_64__) || defined(__i386__)
    if (info.level >= GS_IMPL_AVX512) return gs_avx512_q4kx8_dot;
    if (info.level >= GS_IMPL_AVX2) return gs_avx2_q4kx8_dot;
#endif
    return gs_q4kx8_dot_scalar;
}

gs_q4kx8_tile_fn gs_q4kx8_tile_kernel(void) {
#if defined(__x86_64__) || defined(__i386__)
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.level >= GS_IMPL_AVX512) return gs_avx512_q4kx8_tile;
    if (info.level >= GS_IMPL_AVX2) return gs_avx2_q4kx8_tile;
#endif
    return NULL;
}

/* Scratch: the Q8_K activation rows (one row: a private copy per thread). */
size_t gs_cpu_mul_mat_q4kx8_work_size(const gs_tensor * dst, int n_threads) {
    const gs_tensor * b = dst->src[1];
    const size_t q_row = (gs_type_row_size(GS_TYPE_Q8_K, b->ne[0]) + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
    if (gs_nrows(b) == 1) return q_row * (size_t) n_threads;
    return q_row * (size_t) gs_nrows(b);
}

#define ROW_BLOCK 16
#define COL_BLOCK 16

void gs_cpu_op_mul_mat_q4kx8(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const int64_t K = a->ne[0], M = a->ne[1];
    const int64_t N = b->ne[1], n2 = b->ne[2], n3 = b->ne[3], nr_b = N * n2 * n3;
    const gs_from_float_fn quantize = gs_cpu_funcs(GS_TYPE_Q8_K)->from_float;
    const size_t q_row = (gs_type_row_size(GS_TYPE_Q8_K, K) + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
    uint8_t * act;

    /* phase 1: activations -> Q8_K */
    if (nr_b == 1) {
        act = gs_thread_scratch(p);
        quantize((const float *) b->data, act, K);
    } else {
        act = p->wdata;
        int64_t r0, r1;
        gs_split_rows(nr_b, p->ith, p->nth, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            const int64_t i1 = r % N, i2 = (r / N) % n2, i3 = r / (N * n2);
            quantize((const float *) ((const uint8_t *) b->data + i1 * b->nb[1] + i2 * b->nb[2] + i3 * b->nb[3]),
                     act + (size_t) r * q_row, K);
        }
        gs_barrier(p);
    }

    /* phase 2: weight rows split across threads; per activation row the
     * step llama.cpp's kernel for it takes (repack.h) */
    int64_t m0, m1;
    gs_split_rows(M, p->ith, p->nth, &m0, &m1);
    const gs_q4kx8_dot_fn dot = gs_q4kx8_kernel();
    const gs_q4kx8_tile_fn tile = gs_q4kx8_tile_kernel();   /* N = 1 too: its GEMV kernel takes 4 rows at a time */
    /* rowwise (gs_mul_mat_rowwise): no 4-row steps, every row takes the single-row step */
    const int64_t n_pairs = N >= 4 && !dst->op_params[0] ? N - N % 4 : 0;
    /* GEMV through the tile kernel: one call for all of the thread's rows
     * (it prepares the activation row once per call) */
    const int64_t row_block = tile && N == 1 && m1 > m0 ? m1 - m0 : ROW_BLOCK;
    for (int64_t i3 = 0; i3 < n3; i3++) {
        for (int64_t i2 = 0; i2 < n2; i2++) {
            const uint8_t * a_plane = (const uint8_t *) a->data + (i2 % a->ne[2]) * a->nb[2] + (i3 % a->ne[3]) * a->nb[3];
            const uint8_t * q_plane = act + (size_t) ((i3 * n2 + i2) * N) * q_row;
            uint8_t * d_plane = (uint8_t *) dst->data + i2 * dst->nb[2] + i3 * dst->nb[3];
            for (int64_t r = m0; r < m1; r += row_block) {
                const int64_t r_end = r + row_block < m1 ? r + row_block : m1;
                if (tile) {
                    /* token blocks, cut where the step kind changes (n_pairs) */
                    for (int64_t n0 = 0; n0 < N;) {
                        int64_t n1 = n0 + COL_BLOCK < N ? n0 + COL_BLOCK : N;
                        if (n0 < n_pairs && n1 > n_pairs) n1 = n_pairs;
                        tile((int) K, (float *) (d_plane + n0 * dst->nb[1]) + r, dst->nb[1] / sizeof(float),
                             a_plane + r * a->nb[1], a->nb[1], q_plane + (size_t) n0 * q_row, q_row,
                             (int) (r_end - r), (int) (n1 - n0), n0 < n_pairs);
                        n0 = n1;
                    }
                    continue;
                }
                for (int64_t n = 0; n < N; n++) {
                    float * d_row = (float *) (d_plane + n * dst->nb[1]);
                    for (int64_t m = r; m < r_end; m++) {
                        dot((int) K, &d_row[m], a_plane + m * a->nb[1], q_plane + (size_t) n * q_row, n < n_pairs);
                    }
                }
            }
        }
    }
}
